// Correctness check of every SmoothGEMM kernel against an fp32 reference GEMM, on random shapes
// (M = 1, M not a multiple of any tile, K from one block to 14336, N and K that only the gemv
// kernels run), fresh random inputs per case. Outputs are poisoned (NaN) before each run; every
// element of rows < M must satisfy
//   |y - ref| <= 1e-2 * (|ref| + 1)                      (bf16 output rounding is 2^-9 relative)
// and ‖y - ref‖ / ‖ref‖ <= 5e-3; rows >= M (allocated past the end) must still hold the poison.
// Each case runs twice on one workspace that is zeroed once for the whole program: stream-K
// kernels must leave it zeroed, and a second run must pass as the first did. The second run is a
// programmatic dependent launch (GemmArgs::pdl).
//
// PDL ordering: for every kernel, a slow producer kernel (it lets dependents launch at once,
// then spins ~20 µs, then writes x over a NaN-poisoned x) is followed by the GEMM launched with
// pdl, and that GEMM by a second PDL GEMM that reads the first one's y as its x (same workspace).
// A GEMM that read x, or wrote y, before its griddepcontrol.wait would see NaN or be
// overwritten; both outputs are checked as above. The sequence runs on a stream and again as a
// replayed CUDA graph (stream capture turns the launches into programmatic edges).
//
// Usage: gemm_check [--quick | --small]   (exit status 0 when every case passes)
//   --quick: the fixed cases only; --small: the fixed cases with N·K <= 2^21 (for
//   compute-sanitizer, which runs kernels far slower).
#include <cuda_bf16.h>

#include <algorithm>
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
      // The stream-K wgmma kernels (wgmma_sk_*): M around their 64- and 128-row tiles, a third
      // m-tile of one row, K up to 14336; M <= 1024 takes their m-aligned stream-K schedule
      // (W blocks shared by the m-tiles in step), more rows the data-parallel waves: 1408 x 6144
      // is 264 (= 2 x 132) tiles at 128 x 256 and 528 at 64 x 256 and 128 x 128, all whole (no
      // stream-K tail on 132 SMs); 1500 x 6144 leaves a stream-K tail of 132 + 24 tiles (128 x
      // 256) and 132 + 48 (the others) of 3 K blocks each. Small K keeps them in --small.
      {63, 2048, 4096},   {64, 4096, 4096},   {65, 1024, 14336}, {129, 6144, 4096},
      {257, 4096, 4096},  {511, 2048, 2048},  {777, 6144, 4096}, {1408, 6144, 128},
      {1500, 6144, 192},  {65, 512, 1024},    {257, 256, 2048},
      // Only the gemv kernels run these (any N, K a multiple of 32): one row, fewer rows than
      // SMs, rows shares that are not multiples of 8, K of one chunk and of an odd count.
      {1, 1, 32},         {3, 37, 96},        {9, 1000, 160},   {24, 131, 4096},
      {33, 4100, 2080},   {8, 6144 + 8, 4096},
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
  // For the gemv kernels: M within their buckets, any N, K a multiple of 32.
  for (int i = 0; i < 8; ++i) {
    const int m = 1 + static_cast<int>(rng() % 40);
    const int n = 1 + static_cast<int>(rng() % 3000);
    const int k = 32 * (1 + static_cast<int>(rng() % 160));
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

bool is_gemv(GemmKernel kernel) { return std::strncmp(xy::cuda::gemm_kernel_name(kernel), "gemv", 4) == 0; }

// Shapes a kernel must refuse, with InvalidArgument, before touching the device: M = 0, K = 100
// (not a multiple of 32, the smallest block of K), and for the tiled kernels N = 200 (every
// tile has 32 rows or more; the gemv kernels take any N).
bool check_rejects_bad_shapes() {
  bool ok = true;
  for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
    std::vector<Case> bad = {{4, 256, 100}, {0, 256, 64}};
    if (!is_gemv(kernel)) bad.push_back({4, 200, 64});
    for (Case c : bad) {
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

// Lets dependents launch at once, spins `delay_ns`, then dst = src (count bf16): a producer that
// finishes long after a PDL-launched consumer has started.
__global__ void slow_producer_kernel(const __nv_bfloat16* src, __nv_bfloat16* dst, size_t count,
                                     uint64_t delay_ns) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(start));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
  } while (now - start < delay_ns);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count; i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

// producer -> GEMM 1 (pdl) -> GEMM 2 (pdl, x = GEMM 1's y), eagerly on a stream and as a graph.
// Returns the number of failed runs.
int check_pdl_ordering(GemmKernel kernel, cudaStream_t stream, uint64_t& seed) {
  const char* name = xy::cuda::gemm_kernel_name(kernel);
  // (m, n1, k1) for GEMM 1 and n2 for GEMM 2 (k2 = n1): M = 1, M inside a token tile, M over
  // two tiles of the gemv and stream kernels, M over four 64-row tiles (stream-K wgmma tiles
  // shared by CTAs, so the workspace is used by both GEMMs).
  struct Chain {
    int m, n1, k1, n2;
  };
  int failed = 0;
  for (const Chain ch : {Chain{1, 512, 4096, 256}, Chain{13, 1024, 1536, 512}, Chain{45, 512, 2048, 768},
                         Chain{200, 1024, 2048, 512}}) {
    if (*xy::cuda::gemm_unsupported_reason(kernel, ch.m, ch.n1, ch.k1) != '\0' ||
        *xy::cuda::gemm_unsupported_reason(kernel, ch.m, ch.n2, ch.n1) != '\0') {
      continue;
    }
    const size_t ws_bytes = std::max({size_t{256}, xy::cuda::gemm_workspace_bytes(kernel, ch.m, ch.n1, ch.k1),
                                      xy::cuda::gemm_workspace_bytes(kernel, ch.m, ch.n2, ch.n1)});
    DeviceBuffer workspace(ws_bytes);
    XY_CUDA_CHECK(cudaMemset(workspace.as<void>(), 0, ws_bytes));
    const size_t x_count = size_t{1} * ch.m * ch.k1;
    DeviceBuffer x_src(2 * x_count), x(2 * x_count), w1(size_t{2} * ch.n1 * ch.k1), w2(size_t{2} * ch.n2 * ch.n1);
    DeviceBuffer y1(size_t{2} * (ch.m + kPadRows) * ch.n1), y2(size_t{2} * (ch.m + kPadRows) * ch.n2);
    DeviceBuffer ref1(size_t{4} * ch.m * ch.n1), ref2(size_t{4} * ch.m * ch.n2);
    xy::bench::fill_uniform(x_src.as<__nv_bfloat16>(), x_count, seed++);
    xy::bench::fill_uniform(w1.as<__nv_bfloat16>(), size_t{1} * ch.n1 * ch.k1, seed++);
    xy::bench::fill_uniform(w2.as<__nv_bfloat16>(), size_t{1} * ch.n2 * ch.n1, seed++, 0.1f);
    xy::bench::reference_gemm(x_src.as<__nv_bfloat16>(), w1.as<__nv_bfloat16>(), ref1.as<float>(), ch.m, ch.n1, ch.k1);
    XY_CUDA_CHECK(cudaDeviceSynchronize());

    // Poison x, y1 and y2, then the chain; all on `stream`.
    auto enqueue = [&] {
      XY_CUDA_CHECK(cudaMemsetAsync(x.as<void>(), 0x7F, x.bytes(), stream));
      XY_CUDA_CHECK(cudaMemsetAsync(y1.as<void>(), 0x7F, y1.bytes(), stream));
      XY_CUDA_CHECK(cudaMemsetAsync(y2.as<void>(), 0x7F, y2.bytes(), stream));
      slow_producer_kernel<<<4, 256, 0, stream>>>(x_src.as<__nv_bfloat16>(), x.as<__nv_bfloat16>(), x_count,
                                                  20000);
      XY_CUDA_CHECK_LAUNCH();
      xy::cuda::GemmArgs a1{x.as<__nv_bfloat16>(), w1.as<__nv_bfloat16>(), y1.as<__nv_bfloat16>(), ch.m, ch.n1,
                            ch.k1, workspace.as<void>(), workspace.bytes(), true};
      xy::cuda::gemm_launch(kernel, a1, stream);
      xy::cuda::GemmArgs a2{y1.as<__nv_bfloat16>(), w2.as<__nv_bfloat16>(), y2.as<__nv_bfloat16>(), ch.m, ch.n2,
                            ch.n1, workspace.as<void>(), workspace.bytes(), true};
      xy::cuda::gemm_launch(kernel, a2, stream);
    };
    auto verify = [&](const char* how) {
      XY_CUDA_CHECK(cudaStreamSynchronize(stream));
      // GEMM 2's reference is computed from GEMM 1's bf16 output, which is checked itself.
      xy::bench::reference_gemm(y1.as<__nv_bfloat16>(), w2.as<__nv_bfloat16>(), ref2.as<float>(), ch.m, ch.n2, ch.n1);
      XY_CUDA_CHECK(cudaDeviceSynchronize());
      for (int which = 1; which <= 2; ++which) {
        const int n = which == 1 ? ch.n1 : ch.n2;
        std::vector<uint16_t> y_host(size_t{1} * (ch.m + kPadRows) * n);
        std::vector<float> ref_host(size_t{1} * ch.m * n);
        XY_CUDA_CHECK(cudaMemcpy(y_host.data(), (which == 1 ? y1 : y2).as<void>(), y_host.size() * 2,
                                 cudaMemcpyDeviceToHost));
        XY_CUDA_CHECK(cudaMemcpy(ref_host.data(), (which == 1 ? ref1 : ref2).as<void>(), ref_host.size() * 4,
                                 cudaMemcpyDeviceToHost));
        const Result r = compare(y_host, ref_host, ch.m, n);
        if (!r.ok) {
          ++failed;
          std::printf("FAIL %-20s PDL chain m=%d n1=%d k1=%d n2=%d, %s, GEMM %d: %s\n", name, ch.m, ch.n1, ch.k1,
                      ch.n2, how, which, r.first_failure.c_str());
        }
      }
    };
    enqueue();
    verify("stream");
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue();
    XY_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      verify(replay == 0 ? "graph replay 0" : "graph replay 1");
    }
    XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
    XY_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
  const std::vector<Case> cases = make_cases(quick, small);
  bool all_ok = check_rejects_bad_shapes();
  // A blocking stream: it is ordered after the synchronous cudaMemset / cudaMemcpy calls below.
  cudaStream_t stream;
  XY_CUDA_CHECK(cudaStreamCreate(&stream));
  int num_checked = 0, num_failed = 0;
  uint64_t seed = 1;
  for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
    const char* name = xy::cuda::gemm_kernel_name(kernel);
    size_t ws_bytes = 0;
    for (const Case& c : cases) {
      if (*xy::cuda::gemm_unsupported_reason(kernel, c.m, c.n, c.k) != '\0') continue;
      ws_bytes = std::max(ws_bytes, xy::cuda::gemm_workspace_bytes(kernel, c.m, c.n, c.k));
    }
    DeviceBuffer workspace(std::max<size_t>(ws_bytes, 256));
    XY_CUDA_CHECK(cudaMemset(workspace.as<void>(), 0, workspace.bytes()));
    double worst_scaled = 0, worst_fro = 0;
    int kernel_runs = 0;
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
                                c.m, c.n, c.k, workspace.as<void>(), workspace.bytes(), /*pdl=*/rep == 1};
        xy::cuda::gemm_launch(kernel, args, stream);
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        XY_CUDA_CHECK(cudaMemcpy(y_host.data(), y.as<void>(), y.bytes(), cudaMemcpyDeviceToHost));
        const Result r = compare(y_host, ref_host, c.m, c.n);
        ++num_checked;
        ++kernel_runs;
        worst_scaled = std::max(worst_scaled, r.max_scaled_err);
        worst_fro = std::max(worst_fro, r.rel_fro);
        if (!r.ok) {
          ++num_failed;
          all_ok = false;
          std::printf("FAIL %-20s m=%-5d n=%-6d k=%-6d run %d%s: %s\n", name, c.m, c.n, c.k, rep,
                      rep == 1 ? " (pdl)" : "", r.first_failure.c_str());
        }
      }
    }
    const int pdl_failed = check_pdl_ordering(kernel, stream, seed);
    num_failed += pdl_failed;
    all_ok = all_ok && pdl_failed == 0;
    std::printf("%-20s %4d runs, worst |err|/(|ref|+1) = %.2e, worst rel. Frobenius = %.2e; PDL chains %s\n",
                name, kernel_runs, worst_scaled, worst_fro, pdl_failed == 0 ? "pass" : "FAIL");
  }
  XY_CUDA_CHECK(cudaStreamDestroy(stream));
  std::printf("gemm_check: %d runs checked, %d failed: %s\n", num_checked, num_failed,
              all_ok ? "PASS" : "FAIL");
  return all_ok ? 0 : 1;
}
