#include "xyserve/backend/cpu/gemm.h"

#include <algorithm>
#include <array>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XY_GEMM_X86 1
#endif

#include "xyserve/backend/cpu/thread_pool.h"
#include "xyserve/common/check.h"

namespace xy::backend::cpu {
namespace {

// Register tile: kMr rows of x against kNr rows of w, one 8-lane accumulator per output
// (12 accumulators + 3 w vectors + 1 x vector = the 16 ymm registers of AVX2).
constexpr int kMr = 4;
constexpr int kNr = 3;
constexpr int kLanes = 8;
// Thread task: a panel of rows against a block of columns, sized so the w block stays in L2.
constexpr int64_t kRowPanel = 64;
constexpr int64_t kL2Bytes = 256 * 1024;

using TileFn = void (*)(const float* x, int64_t k, const float* w, const float* bias, float* y,
                        int64_t ldy);

// The portable kernel: the same lane structure as the AVX2 one, with separate multiply and add
// (contraction is turned off so the compiler cannot fuse some of them and not others).
template <int MR, int NR>
__attribute__((optimize("fp-contract=off"))) void tile_generic(const float* x, int64_t k,
                                                               const float* w, const float* bias,
                                                               float* y, int64_t ldy) {
  float acc[MR][NR][kLanes] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kLanes) {
    const int64_t len = std::min<int64_t>(kLanes, k - k0);
    for (int r = 0; r < MR; ++r) {
      for (int c = 0; c < NR; ++c) {
        for (int64_t j = 0; j < len; ++j) {
          acc[r][c][j] = acc[r][c][j] + x[r * k + k0 + j] * w[c * k + k0 + j];
        }
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      const float* a = acc[r][c];
      const float s4[4] = {a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]};
      const float s2[2] = {s4[0] + s4[2], s4[1] + s4[3]};
      float s = s2[0] + s2[1];
      if (bias) s = s + bias[c];
      y[r * ldy + c] = s;
    }
  }
}

#ifdef XY_GEMM_X86
__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <int MR, int NR>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t k, const float* w,
                                                   const float* bias, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t k_main = k / kLanes * kLanes;
  for (int64_t k0 = 0; k0 < k_main; k0 += kLanes) {
    __m256 wv[NR];
    for (int c = 0; c < NR; ++c) wv[c] = _mm256_loadu_ps(w + c * k + k0);
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * k + k0);
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (k_main < k) {  // masked tail: absent lanes load 0, and fma(0, 0, a) == a
    alignas(32) int32_t mask_bits[kLanes];
    for (int j = 0; j < kLanes; ++j) mask_bits[j] = j < k - k_main ? -1 : 0;
    const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(mask_bits));
    __m256 wv[NR];
    for (int c = 0; c < NR; ++c) wv[c] = _mm256_maskload_ps(w + c * k + k_main, mask);
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_maskload_ps(x + r * k + k_main, mask);
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      float s = hsum_avx2(acc[r][c]);
      if (bias) s = s + bias[c];
      y[r * ldy + c] = s;
    }
  }
}
#endif

template <int MR, int NR>
struct GenericTile {
  static constexpr TileFn fn = &tile_generic<MR, NR>;
};
#ifdef XY_GEMM_X86
template <int MR, int NR>
struct Avx2Tile {
  static constexpr TileFn fn = &tile_avx2<MR, NR>;
};
#endif

// table[mr - 1][nr - 1]: the kernel for a tile of mr rows and nr columns (tails included).
template <template <int, int> class K>
constexpr std::array<std::array<TileFn, kNr>, kMr> make_table() {
  return {{{K<1, 1>::fn, K<1, 2>::fn, K<1, 3>::fn},
           {K<2, 1>::fn, K<2, 2>::fn, K<2, 3>::fn},
           {K<3, 1>::fn, K<3, 2>::fn, K<3, 3>::fn},
           {K<4, 1>::fn, K<4, 2>::fn, K<4, 3>::fn}}};
}
static_assert(kMr == 4 && kNr == 3, "make_table lists every (mr, nr) tile");

struct Kernels {
  std::array<std::array<TileFn, kNr>, kMr> table;
  const char* name;
};

Kernels pick_kernels() {
#ifdef XY_GEMM_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return {make_table<Avx2Tile>(), "avx2+fma"};
  }
#endif
  return {make_table<GenericTile>(), "generic"};
}

const Kernels& kernels() {
  static const Kernels k = pick_kernels();
  return k;
}

const Kernels& generic_kernels() {
  static const Kernels k = {make_table<GenericTile>(), "generic"};
  return k;
}

void run_linear(const Kernels& kernels, const float* x, int64_t m, int64_t k, const float* w,
                int64_t n, const float* bias, float* y, ThreadPool* pool) {
  XY_CHECK(m >= 0 && n > 0 && k > 0, "m=", m, " n=", n, " k=", k);
  if (m == 0) return;
  const auto& table = kernels.table;
  const int num_threads = pool ? pool->num_threads() : 1;
  // Columns per task: a multiple of kNr, small enough that the w block stays in L2, and enough
  // blocks to balance the threads. Only grouping depends on these sizes, never a value.
  int64_t cols = std::max<int64_t>(kNr, kL2Bytes / (k * int64_t(sizeof(float))));
  cols = std::min<int64_t>(cols, (n + 4 * num_threads - 1) / (4 * num_threads));
  cols = std::max<int64_t>(kNr, (cols + kNr - 1) / kNr * kNr);
  const int64_t num_col_blocks = (n + cols - 1) / cols;
  const int64_t num_row_panels = (m + kRowPanel - 1) / kRowPanel;
  auto run_task = [&](int64_t task) {
    const int64_t panel = task / num_col_blocks;
    const int64_t block = task % num_col_blocks;
    const int64_t r_end = std::min(m, (panel + 1) * kRowPanel);
    const int64_t c_end = std::min(n, (block + 1) * cols);
    for (int64_t r = panel * kRowPanel; r < r_end; r += kMr) {
      const int mr = int(std::min<int64_t>(kMr, r_end - r));
      for (int64_t c = block * cols; c < c_end; c += kNr) {
        const int nr = int(std::min<int64_t>(kNr, c_end - c));
        table[mr - 1][nr - 1](x + r * k, k, w + c * k, bias ? bias + c : nullptr, y + r * n + c, n);
      }
    }
  };
  const int64_t num_tasks = num_row_panels * num_col_blocks;
  if (pool) {
    pool->parallel_for(num_tasks, run_task);
  } else {
    for (int64_t t = 0; t < num_tasks; ++t) run_task(t);
  }
}

}  // namespace

const char* linear_kernel_name() { return kernels().name; }

void linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
            float* y, ThreadPool* pool) {
  run_linear(kernels(), x, m, k, w, n, bias, y, pool);
}

void linear_generic(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                    const float* bias, float* y, ThreadPool* pool) {
  run_linear(generic_kernels(), x, m, k, w, n, bias, y, pool);
}

}  // namespace xy::backend::cpu
