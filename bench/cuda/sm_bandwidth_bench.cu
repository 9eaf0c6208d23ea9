// How much HBM bandwidth one SM can draw, against how many SMs stream at once: the question behind
// the hybrid attention launch (hybrid_split.h), whose decode SMs streamed ~29 GB/s each however few
// they were. Each of N CTAs (one per SM: their shared memory allows no second) reads its own
// 32 MB of a cold 4+ GB buffer, either by bulk copies into a ring of shared-memory stages (the
// TMA engine: one thread issues, each stage completes on an mbarrier, kept `stages` deep) or by
// 16-byte loads from every thread into registers (`loads` per thread in flight). Prints GB/s per
// SM and TB/s in all, for N from 4 to all SMs.
//
// Run: build-gpu/bench/cuda/sm_bandwidth_bench (no arguments).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"

namespace {

constexpr int64_t kBytesPerCta = 32ll << 20;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__global__ void bulk_read(const uint8_t* src, int stages, int chunk) {
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ __align__(8) uint64_t full[32];
  if (threadIdx.x != 0) return;
  for (int s = 0; s < stages; ++s)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(&full[s])));
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  const uint8_t* base = src + int64_t(blockIdx.x) * kBytesPerCta;
  const int64_t n = kBytesPerCta / chunk;
  for (int64_t i = 0; i < n; ++i) {
    const int s = int(i % stages);
    if (i >= stages) {  // the stage's previous copy (chunk i - stages) has landed
      const uint32_t parity = uint32_t((i / stages - 1) & 1);
      asm volatile(
          "{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}\n" ::"r"(
              smem_u32(&full[s])),
          "r"(parity)
          : "memory");
    }
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(&full[s])), "r"(chunk)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            smem_u32(ring + int64_t(s) * chunk)),
        "l"(base + i * chunk), "r"(chunk), "r"(smem_u32(&full[s]))
        : "memory");
  }
  for (int64_t i = n; i < n + stages; ++i) {  // drain
    const int s = int(i % stages);
    const uint32_t parity = uint32_t((i / stages - 1) & 1);
    asm volatile("{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}\n" ::"r"(
                     smem_u32(&full[s])),
                 "r"(parity)
                 : "memory");
  }
}

template <int kLoads>
__global__ void ldg_read(const uint4* src, uint32_t* sink) {
  extern __shared__ uint8_t unused[];  // only to keep one CTA per SM
  const uint4* base = src + int64_t(blockIdx.x) * (kBytesPerCta / 16);
  const int64_t n = kBytesPerCta / 16;
  uint32_t acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += int64_t(blockDim.x) * kLoads) {
    uint4 v[kLoads];
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int64_t k = i + int64_t(j) * blockDim.x;
      v[j] = k < n ? __ldcs(base + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kLoads; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;  // keeps the loads; never true for the zero buffer
  (void)unused;
}

}  // namespace

int main() {
  int sms = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const size_t bytes = size_t(sms) * kBytesPerCta;
  uint8_t* buf = nullptr;
  uint32_t* sink = nullptr;
  XY_CUDA_CHECK(cudaMalloc(&buf, bytes));
  XY_CUDA_CHECK(cudaMalloc(&sink, sizeof(uint32_t) * sms));
  XY_CUDA_CHECK(cudaMemset(buf, 0, bytes));
  constexpr int kSmem = 200 * 1024;  // one CTA per SM
  XY_CUDA_CHECK(cudaFuncSetAttribute(bulk_read, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  XY_CUDA_CHECK(cudaFuncSetAttribute(ldg_read<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  XY_CUDA_CHECK(cudaFuncSetAttribute(ldg_read<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  cudaEvent_t e0, e1;
  XY_CUDA_CHECK(cudaEventCreate(&e0));
  XY_CUDA_CHECK(cudaEventCreate(&e1));
  std::printf("sm_bandwidth_bench: %d SMs, %lld MB per CTA, one CTA per SM\n", sms, kBytesPerCta >> 20);
  std::printf("%-28s %5s %10s %10s\n", "mode", "SMs", "GB/s/SM", "TB/s");
  struct Mode {
    const char* name;
    int kind;  // 0 bulk, 1 ldg x8 (512 threads), 2 ldg x16 (512 threads)
    int stages, chunk;
  };
  const std::vector<Mode> modes{{"bulk 4 x 16 KB", 0, 4, 16384},  {"bulk 8 x 16 KB", 0, 8, 16384},
                                {"bulk 12 x 16 KB", 0, 12, 16384}, {"bulk 24 x 8 KB", 0, 24, 8192},
                                {"ldg 512 thr x 8 x 16 B", 1, 0, 0}, {"ldg 512 thr x 16 x 16 B", 2, 0, 0}};
  for (const Mode& m : modes) {
    for (int n : {4, 8, 16, 33, 66, 99, sms}) {
      auto launch = [&] {
        if (m.kind == 0) bulk_read<<<n, 32, m.stages * m.chunk>>>(buf, m.stages, m.chunk);
        else if (m.kind == 1) ldg_read<8><<<n, 512, kSmem>>>(reinterpret_cast<const uint4*>(buf), sink);
        else ldg_read<16><<<n, 512, kSmem>>>(reinterpret_cast<const uint4*>(buf), sink);
      };
      launch();  // warm-up
      XY_CUDA_CHECK(cudaEventRecord(e0));
      constexpr int kIters = 3;
      for (int i = 0; i < kIters; ++i) launch();
      XY_CUDA_CHECK(cudaEventRecord(e1));
      XY_CUDA_CHECK(cudaEventSynchronize(e1));
      XY_CUDA_CHECK_LAUNCH();
      float ms = 0;
      XY_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      const double sec = ms / 1e3 / kIters;
      const double total = double(n) * kBytesPerCta / sec;
      std::printf("%-28s %5d %10.1f %10.2f\n", m.name, n, total / n / 1e9, total / 1e12);
    }
  }
  return 0;
}
