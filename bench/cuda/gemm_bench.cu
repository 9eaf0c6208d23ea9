// SmoothGEMM benchmark: every kernel of the family against cuBLASLt (its heuristic's first
// algorithm, bf16 in/out, fp32 compute), measured in the same run, on the linear layers of
// Llama-3-8B and Qwen3-8B, over M from 1 to 8192. Also measures the device's copy bandwidth.
//
// Timing: each measurement is a CUDA graph of `iters` launches, replayed kReps times after a
// warm-up replay; the median replay over `iters` is reported. Weights and activations rotate
// among enough buffer sets (>= 3x the 60 MB L2 together) that no launch finds its operands in
// L2 left by the previous one: this is "cold weights", as in serving, where 32 layers of
// weights pass through L2 between two uses of one.
//
// Output: a table on stdout (best kernel, cuBLAS, ratio, TB/s, TFLOP/s) and every measurement
// as CSV in the file named by --csv (default gemm_bench.csv).
// Usage: gemm_bench [--csv FILE] [--quick]
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/cuda/gemm_util.cuh"
#include "xyserve/backend/cuda/gemm.h"

namespace {

using xy::bench::DeviceBuffer;
using xy::cuda::GemmKernel;

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
constexpr int kMs[] = {1,   2,   4,   8,   16,  32,   33,   64,   100,  128,  192,
                       256, 257, 384, 512, 777, 1024, 2048, 3000, 4096, 8192};
constexpr int kMaxM = 8192;
constexpr int kReps = 7;
constexpr size_t kRotateBytes = size_t{200} << 20;  // > 3x the 60 MB L2

// Stream-K kernels re-read W once per tile of tokens; past this M they are not contenders.
constexpr int kStreamMaxM = 512;

bool is_stream(GemmKernel kernel) {
  return std::strncmp(xy::cuda::gemm_kernel_name(kernel), "stream", 6) == 0;
}

struct Buffers {
  int sets = 0;
  std::vector<DeviceBuffer> x, w, y;
};

Buffers make_buffers(const Shape& s, uint64_t seed) {
  Buffers b;
  const size_t w_bytes = size_t{2} * s.n * s.k;
  b.sets = static_cast<int>(std::max<size_t>(2, (kRotateBytes + w_bytes - 1) / w_bytes));
  for (int i = 0; i < b.sets; ++i) {
    b.x.emplace_back(size_t{2} * kMaxM * s.k);
    b.w.emplace_back(w_bytes);
    b.y.emplace_back(size_t{2} * kMaxM * s.n);
    xy::bench::fill_uniform(b.x.back().as<__nv_bfloat16>(), size_t{1} * kMaxM * s.k, seed++);
    xy::bench::fill_uniform(b.w.back().as<__nv_bfloat16>(), size_t{1} * s.n * s.k, seed++, 0.05f);
  }
  return b;
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
  // About 3 ms per replay, between 8 and 400 launches.
  const int iters = std::clamp(static_cast<int>(3.0 / std::max(probe_ms, 1e-3f)), 8, 400);

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < iters; ++i) launch(i % sets);
  XY_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up replay
  std::vector<double> per_launch;
  for (int r = 0; r < kReps; ++r) {
    XY_CUDA_CHECK(cudaEventRecord(start, stream));
    XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    XY_CUDA_CHECK(cudaEventRecord(stop, stream));
    XY_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    per_launch.push_back(1e3 * ms / iters);
  }
  XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
  XY_CUDA_CHECK(cudaGraphDestroy(graph));
  XY_CUDA_CHECK(cudaEventDestroy(start));
  XY_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(per_launch.begin(), per_launch.end());
  return per_launch[per_launch.size() / 2];
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

// max |a - b| / (|b| + 1) over m x n bf16 outputs.
double max_scaled_diff(const __nv_bfloat16* a, const __nv_bfloat16* b, int m, int n) {
  std::vector<uint16_t> ha(size_t{1} * m * n), hb(ha.size());
  XY_CUDA_CHECK(cudaMemcpy(ha.data(), a, ha.size() * 2, cudaMemcpyDeviceToHost));
  XY_CUDA_CHECK(cudaMemcpy(hb.data(), b, hb.size() * 2, cudaMemcpyDeviceToHost));
  double worst = 0;
  for (size_t i = 0; i < ha.size(); ++i) {
    const double va = xy::bench::bf16_bits_to_float(ha[i]), vb = xy::bench::bf16_bits_to_float(hb[i]);
    const double d = std::fabs(va - vb) / (std::fabs(vb) + 1.0);
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path = "gemm_bench.csv";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--csv") == 0 && i + 1 < argc) csv_path = argv[++i];
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
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
  std::printf("%-9s %-7s %5s | %-14s %9s %6s %5s %7s | %9s %6s | %7s\n", "model", "layer", "M",
              "best", "us", "TB/s", "%bw", "TFLOP/s", "cublas us", "TB/s", "speedup");

  xy::bench::CublasLtGemm cublas;
  uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    Buffers b = make_buffers(s, seed);
    seed += 1000;
    // One workspace per kernel, zeroed once: the stream-K kernels leave it zeroed.
    std::vector<DeviceBuffer> workspaces;
    for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
      size_t bytes = 256;
      for (int m : kMs) {
        if (is_stream(kernel) && m > kStreamMaxM) continue;  // never run there
        bytes = std::max(bytes, xy::cuda::gemm_workspace_bytes(kernel, m, s.n, s.k));
      }
      workspaces.emplace_back(bytes);
      XY_CUDA_CHECK(cudaMemset(workspaces.back().as<void>(), 0, bytes));
    }
    DeviceBuffer y_check(size_t{2} * kMaxM * s.n);
    for (int m : kMs) {
      if (quick && m != 1 && m != 64 && m != 777 && m != 4096) continue;
      const double bytes = 2.0 * (static_cast<double>(s.n) * s.k + static_cast<double>(m) * (s.k + s.n));
      const double flops = 2.0 * m * s.n * s.k;
      auto launch_cublas = [&](int set) {
        cublas.run(b.x[set].as<__nv_bfloat16>(), b.w[set].as<__nv_bfloat16>(), b.y[set].as<void>(),
                   m, s.n, s.k, CUDA_R_16BF, stream);
      };
      const double cublas_us = time_us(stream, b.sets, launch_cublas);
      launch_cublas(0);
      XY_CUDA_CHECK(cudaMemcpyAsync(y_check.as<void>(), b.y[0].as<void>(), size_t{2} * m * s.n,
                                    cudaMemcpyDeviceToDevice, stream));
      XY_CUDA_CHECK(cudaStreamSynchronize(stream));
      std::fprintf(csv, "%s,%s,%d,%d,%d,cublaslt,%.3f,%.4f,%.4f,%.2f,%.3f,1.000,0\n", s.model, s.layer, m, s.n,
                   s.k, cublas_us, bytes / cublas_us * 1e-6, bytes / cublas_us * 1e-6 / copy_tbps,
                   flops / cublas_us * 1e-6, cublas_us);

      const char* best_name = "-";
      double best_us = INFINITY;
      int ki = 0;
      for (GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
        DeviceBuffer& ws = workspaces[ki++];
        if (is_stream(kernel) && m > kStreamMaxM) continue;
        if (*xy::cuda::gemm_unsupported_reason(kernel, m, s.n, s.k) != '\0') continue;
        auto launch = [&](int set) {
          xy::cuda::GemmArgs args{b.x[set].as<__nv_bfloat16>(), b.w[set].as<__nv_bfloat16>(),
                                  b.y[set].as<__nv_bfloat16>(), m, s.n, s.k, ws.as<void>(), ws.bytes()};
          xy::cuda::gemm_launch(kernel, args, stream);
        };
        const double us = time_us(stream, b.sets, launch);
        xy::bench::poison(b.y[0].as<void>(), size_t{1} * m * s.n);
        launch(0);
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        const double diff = max_scaled_diff(b.y[0].as<__nv_bfloat16>(), y_check.as<__nv_bfloat16>(), m, s.n);
        const char* name = xy::cuda::gemm_kernel_name(kernel);
        std::fprintf(csv, "%s,%s,%d,%d,%d,%s,%.3f,%.4f,%.4f,%.2f,%.3f,%.3f,%.2e\n", s.model, s.layer, m, s.n,
                     s.k, name, us, bytes / us * 1e-6, bytes / us * 1e-6 / copy_tbps, flops / us * 1e-6,
                     cublas_us, cublas_us / us, diff);
        // Two bf16-rounded results of the same sum: each within 2^-9 of the truth.
        if (!(diff <= 2e-2)) {
          std::printf("MISMATCH %s %s M=%d %s: max |ours - cublas|/(|cublas|+1) = %.3e\n", s.model,
                      s.layer, m, name, diff);
          continue;
        }
        if (us < best_us) {
          best_us = us;
          best_name = name;
        }
      }
      std::printf("%-9s %-7s %5d | %-14s %9.2f %6.2f %4.0f%% %7.1f | %9.2f %6.2f | %6.2fx\n", s.model,
                  s.layer, m, best_name, best_us, bytes / best_us * 1e-6,
                  100 * bytes / best_us * 1e-6 / copy_tbps, flops / best_us * 1e-6, cublas_us,
                  bytes / cublas_us * 1e-6, cublas_us / best_us);
      std::fflush(stdout);
    }
    std::fflush(csv);
  }
  std::fclose(csv);
  XY_CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
