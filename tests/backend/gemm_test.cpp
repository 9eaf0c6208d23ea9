// linear(): values against a double-precision reference, and rows bitwise independent of M.
#include "xyserve/backend/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "xyserve/backend/cpu/thread_pool.h"

namespace xy::backend::cpu {
namespace {

using LinearFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, const float*,
                          float*, ThreadPool*);

// The kernel this CPU runs, and the portable one that CPUs without AVX2 run.
struct Kernel {
  const char* name;
  LinearFn fn;
};
const Kernel kKernels[] = {{"dispatched", &linear}, {"generic", &linear_generic}};

std::vector<float> random_vec(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(Gemm, MatchesDoubleReferenceWithBias) {
  std::mt19937 rng(7);
  ThreadPool pool(2);
  for (int trial = 0; trial < 80; ++trial) {
    const Kernel& kernel = kKernels[trial % 2];
    const int64_t m = 1 + rng() % 70, n = 1 + rng() % 90, k = 1 + rng() % 300;
    const auto x = random_vec(size_t(m * k), rng), w = random_vec(size_t(n * k), rng);
    const auto bias = random_vec(size_t(n), rng);
    std::vector<float> y(size_t(m * n));
    const bool with_bias = trial % 2 == 0;
    kernel.fn(x.data(), m, k, w.data(), n, with_bias ? bias.data() : nullptr, y.data(),
              trial % 3 ? &pool : nullptr);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < n; ++c) {
        double ref = with_bias ? bias[size_t(c)] : 0.0, mag = std::fabs(ref);
        for (int64_t j = 0; j < k; ++j) {
          ref += double(x[size_t(r * k + j)]) * w[size_t(c * k + j)];
          mag += std::fabs(double(x[size_t(r * k + j)]) * w[size_t(c * k + j)]);
        }
        // fp32 accumulation: error bounded by ~k * eps * sum |terms|; 8 lanes make it ~k/8.
        ASSERT_NEAR(y[size_t(r * n + c)], ref, 1e-6 * mag * double(k) + 1e-30)
            << kernel.name << " m=" << m << " n=" << n << " k=" << k << " r=" << r << " c=" << c;
      }
    }
  }
}

// Every row of an M-row GEMM must equal, bit for bit, the same row computed alone (M = 1), for
// every M and with or without threads: the batch invariance that chunked prefill = unchunked
// and batched = alone rest on.
TEST(Gemm, GemmRowsAreBatchInvariant) {
  std::mt19937 rng(11);
  ThreadPool pool(2);
  struct Shape {
    int64_t n, k;
  };
  const Shape shapes[] = {{67, 129}, {96, 64}, {1000, 64}, {130, 517}, {5, 7}};
  for (const Kernel& kernel : kKernels) {
    for (const Shape& s : shapes) {
      const auto w = random_vec(size_t(s.n * s.k), rng);
      const auto bias = random_vec(size_t(s.n), rng);
      const int64_t max_m = 300;
      const auto x = random_vec(size_t(max_m * s.k), rng);
      // Reference: each row alone, serial.
      std::vector<float> alone(size_t(max_m * s.n));
      for (int64_t r = 0; r < max_m; ++r) {
        kernel.fn(x.data() + r * s.k, 1, s.k, w.data(), s.n, bias.data(), alone.data() + r * s.n,
                  nullptr);
      }
      std::vector<float> y(size_t(max_m * s.n));
      // Every M for the small shapes, a spread of M for the large ones and the slow generic
      // kernel (time).
      const int64_t step = s.n * s.k > 50000 || kernel.fn == &linear_generic ? 13 : 1;
      for (int64_t m = 1; m <= max_m; m += step) {
        // Offset the batch so rows land at different places in the register tiles.
        const int64_t first = (m * 7) % (max_m - m + 1);
        kernel.fn(x.data() + first * s.k, m, s.k, w.data(), s.n, bias.data(), y.data(),
                  m % 2 ? &pool : nullptr);
        ASSERT_EQ(
            0, std::memcmp(y.data(), alone.data() + first * s.n, size_t(m * s.n) * sizeof(float)))
            << kernel.name << " (" << linear_kernel_name() << ") n=" << s.n << " k=" << s.k
            << " m=" << m << " first=" << first;
      }
    }
  }
}

}  // namespace
}  // namespace xy::backend::cpu
