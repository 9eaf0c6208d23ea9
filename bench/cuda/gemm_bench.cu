// SmoothGEMM benchmark: every kernel of the family against cuBLASLt (its heuristic's first
// algorithm, bf16 in/out, fp32 compute), measured in the same run, on the linear layers of
// Llama-3-8B and Qwen3-8B, over M from 1 to 8192. Also measures the device's copy bandwidth.
//
// 1. Sweep: each (shape, M): cuBLASLt and every kernel that runs it; the best kernel; at
//    M <= 64 the best PDL-aware kernel again with programmatic dependent launch (back-to-back
//    launches of the same GEMM, each overlapping the previous one's tail: the fixed cost that PDL
//    hides, not a layer's real neighbours).
// 2. gemv ablation: the weight-streaming kernels' launch configurations (groups x unroll, L2
//    prefetch distance) on the Llama shapes, so that the defaults of gemv_config() rest on
//    measurement.
// 3. Decode-layer chain: what a decode step's GEMMs see. Per layer of Llama-3-8B (32 layers,
//    weights of their own, so cold as in serving): add_rms_norm -> qkv -> an attention stand-in
//    (reads B x 2 MiB, the KV of B requests at context 512, and copies q to the o GEMM's input) ->
//    o -> add_rms_norm -> gate_up -> silu_mul -> down, captured as one CUDA graph, with cuBLASLt
//    GEMMs, with our best kernel per shape (from the sweep) without and with PDL, and with the
//    faster of the two per shape (what a tuned SmoothGEMM table runs) with PDL. Reported against
//    the floor: weight + KV bytes over the copy bandwidth of this run.
//
// Timing: each measurement is a CUDA graph of `iters` launches, replayed kReps times after a
// warm-up replay; the median replay over `iters` is reported. Weights and activations rotate
// among enough buffer sets (>= 3x the 60 MB L2 together) that no launch finds its operands in
// L2 left by the previous one: this is "cold weights", as in serving, where 32 layers of
// weights pass through L2 between two uses of one.
//
// Output: tables on stdout and every measurement as CSV in the file named by --csv (default
// gemm_bench.csv); a kernel timed with PDL appears as "<name>+pdl", an ablation configuration
// as "<name>[<groups>x<unroll>-pf<d>]".
//
// --lt-algos: instead of all the above (no timing, no CSV), one line per (shape, M) that the
// sweep would run (all shapes; M as --quick / --ms choose), giving the configuration of the
// algorithm that cuBLASLt's heuristic puts first, the one the sweep times as its baseline (asked
// as xy::bench::CublasLtGemm asks: bf16 in and out, fp32 compute, 32 MiB workspace), read with
// cublasLtMatmulAlgoConfigGetAttribute: CUBLASLT_ALGO_CONFIG_ID; TILE_ID as the enum names it
// (CUBLASLT_MATMUL_TILE_128x64 prints 128x64: rows x columns of cuBLASLt's C, which is yᵀ, so
// N x M in our terms: its 128x64 is our 64 x 128 tile); STAGES_ID likewise (stage size x number
// of stages: CUBLASLT_MATMUL_STAGES_64x4 prints 64x4); SPLITK_NUM, REDUCTION_SCHEME, CTA_SWIZZLING,
// CUSTOM_OPTION; with cuBLAS 12 or later CLUSTER_SHAPE_ID and INNER_SHAPE_ID (names from
// bench/cuda/cublaslt_names.h; an id without a name prints as "<kind>#<id>", an attribute the
// library refuses as "-"); then the heuristic's workspace size and waves count. What tile, ring
// and split cuBLASLt runs where our kernels lose to it.
//
// --timeline KERNEL (a build with the CMake option XY_GEMM_TIMELINE, or -DXY_GEMM_TIMELINE=1 on
// nvcc's line for gemm_wgmma_sk.cu, gemm_wgmma_swap.cu and this file; KERNEL a stream-K or swapped
// kernel as the sweep names it, e.g. wgmma_sk_128x256; a swapped kernel prints its ring's
// timeline, print_swap_timeline in gemm_timeline_report.cuh): instead of all the above (no CSV),
// where that kernel's CTAs spend their
// time. Per (shape, M) of the sweep's list (all shapes; M as --quick / --ms choose): one warm-up
// launch, then one launch outside CUDA graphs on another buffer set (cold W, as in the sweep),
// whose timeline (gemm_kernels.cuh: SkSegmentField, SkCtaField) prints as
//   line 1: CTAs, SMs, tiles x K blocks, K blocks a CTA; the span (last CTA exit - first CTA entry,
//           %globaltimer) and the share of (SMs x span) during which an SM held a running CTA;
//           the SM clock the conversions use (cudaDevAttrClockRate) and the one measured
//           (clock64 over globaltimer, consumer entry to exit);
//   line 2: CTA entry and exit times, min/median/max after the first entry (idle SMs at the
//           start, the tail at the end; globaltimer's step depends on the GPU); medians
//           over CTAs, from the consumer's entry (its SM's clock): the producer's first and last
//           TMA load, the consumer's first full barrier, the end of its last main loop, its exit;
//   lines 3-4: whole and split segments (a segment: one CTA's run of K blocks of one tile), mean
//           us per segment: wait for the first full barrier (from the segment's start), main loop
//           (first full barrier to the last wgmma wait; also per K block), fix-up (split only;
//           also by outcome: added its part and left / added, was last and stored / read the
//           others' parts back without adding), epilogue (to the stores' issue);
//   line 5: the consumer's busy time (entry to exit, mean a CTA) and each phase's share of it:
//           setup (entry to its first segment), the four phases, rest (the final store wait,
//           segments past the recorded 16).
// The instrument costs the timed kernel a few stores per segment (and a few spilled registers
// outside the main loop, ptxas: 128 x 256 and 128 x 128 at two CTAs per SM); it is off in
// every real build, where the kernel compiles to the same code.
// Usage: gemm_bench [--csv FILE] [--quick] [--ms M,M,...] [--lt-algos] [--timeline KERNEL]
//   --quick: M in {1, 8, 32, 64, 777, 4096}; --ms: the sweep at these M alone (no gemv ablation,
//   no chain).
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bench/cuda/cublaslt_algo_report.h"
#include "bench/cuda/gemm_timeline_report.cuh"
#include "bench/cuda/gemm_util.cuh"
#include "xyserve/backend/cuda/gemm.h"
#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/error.h"

namespace {

using xy::bench::DeviceBuffer;
using xy::bench::LtHeuristic;
using xy::bench::lt_config_text;
#if XY_GEMM_TIMELINE
using xy::bench::print_sk_timeline;
using xy::bench::print_swap_timeline;
#endif
using xy::cuda::GemmKernel;
using bf16 = __nv_bfloat16;

struct Shape {
  const char* model;
  const char* layer;
  int n, k;
};

constexpr Shape kShapes[] = {
    {"llama3-8b", "qkv", 6144, 4096},    {"llama3-8b", "o", 4096, 4096},
    {"llama3-8b", "gate_up", 28672, 4096}, {"llama3-8b", "down", 4096, 14336},
    {"qwen3-8b", "qkv", 6144, 4096},     {"qwen3-8b", "o", 4096, 4096},
    {"qwen3-8b", "gate_up", 24576, 4096}, {"qwen3-8b", "down", 4096, 12288},
};
constexpr int kNumLlamaShapes = 4;  // kShapes[0..3], in layer order: qkv, o, gate_up, down
constexpr int kMs[] = {1,   2,   4,   8,   16,  32,   33,   64,   100,  128,  192,
                       256, 257, 384, 512, 777, 1024, 2048, 3000, 4096, 8192};
constexpr int kQuickMs[] = {1, 8, 32, 64, 777, 4096};
constexpr int kChainMs[] = {1, 8, 32, 64};  // must be measured by the sweep in both modes
constexpr int kMaxM = 8192;
constexpr int kReps = 7;
constexpr size_t kRotateBytes = size_t{200} << 20;  // > 3x the 60 MB L2
constexpr int kPdlMaxM = 64;                         // M up to which the PDL column is measured

// Past these M the weight-streaming kernels re-read W once per tile of tokens and are not
// contenders: stream-K tiles hold 16-64 tokens, gemv tiles 8-32, the small swapped wgmma tiles
// 32-64 (wgmma_swap_<tokens>x<W rows>_...; those of 72 tokens and more are mid-M tiles).
int max_m_for(GemmKernel kernel) {
  const char* name = xy::cuda::gemm_kernel_name(kernel);
  if (std::strncmp(name, "stream", 6) == 0) return 512;
  if (std::strncmp(name, "wgmma_swap_", 11) == 0) return std::atoi(name + 11) <= 64 ? 256 : kMaxM;
  if (std::strncmp(name, "gemv", 4) == 0) return 64;
  return kMaxM;
}

struct Buffers {
  int sets = 0;
  std::vector<DeviceBuffer> x, w, y;
};

Buffers make_buffers(const Shape& s, int max_m, uint64_t seed) {
  Buffers b;
  const size_t w_bytes = size_t{2} * s.n * s.k;
  b.sets = static_cast<int>(std::max<size_t>(2, (kRotateBytes + w_bytes - 1) / w_bytes));
  for (int i = 0; i < b.sets; ++i) {
    b.x.emplace_back(size_t{2} * max_m * s.k);
    b.w.emplace_back(w_bytes);
    b.y.emplace_back(size_t{2} * max_m * s.n);
    xy::bench::fill_uniform(b.x.back().as<bf16>(), size_t{1} * max_m * s.k, seed++);
    xy::bench::fill_uniform(b.w.back().as<bf16>(), size_t{1} * s.n * s.k, seed++, 0.05f);
  }
  return b;
}

// Median time in microseconds of one replay of a graph that runs `body` once, after one warm
// replay (`body` must have run once outside capture: plans, module loads, attributes).
template <class Body>
double graph_replay_us(cudaStream_t stream, Body&& body) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  body();
  XY_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up replay
  cudaEvent_t start, stop;
  XY_CUDA_CHECK(cudaEventCreate(&start));
  XY_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> us;
  for (int r = 0; r < kReps; ++r) {
    XY_CUDA_CHECK(cudaEventRecord(start, stream));
    XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    XY_CUDA_CHECK(cudaEventRecord(stop, stream));
    XY_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    us.push_back(1e3 * ms);
  }
  XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
  XY_CUDA_CHECK(cudaGraphDestroy(graph));
  XY_CUDA_CHECK(cudaEventDestroy(start));
  XY_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Median time of one launch, in microseconds, of `launch(set)` rotating over buffer sets.
template <class Launch>
double time_us(cudaStream_t stream, int sets, Launch&& launch) {
  // One untimed launch first: module load, cuBLAS plan, kernel attributes stay out of capture.
  launch(0);
  XY_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  XY_CUDA_CHECK(cudaEventCreate(&start));
  XY_CUDA_CHECK(cudaEventCreate(&stop));
  XY_CUDA_CHECK(cudaEventRecord(start, stream));
  launch(1 % sets);
  XY_CUDA_CHECK(cudaEventRecord(stop, stream));
  XY_CUDA_CHECK(cudaEventSynchronize(stop));
  float probe_ms = 0;
  XY_CUDA_CHECK(cudaEventElapsedTime(&probe_ms, start, stop));
  XY_CUDA_CHECK(cudaEventDestroy(start));
  XY_CUDA_CHECK(cudaEventDestroy(stop));
  // About 3 ms per replay, between 8 and 400 launches.
  const int iters = std::clamp(static_cast<int>(3.0 / std::max(probe_ms, 1e-3f)), 8, 400);
  return graph_replay_us(stream, [&] {
           for (int i = 0; i < iters; ++i) launch(i % sets);
         }) / iters;
}

// 16-byte copy with four independent loads in flight per thread.
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    dst[i] = a;
    dst[i + stride] = b;
    dst[i + 2 * stride] = c;
    dst[i + 3 * stride] = d;
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

// Device-to-device copy of 1 GiB, counting bytes read plus bytes written: the larger of
// cudaMemcpyAsync (measured 2.78 TB/s inside a graph on an H200, 2026-11-25) and a plain
// 16-byte copy kernel.
double copy_bandwidth_tbps(cudaStream_t stream, int num_sms) {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer a(bytes), b(bytes);
  XY_CUDA_CHECK(cudaMemset(a.as<void>(), 1, bytes));
  const double memcpy_us = time_us(stream, 1, [&](int) {
    XY_CUDA_CHECK(cudaMemcpyAsync(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double kernel_us = time_us(stream, 1, [&](int) {
    copy_kernel<<<num_sms * 4, 512, 0, stream>>>(a.as<uint4>(), b.as<uint4>(), bytes / 16);
    XY_CUDA_CHECK_LAUNCH();
  });
  std::printf("copy: cudaMemcpyAsync %.2f TB/s, copy kernel %.2f TB/s (read + write)\n",
              2.0 * bytes / memcpy_us * 1e-6, 2.0 * bytes / kernel_us * 1e-6);
  return 2.0 * bytes / std::min(memcpy_us, kernel_us) * 1e-6;
}

std::vector<uint16_t> to_host_bf16(const void* p, size_t count) {
  std::vector<uint16_t> h(count);
  XY_CUDA_CHECK(cudaMemcpy(h.data(), p, count * 2, cudaMemcpyDeviceToHost));
  return h;
}

// max |a - b| / (|b| + 1) over m x n bf16 outputs.
double max_scaled_diff(const bf16* a, const bf16* b, int m, int n) {
  const std::vector<uint16_t> ha = to_host_bf16(a, size_t{1} * m * n), hb = to_host_bf16(b, size_t{1} * m * n);
  double worst = 0;
  for (size_t i = 0; i < ha.size(); ++i) {
    const double va = xy::bench::bf16_bits_to_float(ha[i]), vb = xy::bench::bf16_bits_to_float(hb[i]);
    const double d = std::fabs(va - vb) / (std::fabs(vb) + 1.0);
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  return worst;
}

// Two bf16-rounded results of the same sum: each within 2^-9 of the truth.
constexpr double kAgreeBound = 2e-2;

// What the sweep found for one (shape, M): the fastest kernel of the family (if any ran and
// agreed with cuBLASLt) and cuBLASLt's time.
struct SweepBest {
  bool found = false;
  GemmKernel kernel = GemmKernel::kGemvT8;
  double us = INFINITY, cublas_us = INFINITY;
};

void run_sweep(const std::vector<int>& ms, cudaStream_t stream, double copy_tbps, FILE* csv,
               xy::bench::CublasLtGemm& cublas, std::map<std::pair<int, int>, SweepBest>& best_of) {
  std::printf("%-9s %-7s %5s | %-20s %9s %6s %5s %7s | %9s %6s | %7s | %-20s %9s %7s\n", "model", "layer", "M",
              "best", "us", "TB/s", "%bw", "TFLOP/s", "cublas us", "TB/s", "speedup", "best pdl-aware", "+pdl us",
              "speedup");
  const int max_m = *std::max_element(ms.begin(), ms.end());
  uint64_t seed = 100;
  for (int si = 0; si < int(std::size(kShapes)); ++si) {
    const Shape& s = kShapes[si];
    Buffers b = make_buffers(s, max_m, seed);
    seed += 1000;
    // One workspace per kernel, zeroed once: the stream-K kernels leave it zeroed.
    std::vector<DeviceBuffer> workspaces;
    for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
      size_t bytes = 256;
      for (int m : ms) {
        if (m > max_m_for(kernel)) continue;  // never run there
        bytes = std::max(bytes, xy::cuda::gemm_workspace_bytes(kernel, m, s.n, s.k));
      }
      workspaces.emplace_back(bytes);
      XY_CUDA_CHECK(cudaMemset(workspaces.back().as<void>(), 0, bytes));
    }
    XY_CUDA_CHECK(cudaDeviceSynchronize());  // filled and zeroed on the legacy stream; timed on `stream`
    DeviceBuffer y_check(size_t{2} * max_m * s.n);
    for (int m : ms) {
      const double bytes = 2.0 * (static_cast<double>(s.n) * s.k + static_cast<double>(m) * (s.k + s.n));
      const double flops = 2.0 * m * s.n * s.k;
      auto csv_row = [&](const std::string& name, double us, double cublas_us, double diff) {
        std::fprintf(csv, "%s,%s,%d,%d,%d,%s,%.3f,%.4f,%.4f,%.2f,%.3f,%.3f,%.2e\n", s.model, s.layer, m, s.n, s.k,
                     name.c_str(), us, bytes / us * 1e-6, bytes / us * 1e-6 / copy_tbps, flops / us * 1e-6,
                     cublas_us, cublas_us / us, diff);
      };
      auto launch_cublas = [&](int set) {
        cublas.run(b.x[set].as<bf16>(), b.w[set].as<bf16>(), b.y[set].as<void>(), m, s.n, s.k, CUDA_R_16BF, stream);
      };
      const double cublas_us = time_us(stream, b.sets, launch_cublas);
      launch_cublas(0);
      XY_CUDA_CHECK(cudaMemcpyAsync(y_check.as<void>(), b.y[0].as<void>(), size_t{2} * m * s.n,
                                    cudaMemcpyDeviceToDevice, stream));
      XY_CUDA_CHECK(cudaStreamSynchronize(stream));
      csv_row("cublaslt", cublas_us, cublas_us, 0);

      SweepBest best;
      best.cublas_us = cublas_us;
      GemmKernel best_pdl_kernel = GemmKernel::kGemvT8;
      double best_pdl_plain_us = INFINITY;
      int ki = 0;
      for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
        DeviceBuffer& ws = workspaces[ki++];
        if (m > max_m_for(kernel)) continue;
        if (*xy::cuda::gemm_unsupported_reason(kernel, m, s.n, s.k) != '\0') continue;
        auto launch = [&](int set) {
          xy::cuda::GemmArgs args{b.x[set].as<bf16>(), b.w[set].as<bf16>(), b.y[set].as<bf16>(), m, s.n, s.k,
                                  ws.as<void>(), ws.bytes()};
          xy::cuda::gemm_launch(kernel, args, stream);
        };
        const double us = time_us(stream, b.sets, launch);
        xy::bench::poison(b.y[0].as<void>(), size_t{1} * m * s.n);
        launch(0);
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        const double diff = max_scaled_diff(b.y[0].as<bf16>(), y_check.as<bf16>(), m, s.n);
        const char* name = xy::cuda::gemm_kernel_name(kernel);
        csv_row(name, us, cublas_us, diff);
        if (!(diff <= kAgreeBound)) {
          std::printf("MISMATCH %s %s M=%d %s: max |ours - cublas|/(|cublas|+1) = %.3e\n", s.model, s.layer, m,
                      name, diff);
          continue;
        }
        if (us < best.us) best = {true, kernel, us, cublas_us};
        if (xy::cuda::gemm_kernel_supports_pdl(kernel) && us < best_pdl_plain_us) {
          best_pdl_plain_us = us;
          best_pdl_kernel = kernel;
        }
      }
      best_of[{si, m}] = best;

      // The best PDL-aware kernel again, every launch a programmatic dependent launch.
      double pdl_us = INFINITY;
      if (m <= kPdlMaxM && std::isfinite(best_pdl_plain_us)) {
        DeviceBuffer& ws = workspaces[size_t(std::find(xy::cuda::all_gemm_kernels().begin(),
                                                       xy::cuda::all_gemm_kernels().end(), best_pdl_kernel) -
                                             xy::cuda::all_gemm_kernels().begin())];
        auto launch = [&](int set) {
          xy::cuda::GemmArgs args{b.x[set].as<bf16>(), b.w[set].as<bf16>(), b.y[set].as<bf16>(), m, s.n, s.k,
                                  ws.as<void>(), ws.bytes(), /*pdl=*/true};
          xy::cuda::gemm_launch(best_pdl_kernel, args, stream);
        };
        pdl_us = time_us(stream, b.sets, launch);
        xy::bench::poison(b.y[0].as<void>(), size_t{1} * m * s.n);
        launch(0);
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        const double diff = max_scaled_diff(b.y[0].as<bf16>(), y_check.as<bf16>(), m, s.n);
        csv_row(std::string(xy::cuda::gemm_kernel_name(best_pdl_kernel)) + "+pdl", pdl_us, cublas_us, diff);
        if (!(diff <= kAgreeBound)) {
          std::printf("MISMATCH %s %s M=%d %s+pdl: max |ours - cublas|/(|cublas|+1) = %.3e\n", s.model, s.layer,
                      m, xy::cuda::gemm_kernel_name(best_pdl_kernel), diff);
          pdl_us = INFINITY;
        }
      }
      const char* best_name = best.found ? xy::cuda::gemm_kernel_name(best.kernel) : "-";
      std::printf("%-9s %-7s %5d | %-20s %9.2f %6.2f %4.0f%% %7.1f | %9.2f %6.2f | %6.2fx", s.model, s.layer, m,
                  best_name, best.us, bytes / best.us * 1e-6, 100 * bytes / best.us * 1e-6 / copy_tbps,
                  flops / best.us * 1e-6, cublas_us, bytes / cublas_us * 1e-6, cublas_us / best.us);
      if (std::isfinite(pdl_us)) {
        std::printf(" | %-20s %9.2f %6.2fx\n", xy::cuda::gemm_kernel_name(best_pdl_kernel), pdl_us,
                    cublas_us / pdl_us);
      } else {
        std::printf(" |\n");
      }
      std::fflush(stdout);
    }
    std::fflush(csv);
  }
}

// --- 2. gemv ablation ------------------------------------------------------------------------

void run_gemv_ablation(cudaStream_t stream, double copy_tbps, FILE* csv, xy::bench::CublasLtGemm& cublas) {
  std::printf("\n== gemv launch configurations (Llama-3-8B shapes; default: gemv_config(), prefetch %d)\n",
              xy::cuda::gemm_detail::kGemvPrefetchSteps);
  std::printf("%-7s %3s %4s | %-9s %9s %6s %5s\n", "layer", "tok", "M", "config", "us", "TB/s", "%bw");
  struct Point {
    int tok, m;
  };
  constexpr Point kPoints[] = {{8, 1}, {8, 8}, {16, 16}, {32, 32}};
  uint64_t seed = 50000;
  for (int si = 0; si < kNumLlamaShapes; ++si) {
    const Shape& s = kShapes[si];
    Buffers b = make_buffers(s, 32, seed);
    seed += 1000;
    XY_CUDA_CHECK(cudaDeviceSynchronize());
    DeviceBuffer y_check(size_t{2} * 32 * s.n);
    for (const Point p : kPoints) {
      cublas.run(b.x[0].as<bf16>(), b.w[0].as<bf16>(), y_check.as<void>(), p.m, s.n, s.k, CUDA_R_16BF, stream);
      const double bytes = 2.0 * (static_cast<double>(s.n) * s.k + static_cast<double>(p.m) * (s.k + s.n));
      const xy::cuda::gemm_detail::GemvConfig chosen = xy::cuda::gemm_detail::gemv_config(p.tok, s.n);
      for (const auto [groups, unroll] : {std::pair{8, 1}, std::pair{4, 2}}) {
        if (p.tok == 32 && groups == 8) continue;  // not compiled: too many accumulators
        for (int prefetch = 0; prefetch <= 3; ++prefetch) {
          const xy::cuda::gemm_detail::GemvConfig cfg{groups, unroll, prefetch};
          auto launch = [&](int set) {
            XY_CUDA_CHECK(xy::cuda::gemm_detail::launch_gemv(p.tok, b.x[set].as<bf16>(), b.w[set].as<bf16>(),
                                                             b.y[set].as<bf16>(), p.m, s.n, s.k, false, stream,
                                                             &cfg));
          };
          const double us = time_us(stream, b.sets, launch);
          xy::bench::poison(b.y[0].as<void>(), size_t{1} * p.m * s.n);
          launch(0);
          XY_CUDA_CHECK(cudaStreamSynchronize(stream));
          const double diff = max_scaled_diff(b.y[0].as<bf16>(), y_check.as<bf16>(), p.m, s.n);
          const std::string name = xy::cat("gemv_t", p.tok, "[", groups, "x", unroll, "-pf", prefetch, "]");
          std::fprintf(csv, "%s,%s,%d,%d,%d,%s,%.3f,%.4f,%.4f,%.2f,,,%.2e\n", s.model, s.layer, p.m, s.n, s.k,
                       name.c_str(), us, bytes / us * 1e-6, bytes / us * 1e-6 / copy_tbps,
                       2.0 * p.m * s.n * s.k / us * 1e-6, diff);
          const bool is_default = groups == chosen.groups && unroll == chosen.unroll &&
                                  prefetch == chosen.prefetch_steps;
          std::printf("%-7s %3d %4d | %dx%d pf%d%s %9.2f %6.2f %4.0f%%%s\n", s.layer, p.tok, p.m, groups, unroll,
                      prefetch, is_default ? "*" : " ", us, bytes / us * 1e-6, 100 * bytes / us * 1e-6 / copy_tbps,
                      diff <= kAgreeBound ? "" : "  MISMATCH against cuBLASLt");
        }
      }
    }
    std::fflush(stdout);
  }
}

// --- 3. decode-layer chain -------------------------------------------------------------------

constexpr int kChainLayers = 32;
constexpr int kChainHidden = 4096, kChainQDim = 4096, kChainQkvDim = 6144, kChainInter = 14336;
// KV that decode attention reads per request and layer at context 512: 512 positions x 8 KV
// heads x 128 dims x (K, V) x 2 bytes.
constexpr size_t kKvBytesPerRequest = size_t{512} * 8 * 128 * 2 * 2;

// Stands in for attention: reads the step's KV (`kv_vecs` 16-byte words) and writes
// out[m, q_dim] = the q columns of qkv, so that the o GEMM depends on it. It lets its dependents
// launch as it starts, as the attention kernels should (GemmArgs::pdl).
__global__ void attention_stand_in_kernel(const uint4* __restrict__ kv, size_t kv_vecs, const bf16* __restrict__ qkv,
                                          int qkv_dim, bf16* __restrict__ out, int m, int q_dim,
                                          unsigned* __restrict__ sink) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  const size_t tid = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  unsigned acc = 0;
  for (size_t i = tid; i < kv_vecs; i += stride) {
    const uint4 v = kv[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;  // keeps the loads; which value lands there does not matter
  const int vecs_per_row = q_dim / 8;
  for (size_t i = tid; i < size_t{1} * m * vecs_per_row; i += stride) {
    const size_t row = i / vecs_per_row, col = i % vecs_per_row;
    reinterpret_cast<uint4*>(out + row * q_dim)[col] = reinterpret_cast<const uint4*>(qkv + row * qkv_dim)[col];
  }
}

__global__ void fill_constant_kernel(bf16* p, size_t n, float v) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = __float2bfloat16(v);
}
__global__ void bf16_to_float_kernel(const bf16* src, float* dst, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

// How one GEMM of the chain runs.
struct ChainGemm {
  bool cublas = true;
  GemmKernel kernel = GemmKernel::kGemvT8;
  bool pdl = false;
};

class DecodeChain {
 public:
  DecodeChain(int max_m, uint64_t seed) : max_m_(max_m) {
    const size_t shape_elems[kNumLlamaShapes] = {size_t{kChainQkvDim} * kChainHidden, size_t{kChainHidden} * kChainQDim,
                                                 size_t{2} * kChainInter * kChainHidden,
                                                 size_t{kChainHidden} * kChainInter};
    for (int l = 0; l < kChainLayers; ++l) {
      for (int si = 0; si < kNumLlamaShapes; ++si) {
        weights_[si].emplace_back(2 * shape_elems[si]);
        xy::bench::fill_uniform(weights_[si].back().as<bf16>(), shape_elems[si], seed++, 0.05f);
        weight_bytes_ += 2 * shape_elems[si];
      }
    }
    norm_weight_ = DeviceBuffer(size_t{2} * kChainHidden);
    fill_constant_kernel<<<16, 256>>>(norm_weight_.as<bf16>(), kChainHidden, 1.0f);
    XY_CUDA_CHECK_LAUNCH();
    kv_ = DeviceBuffer(kChainLayers * max_m * kKvBytesPerRequest);
    XY_CUDA_CHECK(cudaMemset(kv_.as<void>(), 1, kv_.bytes()));
    residual_init_ = DeviceBuffer(size_t{4} * max_m * kChainHidden);
    DeviceBuffer tmp(size_t{2} * max_m * kChainHidden);
    xy::bench::fill_uniform(tmp.as<bf16>(), size_t{1} * max_m * kChainHidden, seed++);
    bf16_to_float_kernel<<<64, 256>>>(tmp.as<bf16>(), residual_init_.as<float>(), size_t{1} * max_m * kChainHidden);
    XY_CUDA_CHECK_LAUNCH();
    residual_ = DeviceBuffer(residual_init_.bytes());
    normed_ = DeviceBuffer(size_t{2} * max_m * kChainHidden);
    qkv_ = DeviceBuffer(size_t{2} * max_m * kChainQkvDim);
    attn_ = DeviceBuffer(size_t{2} * max_m * kChainQDim);
    proj_ = DeviceBuffer(size_t{2} * max_m * kChainHidden);
    gate_up_ = DeviceBuffer(size_t{2} * max_m * 2 * kChainInter);
    act_ = DeviceBuffer(size_t{2} * max_m * kChainInter);
    out_ = DeviceBuffer(size_t{2} * max_m * kChainHidden);
    sink_ = DeviceBuffer(256);
    XY_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // Weights and the KV the step reads at batch m: the floor's bytes.
  double bytes_read(int m) const { return double(weight_bytes_) + double(kChainLayers) * m * kKvBytesPerRequest; }

  // Zeroed workspace for the stream-K kernels among `gemms` at batch m.
  void reserve_workspace(const ChainGemm (&gemms)[kNumLlamaShapes], int m) {
    size_t need = 256;
    for (int si = 0; si < kNumLlamaShapes; ++si)
      if (!gemms[si].cublas) need = std::max(need, xy::cuda::gemm_workspace_bytes(gemms[si].kernel, m, kShapes[si].n, kShapes[si].k));
    if (need > workspace_.bytes()) {
      workspace_ = DeviceBuffer(need);
      XY_CUDA_CHECK(cudaMemset(workspace_.as<void>(), 0, need));
      XY_CUDA_CHECK(cudaDeviceSynchronize());
    }
  }

  // One decode step's layers at batch m; out_ = the final norm of the residual stream.
  void enqueue(const ChainGemm (&gemms)[kNumLlamaShapes], int m, cudaStream_t stream, xy::bench::CublasLtGemm& cublas) {
    XY_CUDA_CHECK(cudaMemcpyAsync(residual_.as<void>(), residual_init_.as<void>(), size_t{4} * m * kChainHidden,
                                  cudaMemcpyDeviceToDevice, stream));
    const float eps = 1e-5f;
    float* residual = residual_.as<float>();
    const bf16* norm_w = norm_weight_.as<bf16>();
    auto gemm = [&](int si, int layer, const bf16* x, bf16* y) {
      const Shape& s = kShapes[si];
      const bf16* w = weights_[si][size_t(layer)].as<bf16>();
      if (gemms[si].cublas) {
        cublas.run(x, w, y, m, s.n, s.k, CUDA_R_16BF, stream);
      } else {
        const xy::cuda::GemmArgs args{x, w, y, m, s.n, s.k, workspace_.as<void>(), workspace_.bytes(), gemms[si].pdl};
        xy::cuda::gemm_launch(gemms[si].kernel, args, stream);
      }
    };
    for (int l = 0; l < kChainLayers; ++l) {
      xy::cuda::launch_add_rms_norm(residual, l == 0 ? nullptr : proj_.as<bf16>(), norm_w, nullptr, m, kChainHidden,
                                    eps, normed_.as<bf16>(), stream);
      gemm(0, l, normed_.as<bf16>(), qkv_.as<bf16>());
      const size_t kv_offset = size_t(l) * max_m_ * kKvBytesPerRequest;
      attention_stand_in_kernel<<<264, 256, 0, stream>>>(
          reinterpret_cast<const uint4*>(kv_.as<unsigned char>() + kv_offset), m * kKvBytesPerRequest / 16,
          qkv_.as<bf16>(), kChainQkvDim, attn_.as<bf16>(), m, kChainQDim, sink_.as<unsigned>());
      XY_CUDA_CHECK_LAUNCH();
      gemm(1, l, attn_.as<bf16>(), proj_.as<bf16>());
      xy::cuda::launch_add_rms_norm(residual, proj_.as<bf16>(), norm_w, nullptr, m, kChainHidden, eps,
                                    normed_.as<bf16>(), stream);
      gemm(2, l, normed_.as<bf16>(), gate_up_.as<bf16>());
      xy::cuda::launch_silu_mul(gate_up_.as<bf16>(), m, kChainInter, act_.as<bf16>(), stream);
      gemm(3, l, act_.as<bf16>(), proj_.as<bf16>());
    }
    xy::cuda::launch_add_rms_norm(residual, proj_.as<bf16>(), norm_w, nullptr, m, kChainHidden, eps,
                                  out_.as<bf16>(), stream);
  }

  const bf16* out() const { return out_.as<bf16>(); }

 private:
  int max_m_;
  size_t weight_bytes_ = 0;
  std::vector<DeviceBuffer> weights_[kNumLlamaShapes];  // [shape][layer]
  DeviceBuffer norm_weight_, kv_, residual_init_, residual_, normed_, qkv_, attn_, proj_, gate_up_, act_, out_;
  DeviceBuffer sink_, workspace_;
};

void run_chain(cudaStream_t stream, double copy_tbps, xy::bench::CublasLtGemm& cublas,
               const std::map<std::pair<int, int>, SweepBest>& best_of) {
  const int max_m = *std::max_element(std::begin(kChainMs), std::end(kChainMs));
  DecodeChain chain(max_m, 90000);
  std::printf("\n== decode-layer chain: Llama-3-8B shapes, %d layers of add_rms_norm -> qkv -> attention stand-in "
              "(B x %.0f MiB of KV) -> o -> add_rms_norm -> gate_up -> silu_mul -> down, one CUDA graph; M = B\n",
              kChainLayers, kKvBytesPerRequest / double(1 << 20));
  std::printf("floor: (weights + KV) / copy bandwidth %.2f TB/s; %% = floor / time\n", copy_tbps);
  std::printf("%3s | %8s | %15s | %15s | %15s | %15s | %9s %9s\n", "M", "floor ms", "cublaslt ms", "ours ms",
              "ours+pdl ms", "best+pdl ms", "pdl gain", "vs cublas");
  constexpr const char* kVariants[] = {"cublaslt", "ours", "ours+pdl", "best+pdl"};
  for (int m : kChainMs) {
    ChainGemm plans[4][kNumLlamaShapes];
    std::string choice;
    for (int si = 0; si < kNumLlamaShapes; ++si) {
      const auto it = best_of.find({si, m});
      const bool have = it != best_of.end() && it->second.found;
      plans[0][si] = {};
      plans[1][si] = have ? ChainGemm{false, it->second.kernel, false} : ChainGemm{};
      plans[2][si] = have ? ChainGemm{false, it->second.kernel, true} : ChainGemm{};
      plans[3][si] = have && it->second.us < it->second.cublas_us ? ChainGemm{false, it->second.kernel, true}
                                                                  : ChainGemm{};
      choice += xy::cat(si ? ", " : "", kShapes[si].layer, " ",
                        have ? xy::cuda::gemm_kernel_name(it->second.kernel) : "cublaslt (no kernel of ours)");
    }
    double ms[4] = {};
    std::vector<uint16_t> reference;
    std::string agreement;
    for (int v = 0; v < 4; ++v) {
      chain.reserve_workspace(plans[v], m);
      chain.enqueue(plans[v], m, stream, cublas);  // eager: cuBLASLt plans, module loads, attributes
      XY_CUDA_CHECK(cudaStreamSynchronize(stream));
      ms[v] = 1e-3 * graph_replay_us(stream, [&] { chain.enqueue(plans[v], m, stream, cublas); });
      XY_CUDA_CHECK(cudaStreamSynchronize(stream));
      // The replays' output against the cuBLASLt chain's: 32 layers of bf16 rounding apart.
      const std::vector<uint16_t> out = to_host_bf16(chain.out(), size_t{1} * m * kChainHidden);
      if (v == 0) {
        reference = out;
        continue;
      }
      double err2 = 0, ref2 = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        const double a = xy::bench::bf16_bits_to_float(out[i]), b = xy::bench::bf16_bits_to_float(reference[i]);
        err2 += (a - b) * (a - b);
        ref2 += b * b;
      }
      const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
      agreement += xy::cat(" ", kVariants[v], " ", rel);
      if (!(rel <= 5e-2)) std::printf("MISMATCH chain M=%d %s: relative difference to cublaslt %.3e\n", m, kVariants[v], rel);
    }
    const double floor_ms = chain.bytes_read(m) / (copy_tbps * 1e12) * 1e3;
    std::printf("%3d | %8.3f |", m, floor_ms);
    for (int v = 0; v < 4; ++v) std::printf(" %8.3f (%3.0f%%) |", ms[v], 100 * floor_ms / ms[v]);
    std::printf(" %8.2fx %8.2fx\n", ms[1] / ms[2], ms[0] / std::min(ms[2], ms[3]));
    std::printf("      ours: %s; relative difference of the final norm to cublaslt's:%s\n", choice.c_str(),
                agreement.c_str());
    std::fflush(stdout);
  }
}

// --- 4. cuBLASLt's choices (--lt-algos; lt_config_text, LtHeuristic: cublaslt_algo_report.h) ------

// One line per (shape, M of `ms`): the configuration of cuBLASLt's first heuristic algorithm.
void print_lt_algos(const std::vector<int>& ms) {
  LtHeuristic heuristic;
  std::printf("cuBLASLt's first heuristic algorithm (the sweep's baseline); tile = rows x columns of its C = yᵀ "
              "(N x M)\n");
  std::printf("%-9s %-7s %5s %6s %6s | %5s %-9s %-8s %6s %-12s %7s %6s %-8s %-9s | %11s %6s\n", "model", "layer",
              "M", "n", "k", "algo", "tile", "stages", "splitk", "reduction", "swizzle", "custom", "cluster",
              "inner", "workspace", "waves");
  for (const Shape& s : kShapes) {
    for (int m : ms) {
      const std::optional<cublasLtMatmulHeuristicResult_t> r = heuristic.first(m, s.n, s.k);
      if (!r) {
        std::printf("%-9s %-7s %5d %6d %6d | no algorithm\n", s.model, s.layer, m, s.n, s.k);
        continue;
      }
      const cublasLtMatmulAlgo_t& a = r->algo;
#if CUBLAS_VER_MAJOR >= 12
      const std::string cluster =
          lt_config_text(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, xy::bench::lt_cluster_shape_name);
      const std::string inner = lt_config_text(a, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, xy::bench::lt_inner_shape_name);
#else
      const std::string cluster = "n/a", inner = "n/a";  // not in this cuBLASLt's configuration
#endif
      std::printf("%-9s %-7s %5d %6d %6d | %5s %-9s %-8s %6s %-12s %7s %6s %-8s %-9s | %11zu %6.2f\n", s.model, s.layer,
                  m, s.n, s.k, lt_config_text(a, CUBLASLT_ALGO_CONFIG_ID).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_TILE_ID, xy::bench::lt_tile_name).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_STAGES_ID, xy::bench::lt_stages_name).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, xy::bench::lt_reduction_scheme_name).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING).c_str(),
                  lt_config_text(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION).c_str(), cluster.c_str(), inner.c_str(),
                  r->workspaceSize, double(r->wavesCount));
    }
    std::fflush(stdout);
  }
}

// --- 5. the stream-K kernel's timeline (--timeline) ----------------------------------------------

#if XY_GEMM_TIMELINE
// Per (shape, M of `ms`): one warm-up launch of `kernel`, then one on another buffer set, whose
// timeline prints.
void run_timeline(GemmKernel kernel, const std::vector<int>& ms, cudaStream_t stream, int num_sms) {
  namespace gd = xy::cuda::gemm_detail;
  int khz = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  const char* name = xy::cuda::gemm_kernel_name(kernel);
  std::printf("timeline of %s: one launch outside graphs after a warm-up, cold W; us at %d MHz unless said\n", name,
              khz / 1000);
  const int max_m = *std::max_element(ms.begin(), ms.end());
  uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    Buffers b = make_buffers(s, max_m, seed);
    seed += 1000;
    size_t bytes = 256;
    for (int m : ms) bytes = std::max(bytes, xy::cuda::gemm_workspace_bytes(kernel, m, s.n, s.k));
    DeviceBuffer ws(bytes);
    XY_CUDA_CHECK(cudaMemset(ws.as<void>(), 0, bytes));  // the stream-K kernels leave it zeroed
    XY_CUDA_CHECK(cudaDeviceSynchronize());
    for (int m : ms) {
      std::printf("%s %s M=%d (n %d, k %d) %s\n", s.model, s.layer, m, s.n, s.k, name);
      if (const char* why = xy::cuda::gemm_unsupported_reason(kernel, m, s.n, s.k); *why != '\0') {
        std::printf("  not run: %s\n", why);
        continue;
      }
      auto launch = [&](int set) {
        const xy::cuda::GemmArgs args{b.x[set].as<bf16>(), b.w[set].as<bf16>(), b.y[set].as<bf16>(), m, s.n, s.k,
                                      ws.as<void>(), ws.bytes()};
        xy::cuda::gemm_launch(kernel, args, stream);
      };
      const bool swapped = std::strncmp(name, "wgmma_swap_", 11) == 0;
      launch(0);  // module load, attributes, plans; warms the clocks
      swapped ? (void)gd::take_swap_timeline() : (void)gd::take_sk_timeline();  // waits for it; clears
      launch(1 % b.sets);
      if (swapped) {
        print_swap_timeline(gd::take_swap_timeline(), 8);
      } else {
        print_sk_timeline(gd::take_sk_timeline(), num_sms, khz);
      }
      std::fflush(stdout);
    }
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path = "gemm_bench.csv";
  bool quick = false;
  bool lt_algos = false;  // --lt-algos: print cuBLASLt's choices and stop
  const char* timeline = nullptr;  // --timeline KERNEL: print that kernel's timeline and stop
  std::vector<int> only_ms;  // --ms M,M,...: the sweep at these M alone (no gemv ablation, no chain)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--csv") == 0 && i + 1 < argc) csv_path = argv[++i];
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--lt-algos") == 0) lt_algos = true;
    if (std::strcmp(argv[i], "--timeline") == 0) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gemm_bench: --timeline wants a kernel name (wgmma_sk_128x256, ...)\n");
        return 2;
      }
      timeline = argv[++i];
    }
    if (std::strcmp(argv[i], "--ms") == 0 && i + 1 < argc) {
      for (const char* p = argv[++i]; *p != '\0';) {
        char* end = nullptr;
        const long m = std::strtol(p, &end, 10);
        if (end == p || m < 1) {
          std::fprintf(stderr, "gemm_bench: --ms wants positive integers separated by commas, got %s\n", argv[i]);
          return 2;
        }
        only_ms.push_back(int(m));
        p = *end == ',' ? end + 1 : end;
      }
    }
  }
  std::vector<int> ms = !only_ms.empty() ? only_ms
                        : quick          ? std::vector<int>(std::begin(kQuickMs), std::end(kQuickMs))
                                         : std::vector<int>(std::begin(kMs), std::end(kMs));
  if (lt_algos) {
    print_lt_algos(ms);
    return 0;
  }
  if (timeline != nullptr) {
#if XY_GEMM_TIMELINE
    const auto kernels = xy::cuda::all_gemm_kernels();
    const auto it = std::find_if(kernels.begin(), kernels.end(), [&](GemmKernel k) {
      return std::strcmp(xy::cuda::gemm_kernel_name(k), timeline) == 0;
    });
    // The kernels with a timeline instrument: the stream-K and the swapped ones.
    auto instrumented = [](std::string_view n) { return n.starts_with("wgmma_sk_") || n.starts_with("wgmma_swap_"); };
    if (it == kernels.end() || !instrumented(timeline)) {
      std::string names;
      for (GemmKernel k : kernels) {
        const char* n = xy::cuda::gemm_kernel_name(k);
        if (instrumented(n)) names += xy::cat(names.empty() ? "" : ", ", n);
      }
      std::fprintf(stderr, "gemm_bench: --timeline: no stream-K or swapped kernel named '%s' (%s)\n", timeline,
                   names.c_str());
      return 2;
    }
    cudaDeviceProp prop{};
    XY_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    run_timeline(*it, ms, stream, prop.multiProcessorCount);
    XY_CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
#else
    std::fprintf(stderr, "gemm_bench: --timeline %s needs a build with XY_GEMM_TIMELINE (CMake "
                 "-DXY_GEMM_TIMELINE=ON, or -DXY_GEMM_TIMELINE=1 on nvcc's line)\n", timeline);
    return 2;
#endif
  }
  for (int m : only_ms.empty() ? std::vector<int>(std::begin(kChainMs), std::end(kChainMs)) : std::vector<int>{}) {
    if (std::count(ms.begin(), ms.end(), m) != 1) {
      std::fprintf(stderr, "gemm_bench: chain M %d is not in the sweep's list\n", m);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  XY_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double copy_tbps = copy_bandwidth_tbps(stream, prop.multiProcessorCount);
  std::printf("device: %s, %d SMs, L2 %d MB; copy bandwidth (read+write) %.2f TB/s\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_tbps);
  std::printf("timing: CUDA graph replays, median of %d; operands rotate over >= %zu MB of buffer "
              "sets (cold L2)\n\n", kReps, kRotateBytes >> 20);

  FILE* csv = std::fopen(csv_path.c_str(), "w");
  if (csv == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", csv_path.c_str());
    return 2;
  }
  std::fprintf(csv, "model,layer,m,n,k,kernel,us,tbps,frac_copy_bw,tflops,cublas_us,speedup_vs_cublas,max_scaled_diff_vs_cublas\n");
  xy::bench::CublasLtGemm cublas;
  std::map<std::pair<int, int>, SweepBest> best_of;  // (shape index, M) -> what the sweep found
  run_sweep(ms, stream, copy_tbps, csv, cublas, best_of);
  if (only_ms.empty()) run_gemv_ablation(stream, copy_tbps, csv, cublas);
  std::fclose(csv);
  if (only_ms.empty()) run_chain(stream, copy_tbps, cublas, best_of);
  XY_CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
