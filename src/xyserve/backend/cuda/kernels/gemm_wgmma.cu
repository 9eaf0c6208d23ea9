// Large-M GEMM for Hopper: y[M, N] = x[M, K] · W[N, K]ᵀ with TMA and wgmma (sm_90a).
//
// A persistent grid (one CTA per SM) walks the output tiles; a CTA computes a 128 x kBN tile of y
// (kBN = 256 or 128; 128 doubles the CTAs for mid M). Warpgroup 0 is the producer: one of its
// threads issues TMA loads of x and W blocks (64 columns of K each, 128-byte swizzle) into a
// 4-stage shared-memory ring; each stage completes on a "full" mbarrier by transaction count.
// Warpgroups 1 and 2 are consumers: each owns 64 rows of the tile and runs wgmma m64n256k16
// (m64n128k16 for kBN = 128) with both operands K-major in shared memory, then releases the stage
// on its "empty" mbarrier so the producer can refill it. The producer gives its registers to the
// consumers (setmaxnreg), which hold 128 fp32 accumulators per thread.
//
// Clusters (kCluster = 2): the two CTAs of a cluster run the tiles of neighbouring m-tiles with the
// same W tile, and each loads half of W's box for both by TMA multicast, so W is read from L2 once
// per cluster: per K block a CTA reads 16 KB of x and 16 KB of W instead of 16 + 32 KB. Why: at
// large M the tensor pipe is the limit only if L2 keeps up; cuBLASLt's kernel there
// (nvjet_sm90_tst_256x128_64x4_1x2, ncu on qkv M = 4096: tensor pipe 91% of cycles) is this tile in
// clusters of 2 along M, and the unclustered kernel reached 700-750 TFLOP/s against its 800+. A
// stage of either CTA then holds rows the other wrote: it is refilled only when all four consumers
// released it (each consumer's leader arrives on the stage's "empty" barrier in both CTAs), and a
// producer waits for the last round of arrivals before its CTA exits. With an odd count of m-tiles
// the last cluster's rank 1 has no tile: it loads the last real tile's x (a box wholly outside the
// tensor faults), helps with W and stores nothing.
//
// Virtual padding: x's and y's tensor maps are exactly [M, K] and [M, N], so TMA zero-fills the
// rows of the last tile past M on loads and drops them on stores.
//
// Epilogue: each consumer converts its accumulators to bf16 in 64 x 64 slabs in shared memory and
// stores each by TMA (store_tile_by_slabs, gemm_wgmma_consumer.cuh), then goes on to its next
// tile while the stores drain. The fragments' own 4-byte stores (8 rows x 16 bytes per warp
// instruction, 128 of them per thread and tile) were the first version.
//
// Split-K: when M is small there are too few output tiles to fill the SMs (Llama-3-8B qkv at
// M = 128: 48 tiles of 128x128 for 132 SMs), so each tile's K range is cut into `splits`
// parts run by different CTAs (the host picks the count from a wave model, wgmma_splits()).
// Parts are summed in an fp32 workspace by vector reductions at L2; the last CTA to finish a
// tile, known from a per-tile counter, stores it and zeroes the workspace behind it, as the
// stream-K kernel does (gemm_stream.cu).
//
// Tile 128x256 and 4 stages are the usual Hopper choice (192 KB of the 227 KB of shared memory,
// 1 CTA per SM); 128x128 takes 6 stages (192 KB). Neither has been tuned on this code yet.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_consumer.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_ptx.cuh"
#include "xyserve/backend/cuda/tensor_maps.h"

namespace xy::cuda::gemm_detail {
namespace {

template <int kBN_, int kCluster_>
struct WgmmaTraits {
  static_assert(kBN_ == 128 || kBN_ == 256, "wgmma wrappers exist for n = 128 and 256");
  static constexpr int kBM = 128;
  static constexpr int kBN = kBN_;
  static constexpr int kCluster = kCluster_;  // CTAs along M sharing W's box
  static constexpr int kBK = 64;  // 128 bytes: one swizzle row
  // 128x256: 4 x 48 KB; 128x128 streams W with few CTAs at mid M, so it keeps more in flight.
  static constexpr int kStages = kBN == 256 ? 4 : 6;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kATileBytes = kBM * kBK * 2;
  static constexpr int kBTileBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kATileBytes + kBTileBytes;
  static constexpr int kWSliceRows = kBN / kCluster;  // rows of W's box each CTA of a cluster loads
  // Output staging: per consumer two [64 rows][64 columns] bf16 slabs (store_tile_by_slabs).
  static constexpr int kOutBytes = kConsumers * ptx::kOutStagingBytes;
  // +1024: dynamic shared memory is only 16-byte aligned; swizzled tiles need 1024.
  static constexpr int kSmemBytes = kStages * kStageBytes + kOutBytes + 1024;
  // Rasterization: CTAs run in groups of kGroupM row tiles, column tiles varying fastest, so
  // one wave of CTAs reads a band of x and of W that fits in L2 together.
  static constexpr int kGroupM = 8;
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static_assert(kConsumers * 64 == kBM, "each consumer warpgroup owns 64 rows");
  static_assert(kCluster == 1 || kCluster == 2, "clusters of 1 or 2 CTAs");
  static_assert(kGroupM % kCluster == 0, "a raster group holds whole clusters");
  static_assert(kWSliceRows % 8 == 0, "W slices of whole swizzle atoms");
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= 65536,
                "register file");
  static_assert(kSmemBytes <= 227 * 1024 - 1024, "shared memory per block (and the static barriers)");
  // Rows of clusters over M: each takes kCluster neighbouring m-tiles (the last may hold fewer).
  static __host__ __device__ int m_groups(int m) { return ((m + kBM - 1) / kBM + kCluster - 1) / kCluster; }
};

template <int kBN, int kCluster>
__global__ void __launch_bounds__(WgmmaTraits<kBN, kCluster>::kThreads, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w,
                      const __grid_constant__ CUtensorMap map_y, int m, int n, int k, int splits,
                      uint32_t* __restrict__ counters,
                      float* __restrict__ partials) {
  using T = WgmmaTraits<kBN, kCluster>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[T::kStages];
  __shared__ __align__(8) uint64_t empty_bar[T::kStages];
  __shared__ int s_is_last;
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* a_tiles = smem;                              // [stage][128 rows][64] of x
  unsigned char* b_tiles = smem + T::kStages * T::kATileBytes;  // [stage][kBN rows][64] of W
  unsigned char* out_slabs = smem + T::kStages * T::kStageBytes;  // [consumer][2][64 rows][64] bf16

  const int rank = kCluster > 1 ? static_cast<int>(ptx::cluster_ctarank()) : 0;
  const int cluster = kCluster > 1 ? static_cast<int>(ptx::cluster_id_x()) : static_cast<int>(blockIdx.x);
  const int clusters = kCluster > 1 ? static_cast<int>(ptx::num_clusters_x()) : static_cast<int>(gridDim.x);
  const int num_m_tiles = (m + T::kBM - 1) / T::kBM;
  const int num_m_groups = T::m_groups(m);
  const int num_n_tiles = n / T::kBN;
  const int num_units = num_m_groups * num_n_tiles;
  const int num_work = num_units * splits;
  const int total_k_blocks = k / T::kBK;
  // A unit of work: one part (split) of the output tiles of one cluster (one tile per CTA). The
  // grid is persistent: cluster c runs work c, c + clusters, ..., so the producer fetches the
  // next unit's first blocks while the consumers run the current unit's epilogue.
  struct Work {
    int m_tile, n_tile, kb_begin, k_iters;
    bool live;  // this CTA's m-tile exists (rank 1 of the last cluster may have none)
  };
  auto decode = [&](int work) {
    Work w;
    const int unit = work % num_units;
    const int split = work / num_units;
    // Grouped rasterization: kGroupM row tiles at a time, column tiles varying fastest.
    constexpr int kGroupUnits = T::kGroupM / kCluster;
    const int group_size = kGroupUnits * num_n_tiles;
    const int group = unit / group_size;
    const int first_m = group * kGroupUnits;
    const int group_m = min(num_m_groups - first_m, kGroupUnits);
    const int in_group = unit - group * group_size;
    w.m_tile = (first_m + in_group % group_m) * kCluster + rank;
    w.n_tile = in_group / group_m;
    w.live = w.m_tile < num_m_tiles;
    w.kb_begin = static_cast<int>(int64_t{total_k_blocks} * split / splits);
    w.k_iters = static_cast<int>(int64_t{total_k_blocks} * (split + 1) / splits) - w.kb_begin;
    return w;
  };

  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    ptx::prefetch_tensor_map(&map_x);
    ptx::prefetch_tensor_map(&map_w);
    ptx::prefetch_tensor_map(&map_y);
    ptx::init_ring_barriers<T::kStages>(full_bar, empty_bar, T::kConsumers * kCluster);
    ptx::fence_mbarrier_init();
  }
  // Barriers initialised in every CTA before any CTA multicasts into or arrives on another's.
  if constexpr (kCluster > 1) {
    ptx::cluster_sync();
  } else {
    __syncthreads();
  }

  // Both roles count K blocks over all of this CTA's units (g): stage g % kStages, phase
  // g / kStages, so the ring runs on across units.
  if (warpgroup == 0) {
    // Producer: stage s is refilled once every consumer it serves released its previous contents.
    ptx::setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x == 0) {
      uint32_t g = 0;
      for (int work = cluster; work < num_work; work += clusters) {
        const Work w = decode(work);
        const int x_row = (w.live ? w.m_tile : num_m_tiles - 1) * T::kBM;
        for (int it = 0; it < w.k_iters; ++it, ++g) {
          const int s = g % T::kStages;
          if (g >= T::kStages) ptx::mbarrier_wait(&empty_bar[s], ((g / T::kStages) - 1) & 1);
          ptx::mbarrier_arrive_expect_tx(&full_bar[s], T::kStageBytes);
          const int k0 = (w.kb_begin + it) * T::kBK;
          ptx::tma_load_2d(a_tiles + s * T::kATileBytes, &map_x, &full_bar[s], k0, x_row);
          if constexpr (kCluster > 1) {
            ptx::tma_load_2d_multicast(b_tiles + s * T::kBTileBytes + rank * T::kWSliceRows * 128, &map_w,
                                       &full_bar[s], k0, w.n_tile * T::kBN + rank * T::kWSliceRows,
                                       uint16_t((1u << kCluster) - 1));
          } else {
            ptx::tma_load_2d(b_tiles + s * T::kBTileBytes, &map_w, &full_bar[s], k0, w.n_tile * T::kBN);
          }
        }
      }
      if constexpr (kCluster > 1) ptx::wait_last_releases<T::kStages>(empty_bar, g);
    }
  } else {
    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    const int consumer = warpgroup - 1;
    const bool leader = threadIdx.x % 128 == 0;
    const ptx::RingRelease<kCluster> release(empty_bar);  // both CTAs' producers write every stage
    uint32_t g = 0;
    uint32_t slabs_stored = 0;
    for (int work = cluster; work < num_work; work += clusters) {
      const Work w = decode(work);
      float d[kBN / 2];  // acc[64 rows of this warpgroup][kBN columns], wgmma fragment order
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) d[i] = 0.f;
      ptx::wgmma_ring_k_blocks<kBN, T::kBK, T::kStages, T::kATileBytes, T::kBTileBytes>(
          d, a_tiles, b_tiles, consumer * 64, 0, full_bar, release, g, w.k_iters, leader);
      ptx::wgmma_wait<0>();
      if (w.k_iters > 0 && leader) release(int((g - 1) % T::kStages));
      if (!w.live) continue;  // CTA-uniform: both consumers skip the fix-up's barriers together

      bool store = true;
      if (splits > 1) {
        const int tile = w.m_tile * num_n_tiles + w.n_tile;
        // Partial tiles in fragment order: thread t's d[4j .. 4j+3] are 16 contiguous bytes.
        const int ct = threadIdx.x - 128;  // 0..255 over both consumers
        float* part = partials + int64_t{tile} * T::kBM * T::kBN + consumer * 64 * T::kBN +
                      (threadIdx.x % 128) * 4;
        // A warp whose 16 rows all lie past M holds zeros: it adds nothing, so its part of the
        // workspace stays zero (at M = 64, half of the reduction traffic).
        const bool rows_live =
            w.m_tile * T::kBM + consumer * 64 + ((threadIdx.x / 32) & 3) * 16 < m;
        if (rows_live) {
#pragma unroll
          for (int j = 0; j < T::kBN / 8; ++j) {
            ptx::red_add_v4(part + j * 512, d[4 * j], d[4 * j + 1], d[4 * j + 2], d[4 * j + 3]);
          }
        }
        __threadfence();  // release: the reductions are ordered before the counter update
        ptx::named_barrier_sync(1, 256);
        if (ct == 0) {
          s_is_last = atomicAdd(&counters[tile], 1u) == static_cast<uint32_t>(splits - 1);
        }
        ptx::named_barrier_sync(1, 256);
        store = s_is_last;
        if (store && rows_live) {
          __threadfence();  // acquire: every other part's reductions are visible
#pragma unroll
          for (int j = 0; j < T::kBN / 8; ++j) {
            float4* p = reinterpret_cast<float4*>(part + j * 512);
            const float4 v = __ldcg(p);
            __stcg(p, make_float4(0.f, 0.f, 0.f, 0.f));
            d[4 * j] = v.x;
            d[4 * j + 1] = v.y;
            d[4 * j + 2] = v.z;
            d[4 * j + 3] = v.w;
          }
        }
        if (store && ct == 0) counters[tile] = 0;  // the next launch starts from zero
      }
      // Epilogue: bf16 through shared memory and TMA stores, which drop the rows past M; a consumer
      // whose rows all lie past M has nothing to store.
      if (!store || w.m_tile * T::kBM + consumer * 64 >= m) continue;
      ptx::store_tile_by_slabs<kBN>(d, out_slabs + consumer * ptx::kOutStagingBytes, slabs_stored, &map_y,
                                    w.n_tile * T::kBN, w.m_tile * T::kBM + consumer * 64, 2 + consumer, leader);
    }
    if (leader) ptx::bulk_wait_group<0>();  // shared memory must outlive the stores
  }
}

size_t counters_bytes(int num_tiles) { return (size_t(num_tiles) * 4 + 255) / 256 * 256; }

template <int kBN, int kCluster>
cudaError_t launch(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m,
                   int n, int k, void* workspace, cudaStream_t stream) {
  using T = WgmmaTraits<kBN, kCluster>;
  auto* kernel = wgmma_gemm_kernel<kBN, kCluster>;
  CUtensorMap map_x, map_w, map_y;
  if (!make_map(&map_x, x, m, k, T::kBM) || !make_map(&map_w, w, n, k, T::kWSliceRows) ||
      !make_out_map(&map_y, y, m, n, ptx::kOutBoxCols<kBN>)) {
    return cudaErrorInvalidValue;
  }
  static std::atomic<uint64_t> smem_allowed{0};
  if (const cudaError_t err = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), T::kSmemBytes, smem_allowed);
      err != cudaSuccess) {
    return err;
  }
  const int num_tiles = ((m + T::kBM - 1) / T::kBM) * (n / T::kBN);
  const int splits = wgmma_splits(kBN, kCluster, m, n, k);
  auto* counters = static_cast<uint32_t*>(workspace);
  auto* partials = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) +
                                            counters_bytes(num_tiles));
  if (splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const int64_t units = int64_t{T::m_groups(m)} * (n / T::kBN) * splits;
  // 1 CTA per SM (shared memory); clusters as many as can be resident.
  static std::atomic<int> resident[64] = {};
  const int64_t slots = kCluster > 1 ? resident_clusters(kernel, kCluster, T::kThreads, T::kSmemBytes, resident)
                                     : num_sms();
  const int grid = static_cast<int>(std::min(units, slots)) * kCluster;
  return launch_kernel_in_clusters(kernel, dim3(static_cast<unsigned>(grid)), dim3(T::kThreads), T::kSmemBytes,
                                   stream, false, static_cast<unsigned>(kCluster), map_x, map_w, map_y, m, n, k, splits,
                                   counters, partials);
}

}  // namespace

bool make_map(CUtensorMap* map, const __nv_bfloat16* base, int rows, int cols, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  return encode_bf16_tensor_map(map, base, 2, dims, strides, box);
}

bool make_out_map(CUtensorMap* map, const __nv_bfloat16* base, int rows, int cols, int box_cols, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  return encode_bf16_tensor_map(map, base, 2, dims, strides, box,
                                box_cols == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE);
}

int num_sms() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms > 0 ? sms : 1;
}

int wgmma_splits(int bn, int cluster, int m, int n, int k) {
  // Time ~ waves x (K blocks per CTA + kFixedBlocks): a CTA pays about 4 blocks' worth of
  // pipeline fill and epilogue. Each part keeps >= 8 K blocks so the fill stays amortized. A
  // cluster's m-tiles count whole (one may have no rows).
  constexpr double kFixedBlocks = 4;
  const int tiles = ((m + 128 * cluster - 1) / (128 * cluster)) * cluster * (n / bn);
  const int k_blocks = k / 64;
  const int sms = num_sms();
  int best = 1;
  double best_cost = 1e300;
  for (int s = 1; s <= 16 && k_blocks / s >= 8; ++s) {
    const double waves = (int64_t{tiles} * s + sms - 1) / sms;
    const double cost = waves * (double(k_blocks) / s + kFixedBlocks);
    if (cost < best_cost * 0.97) {  // a split must win clearly: it costs a reduction
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

size_t wgmma_workspace_bytes(int bn, int cluster, int m, int n, int k) {
  if (wgmma_splits(bn, cluster, m, n, k) == 1) return 0;
  const int tiles = ((m + 127) / 128) * (n / bn);
  return counters_bytes(tiles) + size_t(tiles) * 128 * bn * sizeof(float);
}

cudaError_t launch_wgmma(int bn, int cluster, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                         int m, int n, int k, void* workspace, cudaStream_t stream) {
  if (cluster == 1 && bn == 128) return launch<128, 1>(x, w, y, m, n, k, workspace, stream);
  if (cluster == 1 && bn == 256) return launch<256, 1>(x, w, y, m, n, k, workspace, stream);
  if (cluster == 2 && bn == 128) return launch<128, 2>(x, w, y, m, n, k, workspace, stream);
  if (cluster == 2 && bn == 256) return launch<256, 2>(x, w, y, m, n, k, workspace, stream);
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
