// Correctness check of every SmoothGEMM kernel against an fp32 reference GEMM, on random shapes
// (M = 1, M not a multiple of any tile, K from one block to 14336), fresh random inputs per case.
// Outputs are poisoned (NaN) before each run; every element of rows < M must satisfy
//   |y - ref| <= 1e-2 * (|ref| + 1)                      (bf16 output rounding is 2^-9 relative)
// and ‖y - ref‖ / ‖ref‖ <= 5e-3; rows >= M (allocated past the end) must still hold the poison.
// Each case runs twice on one workspace that is zeroed once for the whole program: stream-K
// kernels must leave it zeroed, and a second run must pass as the first did.
//
// Usage: gemm_check [--quick | --small]   (exit status 0 when every case passes)
//   --quick: the fixed cases only; --small: the fixed cases with N·K <= 2^21 (for
//   compute-sanitizer, which runs kernels far slower).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/gemm_util.cuh"
#include "xyserve/backend/cuda/gemm.h"
#include "xyserve/common/error.h"

namespace {

using xy::bench::DeviceBuffer;
using xy::cuda::GemmKernel;

struct Case {
  int m, n, k;
};

constexpr int kPadRows = 3;  // rows of y past M that must stay untouched

std::vector<Case> make_cases(bool quick, bool small) {
  std::vector<Case> cases = {
      {1, 256, 64},       {1, 6144, 4096},    {2, 128, 128},    {3, 4096, 14336},
      {16, 512, 4096},    {17, 1024, 576},    {33, 256, 192},   {64, 768, 1344},
      {65, 4096, 4096},   {100, 6144, 4096},  {127, 256, 64},   {128, 1024, 1024},
      {129, 512, 12288},  {257, 2048, 512},   {777, 1024, 4096}, {1000, 768, 320},
      {5, 192, 128},      {45, 320, 256},   {7, 48, 1536},
      {2000, 4096, 512},  // more tiles than SMs: the persistent wgmma grid loops
  };
  if (small) std::erase_if(cases, [](const Case& c) { return int64_t{c.n} * c.k > (1 << 21); });
  if (quick || small) return cases;
  // Random shapes, fixed seed: M anywhere in 1..1500, N a multiple of 128, K of 64.
  std::mt19937 rng(20261125);
  for (int i = 0; i < 24; ++i) {
    const int m = 1 + static_cast<int>(rng() % (i < 12 ? 200 : 1500));
    const int n = 128 * (1 + static_cast<int>(rng() % 48));
    // A third each a multiple of 64, 128 and 512 (what the 128-, 64- and 16-row stream tiles need).
    const int k = (i % 3 == 0 ? 64 : i % 3 == 1 ? 128 : 512) * (1 + static_cast<int>(rng() % 24));
    cases.push_back({m, n, k});
  }
  return cases;
}

struct Result {
  bool ok = true;
  double max_scaled_err = 0;  // max |y - ref| / (|ref| + 1)
  double rel_fro = 0;         // ‖y - ref‖ / ‖ref‖
  std::string first_failure;
};

Result compare(const std::vector<uint16_t>& y, const std::vector<float>& ref, int m, int n) {
  Result r;
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < int64_t{m} * n; ++i) {
    const float v = xy::bench::bf16_bits_to_float(y[i]);
    const double e = std::fabs(double{v} - ref[i]);
    const double scaled = e / (std::fabs(ref[i]) + 1.0);
    if (!(scaled <= 1e-2)) {  // NaN fails too
      if (r.ok) {
        r.first_failure = xy::cat("y[", i / n, "][", i % n, "] = ", v, ", reference ", ref[i]);
      }
      r.ok = false;
    }
    if (std::isfinite(scaled)) r.max_scaled_err = std::max(r.max_scaled_err, scaled);
    err2 += e * e;
    ref2 += double{ref[i]} * ref[i];
  }
  r.rel_fro = std::sqrt(err2 / std::max(ref2, 1e-30));
  if (!(r.rel_fro <= 5e-3)) {
    if (r.ok) r.first_failure = xy::cat("relative Frobenius error ", r.rel_fro);
    r.ok = false;
  }
  for (int64_t i = int64_t{m} * n; i < int64_t{m + kPadRows} * n; ++i) {
    if (y[i] != xy::bench::kPoisonBits) {
      if (r.ok) r.first_failure = xy::cat("row ", i / n, " >= M written");
      r.ok = false;
      break;
    }
  }
  return r;
}

// Shapes a kernel must refuse, with InvalidArgument, before touching the device.
bool check_rejects_bad_shapes() {
  bool ok = true;
  for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
    for (Case c : {Case{4, 256, 100}, Case{0, 256, 64}, Case{4, 200, 64}}) {
      xy::cuda::GemmArgs args;
      args.m = c.m, args.n = c.n, args.k = c.k;
      try {
        xy::cuda::gemm_launch(kernel, args, nullptr);
        std::printf("FAIL %s accepted m=%d n=%d k=%d\n", xy::cuda::gemm_kernel_name(kernel), c.m,
                    c.n, c.k);
        ok = false;
      } catch (const xy::InvalidArgument&) {
      }
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
  const std::vector<Case> cases = make_cases(quick, small);
  bool all_ok = check_rejects_bad_shapes();
  int num_checked = 0, num_failed = 0;
  uint64_t seed = 1;
  for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
    const char* name = xy::cuda::gemm_kernel_name(kernel);
    size_t ws_bytes = 0;
    for (const Case& c : cases) ws_bytes = std::max(ws_bytes, xy::cuda::gemm_workspace_bytes(kernel, c.m, c.n, c.k));
    DeviceBuffer workspace(std::max<size_t>(ws_bytes, 256));
    XY_CUDA_CHECK(cudaMemset(workspace.as<void>(), 0, workspace.bytes()));
    double worst_scaled = 0, worst_fro = 0;
    for (const Case& c : cases) {
      if (*xy::cuda::gemm_unsupported_reason(kernel, c.m, c.n, c.k) != '\0') continue;
      // x holds exactly M rows: a kernel that reads past M reads outside the allocation.
      DeviceBuffer x(size_t{2} * c.m * c.k), w(size_t{2} * c.n * c.k);
      DeviceBuffer y(size_t{2} * (c.m + kPadRows) * c.n), ref(size_t{4} * c.m * c.n);
      xy::bench::fill_uniform(x.as<__nv_bfloat16>(), size_t{1} * c.m * c.k, seed++);
      xy::bench::fill_uniform(w.as<__nv_bfloat16>(), size_t{1} * c.n * c.k, seed++);
      xy::bench::reference_gemm(x.as<__nv_bfloat16>(), w.as<__nv_bfloat16>(), ref.as<float>(), c.m, c.n, c.k);
      std::vector<float> ref_host(size_t{1} * c.m * c.n);
      XY_CUDA_CHECK(cudaMemcpy(ref_host.data(), ref.as<void>(), ref.bytes(), cudaMemcpyDeviceToHost));
      std::vector<uint16_t> y_host(size_t{1} * (c.m + kPadRows) * c.n);
      for (int rep = 0; rep < 2; ++rep) {
        xy::bench::poison(y.as<void>(), y_host.size());
        xy::cuda::GemmArgs args{x.as<__nv_bfloat16>(), w.as<__nv_bfloat16>(), y.as<__nv_bfloat16>(),
                                c.m, c.n, c.k, workspace.as<void>(), workspace.bytes()};
        xy::cuda::gemm_launch(kernel, args, nullptr);
        XY_CUDA_CHECK(cudaDeviceSynchronize());
        XY_CUDA_CHECK(cudaMemcpy(y_host.data(), y.as<void>(), y.bytes(), cudaMemcpyDeviceToHost));
        const Result r = compare(y_host, ref_host, c.m, c.n);
        ++num_checked;
        worst_scaled = std::max(worst_scaled, r.max_scaled_err);
        worst_fro = std::max(worst_fro, r.rel_fro);
        if (!r.ok) {
          ++num_failed;
          all_ok = false;
          std::printf("FAIL %-14s m=%-5d n=%-6d k=%-6d run %d: %s\n", name, c.m, c.n, c.k, rep,
                      r.first_failure.c_str());
        }
      }
    }
    std::printf("%-14s worst |err|/(|ref|+1) = %.2e, worst rel. Frobenius = %.2e\n", name,
                worst_scaled, worst_fro);
  }
  std::printf("gemm_check: %d runs checked, %d failed: %s\n", num_checked, num_failed,
              all_ok ? "PASS" : "FAIL");
  return all_ok ? 0 : 1;
}
