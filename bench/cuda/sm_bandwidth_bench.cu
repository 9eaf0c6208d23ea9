// How much HBM bandwidth one SM can draw, against how many SMs stream at once: the question behind
// the SM-split hybrid attention launch (tried 2026-11-25, commit 86fb1aa), whose decode SMs
// streamed ~29 GB/s each however few they were. Each of N CTAs (one per SM: their shared memory allows no second) reads its own
// 32 MB of a cold 4+ GB buffer, either by bulk copies into a ring of shared-memory stages (the
// TMA engine: one thread issues, each stage completes on an mbarrier, kept `stages` deep) or by
// 16-byte loads from every thread into registers (`loads` per thread in flight), or by TMA boxes of a
// paged KV cache as the attention kernels read it ([slots][8 KV heads][128], one head's rows: boxes
// of 64 columns x `rows` slots, issued by `lanes` lanes at once, a stage = those boxes). Prints GB/s
// per SM and TB/s in all, for N from 4 to all SMs.
//
// Run: build-gpu/bench/cuda/sm_bandwidth_bench (no arguments).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/tensor_maps.h"

namespace {

constexpr int64_t kBytesPerCta = 32ll << 20;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// Waits for the copy of ring position i (stage i % stages, its (i / stages)-th use) to have landed,
// given that position i + stages is about to reuse the stage (or the ring drains).
__device__ __forceinline__ void wait_landed(const uint64_t* full, int64_t i, int stages) {
  const int s = int(i % stages);
  const uint32_t parity = uint32_t((i / stages) & 1);
  asm volatile("{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}\n" ::"r"(
                   smem_u32(&full[s])),
               "r"(parity)
               : "memory");
}

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
    if (i >= stages) wait_landed(full, i - stages, stages);  // the stage's previous copy
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(&full[s])), "r"(chunk)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            smem_u32(ring + int64_t(s) * chunk)),
        "l"(base + i * chunk), "r"(chunk), "r"(smem_u32(&full[s]))
        : "memory");
  }
  for (int64_t i = n > stages ? n - stages : 0; i < n; ++i) wait_landed(full, i, stages);  // drain
}

// CTA b reads KV head b % 8 of its own 32 MB region's slots (a region holds kBytesPerCta / 2 KB
// slots of all 8 heads: 4 MB of one head), box by box: per stage, lanes 0..lanes-1 each load one box
// of [64 columns][1 head][rows slots] (both 64-column panels of a slot range alternate).
__global__ void kv_box_read(const __grid_constant__ CUtensorMap map, int stages, int lanes, int rows) {
  extern __shared__ __align__(128) uint8_t kv_smem[];
  __shared__ __align__(8) uint64_t full[32];
  if (threadIdx.x >= 32) return;
  // 128-byte swizzled boxes land on 1024-byte boundaries.
  uint8_t* const ring = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(kv_smem) + 1023) & ~uintptr_t{1023});
  const int lane = int(threadIdx.x);
  const int box_bytes = 64 * 2 * rows;
  const int stage_bytes = box_bytes * lanes;
  if (lane == 0) {
    for (int s = 0; s < stages; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(&full[s])));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncwarp();
  const int head = int(blockIdx.x % 8);
  const int64_t first_slot = int64_t(blockIdx.x) * (kBytesPerCta / 2048);
  const int64_t boxes = (kBytesPerCta / 8) / box_bytes;  // one head's share of the region
  const int64_t n = boxes / lanes;
  for (int64_t i = 0; i < n; ++i) {
    const int s = int(i % stages);
    if (i >= stages) wait_landed(full, i - stages, stages);
    if (lane == 0)
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(&full[s])), "r"(stage_bytes)
                   : "memory");
    __syncwarp();
    if (lane < lanes) {
      const int64_t box = i * lanes + lane;
      const int panel = int(box % 2);
      const int slot = int(first_slot + (box / 2) * rows);
      asm volatile(
          "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
          "[%2];\n" ::"r"(smem_u32(ring + s * stage_bytes + lane * box_bytes)),
          "l"(reinterpret_cast<uint64_t>(&map)), "r"(smem_u32(&full[s])), "r"(panel * 64), "r"(head), "r"(slot)
          : "memory");
    }
  }
  for (int64_t i = n > stages ? n - stages : 0; i < n; ++i) wait_landed(full, i, stages);
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
    int kind;  // 0 bulk, 1 ldg x8 (512 threads), 2 ldg x16 (512 threads), 3 KV boxes
    int stages, chunk;
    int lanes = 0, rows = 0;  // KV boxes
  };
  const std::vector<Mode> modes{{"bulk 4 x 16 KB", 0, 4, 16384},  {"bulk 8 x 16 KB", 0, 8, 16384},
                                {"bulk 12 x 16 KB", 0, 12, 16384}, {"bulk 24 x 8 KB", 0, 24, 8192},
                                {"ldg 512 thr x 8 x 16 B", 1, 0, 0}, {"ldg 512 thr x 16 x 16 B", 2, 0, 0},
                                {"kv 2 KB boxes 16 lanes x 4", 3, 4, 0, 16, 16},
                                {"kv 2 KB boxes 16 lanes x 6", 3, 6, 0, 16, 16},
                                {"kv 2 KB boxes 32 lanes x 3", 3, 3, 0, 32, 16},
                                {"kv 8 KB boxes 4 lanes x 6", 3, 6, 0, 4, 64},
                                {"kv 16 KB boxes 2 lanes x 6", 3, 6, 0, 2, 128}};
  CUtensorMap maps[3];
  for (int i = 0; i < 3; ++i) {
    const int rows = 16 << (2 * i) > 128 ? 128 : 16 << (2 * i);
    if (!xy::cuda::encode_kv_tensor_map(&maps[i], buf, 8, 128, rows)) {
      std::fprintf(stderr, "sm_bandwidth_bench: no tensor map for KV boxes of %d rows\n", rows);
      return 1;
    }
  }
  XY_CUDA_CHECK(cudaFuncSetAttribute(kv_box_read, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  for (const Mode& m : modes) {
    for (int n : {4, 8, 16, 33, 66, 99, sms}) {
      auto launch = [&] {
        if (m.kind == 0) bulk_read<<<n, 32, m.stages * m.chunk>>>(buf, m.stages, m.chunk);
        else if (m.kind == 3)
          kv_box_read<<<n, 32, kSmem>>>(maps[m.rows == 16 ? 0 : m.rows == 64 ? 1 : 2], m.stages, m.lanes, m.rows);
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
      const double total = double(n) * kBytesPerCta / (m.kind == 3 ? 8 : 1) / sec;  // KV boxes: one head of 8
      std::printf("%-28s %5d %10.1f %10.2f\n", m.name, n, total / n / 1e9, total / 1e12);
    }
  }
  return 0;
}
