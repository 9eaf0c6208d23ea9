// Small- and mid-M GEMM for Hopper with the operands swapped and CTAs in clusters: yᵀ tiles = W · xᵀ
// by TMA and wgmma (sm_90a), W rows as wgmma's m (64 kMB per consumer warpgroup) and x rows as its
// n (kBX: any multiple of 8 up to 200), so a tile of M <= 64 tokens costs the tensor cores n = kBX,
// not m = 64 rows of mostly zeros, and a mid-M tile can be sized to fill one wave (below).
//
// Why: at M <= 128 the data-parallel kernel (gemm_wgmma_dp.cu) puts x in wgmma's m64 and spends one
// CTA per 64 or 128 W rows, so o and down (N = 4096) run on 64 of 132 SMs, and every CTA loads its
// own copy of x's box each K block (TMA time goes per box row: docs/PERFORMANCE.md, seventh
// session). cuBLASLt's choices there (gemm_bench --lt-algos, log 2026-11-25_h200_s7_cublaslt_algos_
// small_m.txt) are this kernel's three cluster modes (SwapCluster, gemm_kernels.cuh):
//  - kShareX: a cluster of kCluster CTAs takes kCluster neighbouring W tiles of one x tile, and x's
//    box is loaded once for all of them: the first ranks load a slice each of whole 8-row swizzle
//    atoms and multicast it to the cluster (fewer ranks when the box has fewer atoms than the
//    cluster has CTAs). (cuBLASLt, qkv: 64 x M tiles in clusters of 4.)
//  - kShareW: a cluster takes kCluster neighbouring x tiles of one W tile, each CTA loading a slice
//    of W's box for all. (cuBLASLt, o at M = 64-100: 64 x 32 tiles in clusters of 2 along M.)
//  - kSplitK: a cluster splits one tile's K blocks, and ranks 1.. add their fp32 accumulators into
//    rank 0's through distributed shared memory, which stores the tile: split-K with no workspace
//    and no second kernel, so o and down run on 2 x 64 CTAs. (cuBLASLt: split-K 2 for o, 3-4 for
//    down.)
//
// Roles: warpgroups 0.. (kBW / (64 kMB) of them rounded up, up to 4) are consumers, each kMB m64
// blocks of W rows (64 kMB rows; the last consumer's may be partly empty) x kBX x rows; one
// consumer of three blocks for a 192-row tile waits and releases a third as often as three of one,
// and ran 7% faster (qkv M = 257, tenth session); two of two blocks hold 256 x 136 (167 registers);
// one warp after them holds the producer, its first thread (TMA loads into a kStages ring of W and
// x blocks, 64 columns of K, 128-byte swizzle, completing on "full" mbarriers by transaction count).
// Persistent grid of min(groups, co-resident clusters) clusters; cluster c runs groups c, c +
// clusters, ...; a group is kCluster tiles (sharing modes) or one tile (kSplitK), x tiles varying
// fastest.
//
// Ring across the cluster (sharing modes): a stage of CTA r holds rows that other CTAs wrote, so
// it is refilled only when every consumer of the cluster has released it: each consumer's leader
// arrives on the stage's "empty" barrier of every CTA (count consumers x kCluster), and each
// producer waits on its own. Before exiting, the producer waits for the last round of arrivals on
// its barriers (none may land in a CTA that has left). A group's tile past the last W or x tile
// still loads its slice and a box of the last real tile (a box wholly outside the tensor faults)
// and stores nothing.
//
// Reduction (kSplitK): rank r > 0 writes its accumulators into slot r - 1 of rank 0's reduction
// buffer (st.shared::cluster, fragment order) and arrives on rank 0's "reduce full" barrier; rank
// 0 waits, adds, arrives on each rank's "reduce empty" barrier (not after its last group: the
// rank may have left) and stores. Rank r takes K blocks [r * blocks / kCluster, (r + 1) * ...).
//
// Virtual padding: the maps are exactly [N, K] and [M, K]; x's box stops at M rounded up to 8 rows
// when one tile holds all of M (x_box_rows, gemm_kernels.cuh), and the tile's rows past it keep
// stale shared memory, which reaches only columns of yᵀ (rows of y) past M, never stored; W rows
// past N are zero-filled. y is stored where row < M and column < N, as bf16 pairs along N after
// one shuffle (a thread's fragment holds two rows of y per column), straight to global memory or,
// for the mid-M tiles, into shared memory for TMA. N a multiple of 16, K of 64.
//
// Mid M (tenth session): with x's side any multiple of 8 up to 200 and W's 64 to 256 rows, one wave
// of tiles pads M least where the data-parallel tiles' 64 or 128 rows do not (M = 257, 777). Those
// tiles (kBX >= 72) store y through shared memory and TMA (store_tile_transposed_by_slabs): one
// tile per CTA leaves the epilogue exposed, and the 4-byte fragment stores cost qkv M = 777 5%.
// Their x slices (kShareX) may overrun kBX (two 104-row slices of a 200-row tile: T::kXRows), and
// a slice or W slice that starts past the tensor's last row is loaded from that row instead (its
// rows lie past M or N and reach nothing stored).
//
// Programmatic dependent launch: the producer loads the first kStages W blocks before
// griddepcontrol.wait (no kernel writes W), x only after; the consumers wait before writing y.
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

namespace xy::cuda::gemm_detail {
namespace {

constexpr int kMaxSmemBytes = 227 * 1024;  // per block, sm_90

// The ring instrument (CMake option XY_GEMM_TIMELINE, bench builds only; SwapBlockField in
// gemm_kernels.cuh): each stamp goes straight to global memory, as the stream-K kernel's do.
#ifndef XY_GEMM_TIMELINE
#define XY_GEMM_TIMELINE 0
#endif
#if XY_GEMM_TIMELINE
__device__ long long g_swap_timeline[kSwapTimelineCtas][kSwapTimelineBlocks][kSwapBlockFields];
#endif
__device__ __forceinline__ void swap_stamp(uint32_t block, int field) {
#if XY_GEMM_TIMELINE
  if (blockIdx.x < kSwapTimelineCtas && block < kSwapTimelineBlocks) {
    g_swap_timeline[blockIdx.x][block][field] = clock64();
    if (field == kSwapFullWait) {
      long long ns;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
      g_swap_timeline[blockIdx.x][block][kSwapFullWaitNs] = ns;
    }
  }
#else
  (void)block, (void)field;
#endif
}
// Consumer 0's leader stamps the K blocks of its CTA's first group.
struct ConsumerStamps {
  bool on;
  __device__ __forceinline__ void operator()(int it, int event) const {
    if (on) swap_stamp(static_cast<uint32_t>(it), kSwapFullWait + event);
  }
};

template <int kBW_, int kBX_, int kCluster_, SwapCluster kMode_, int kMB_>
struct SwapTraits {
  static constexpr int kBW = kBW_;  // W rows per tile: wgmma m, 64 kMB per consumer (the last: at most)
  static constexpr int kBX = kBX_;  // x rows per tile: wgmma n
  static constexpr int kCluster = kCluster_;
  static constexpr SwapCluster kMode = kMode_;
  static constexpr bool kShareX = kMode == SwapCluster::kShareX && kCluster > 1;
  static constexpr bool kShareW = kMode == SwapCluster::kShareW && kCluster > 1;
  static constexpr bool kSplitK = kMode == SwapCluster::kSplitK && kCluster > 1;
  static constexpr bool kShared = kShareX || kShareW;  // stages written by other CTAs' multicasts
  static constexpr int kBK = 64;  // 128 bytes: one swizzle row
  static constexpr int kMB = kMB_;  // m64 blocks (64 W rows each) per consumer
  // A decode tile's W side need not be whole m64 blocks (224 rows: Llama's gate_up on 128 CTAs):
  // the last consumer's block then reads rows past kBW, which the ring allocates (kWRows) but never
  // loads; their results belong to no column of this tile and are not stored.
  static constexpr int kConsumers = (kBW + 64 * kMB - 1) / (64 * kMB);
  static constexpr int kWRows = kConsumers * 64 * kMB;
  // The consumers are warpgroups 0.. and the producer one warp after them (one thread issues the
  // loads). Registers: the file is split among the SM's four sub-partitions, so three consumers
  // get 128 a thread whether the producer is a warp or a warpgroup, and setmaxnreg.inc cannot give
  // them more (ptxas sizes every region by the entry count): 100 accumulators (kBX = 200) fit,
  // 104 (kBX = 208, cuBLASLt's tile at qkv M = 777) do not.
  static constexpr int kThreads = 128 * kConsumers + 32;
  static constexpr int kProducerThread = 128 * kConsumers;
  static constexpr int kAcc = kBX / 2;  // fp32 accumulators per consumer thread
  // x's rows in shared memory: with kShareX the cluster's ranks load slices of whole swizzle atoms,
  // which may overrun kBX (200 rows in clusters of 2: two 104-row slices).
  static constexpr int kXRows = kShareX ? (kBX + 8 * kCluster - 1) / (8 * kCluster) * (8 * kCluster) : kBX;
  static constexpr int kWTileBytes = kWRows * kBK * 2;
  static constexpr int kXTileBytes = kXRows * kBK * 2;
  static constexpr int kStageBytes = kWTileBytes + kXTileBytes;
  // Rank 0's buffer for the other ranks' accumulators (kSplitK), every consumer thread's kAcc floats.
  static constexpr int kReduceBytes = kSplitK ? (kCluster - 1) * kConsumers * 128 * kAcc * 4 : 0;
  // The mid-M tiles (72 x rows and more) store y through shared memory and TMA
  // (store_tile_transposed_by_slabs): with one tile per CTA, their fragment stores were every CTA's
  // tail. The decode tiles (32, 64 x rows) keep the fragment stores. Two 8 KB staging buffers per
  // consumer where the ring keeps 4 stages beside them, else one.
  static constexpr bool kStagedOut = kBX >= 72;
  static constexpr int kSlabBytes = 64 * 64 * 2;
  // Beside the reduction buffer: +1024 to align to the swizzle atom, +1024 for the static barriers.
  static constexpr int kRingAndOutBytes = kMaxSmemBytes - 2048 - kReduceBytes;
  static constexpr int kOutSlabs =
      !kStagedOut ? 0 : (kRingAndOutBytes - 2 * kConsumers * kSlabBytes) / kStageBytes >= 4 ? 2 : 1;
  static constexpr int kOutBytes = kOutSlabs * kConsumers * kSlabBytes;
  // As many stages as fit, at most 16 for the K-split tiles and 8 for the others. The decode
  // tiles wait for data a third to three fifths of each K block with 8 stages (gemm_bench
  // --timeline); 16 made the K-split ones 4-17% faster with PDL, but the sharing tiles' plain
  // launches 15-40% slower (tenth session).
  static constexpr int kMaxStages = kSplitK ? 16 : 8;
  static constexpr int kStages = std::min(kMaxStages, (kRingAndOutBytes - kOutBytes) / kStageBytes);
  static constexpr int kSmemBytes = kStages * kStageBytes + kReduceBytes + kOutBytes + 1024;
  // Groups of x tiles (x tiles, or clusters of them with kShareW; the fastest-varying) and of W
  // tiles (clusters of them with kShareX): a group is what one cluster runs at a time.
  static __host__ __device__ int x_groups(int x_tiles) {
    return kShareW ? (x_tiles + kCluster - 1) / kCluster : x_tiles;
  }
  static __host__ __device__ int w_groups(int w_tiles) {
    return kShareX ? (w_tiles + kCluster - 1) / kCluster : w_tiles;
  }
  static_assert(kBW % 8 == 0 && kBW <= 256, "W: whole swizzle atoms, a TMA box of at most 256 rows");
  static_assert(kBW == kWRows || !kStagedOut, "the staged epilogue stores whole m64 blocks");
  static_assert(kMB == 1 || !kSplitK, "the split-K reduction moves one block per consumer");
  static_assert(kBX % 8 == 0 && kXRows <= 256 && kAcc % 4 == 0, "wgmma n: whole swizzle atoms, float4 reduction");
  static_assert(kCluster == 1 || kCluster == 2 || kCluster == 4, "cluster of 1, 2 or 4 CTAs");
  static_assert(kBW % (8 * kCluster) == 0, "W slices of whole swizzle atoms");
  static_assert(kStages >= 3, "pipeline depth");
  static_assert(kSmemBytes + 1024 <= kMaxSmemBytes, "shared memory per block");
};

template <int kBW, int kBX, int kCluster, SwapCluster kMode, int kMB>
__global__ void __launch_bounds__(SwapTraits<kBW, kBX, kCluster, kMode, kMB>::kThreads, 1)
    wgmma_swap_kernel(const __grid_constant__ CUtensorMap map_w, const __grid_constant__ CUtensorMap map_x,
                      const __grid_constant__ CUtensorMap map_y, __nv_bfloat16* __restrict__ y, int m, int n, int k,
                      int x_slice_rows, int x_slicers, int stage_tx_bytes) {
  using T = SwapTraits<kBW, kBX, kCluster, kMode, kMB>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[T::kStages];
  __shared__ __align__(8) uint64_t empty_bar[T::kStages];
  __shared__ __align__(8) uint64_t reduce_full_bar;   // rank 0 (kSplitK)
  __shared__ __align__(8) uint64_t reduce_empty_bar;  // ranks 1.. (kSplitK)
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* w_tiles = smem;                                // [stage][kBW rows][64] of W
  unsigned char* x_tiles = smem + T::kStages * T::kWTileBytes;  // [stage][kBX rows][64] of x
  float* reduce_buf = reinterpret_cast<float*>(x_tiles + T::kStages * T::kXTileBytes);
  unsigned char* out_slabs = x_tiles + T::kStages * T::kXTileBytes + T::kReduceBytes;  // [consumer][kOutSlabs][8 KB]

  const int rank = kCluster > 1 ? static_cast<int>(ptx::cluster_ctarank()) : 0;
  const int cluster = kCluster > 1 ? static_cast<int>(ptx::cluster_id_x()) : static_cast<int>(blockIdx.x);
  const int clusters = kCluster > 1 ? static_cast<int>(ptx::num_clusters_x()) : static_cast<int>(gridDim.x);
  const int x_tiles_m = (m + kBX - 1) / kBX;
  const int w_tiles_n = (n + kBW - 1) / kBW;
  const int x_groups = T::x_groups(x_tiles_m);
  const int groups = x_groups * T::w_groups(w_tiles_n);
  const int k_blocks = k / T::kBK;
  // This CTA's K blocks of every tile.
  const int kb_begin = T::kSplitK ? rank * k_blocks / kCluster : 0;
  const int kb_end = T::kSplitK ? (rank + 1) * k_blocks / kCluster : k_blocks;
  // This CTA's tiles of group `grp`; past the last one in a cluster that shares an operand (no
  // stores then: its rows or columns are past M or N).
  auto w_tile_of = [&](int grp) { return T::kShareX ? (grp / x_groups) * kCluster + rank : grp / x_groups; };
  auto x_tile_of = [&](int grp) { return T::kShareW ? (grp % x_groups) * kCluster + rank : grp % x_groups; };
  // Their first rows as loaded: a box wholly outside its tensor faults, so a tile past the last
  // loads the last one (unused).
  auto w_row_of = [&](int grp) { return (w_tile_of(grp) < w_tiles_n ? w_tile_of(grp) : w_tiles_n - 1) * kBW; };
  auto x_row_of = [&](int grp) { return (x_tile_of(grp) < x_tiles_m ? x_tile_of(grp) : x_tiles_m - 1) * kBX; };
  // W blocks: the CTA's own box, or (kShareW) its slice of the cluster's, multicast.
  // A slice that starts past the tensor's last row (in a ragged last tile) is loaded from its last
  // row instead: its rows lie past N (or M), so their contents reach only what is never stored.
  auto load_w = [&](int s, int grp, int kb) {
    if constexpr (T::kShareW) {
      constexpr int kSlice = kBW / kCluster;
      ptx::tma_load_2d_multicast(w_tiles + s * T::kWTileBytes + rank * kSlice * 128, &map_w, &full_bar[s],
                                 kb * T::kBK, min(w_row_of(grp) + rank * kSlice, n - 1),
                                 uint16_t((1u << kCluster) - 1));
    } else {
      ptx::tma_load_2d(w_tiles + s * T::kWTileBytes, &map_w, &full_bar[s], kb * T::kBK, w_row_of(grp));
    }
  };

  if (threadIdx.x == 0) {
    ptx::prefetch_tensor_map(&map_w);
    ptx::init_ring_barriers<T::kStages>(full_bar, empty_bar, T::kConsumers * (T::kShared ? kCluster : 1));
    ptx::mbarrier_init(&reduce_full_bar, (kCluster - 1) * T::kConsumers * 128);
    ptx::mbarrier_init(&reduce_empty_bar, T::kConsumers * 128);
    ptx::fence_mbarrier_init();
    ptx::prefetch_tensor_map(&map_x);
    if constexpr (T::kStagedOut) ptx::prefetch_tensor_map(&map_y);
  }
  // Barriers initialised in every CTA before any CTA multicasts into or arrives on another's.
  if constexpr (kCluster > 1) {
    ptx::cluster_sync();
  } else {
    __syncthreads();
  }

  if (threadIdx.x >= T::kProducerThread) {
    if (threadIdx.x != T::kProducerThread) return;
    // First fill, W only: before griddepcontrol.wait (no kernel writes W).
    uint32_t g = 0;
    for (int grp = cluster; grp < groups && g < T::kStages; grp += clusters) {
      for (int kb = kb_begin; kb < kb_end && g < T::kStages; ++kb, ++g) {
        ptx::mbarrier_arrive_expect_tx(&full_bar[g], stage_tx_bytes);
        load_w(g, grp, kb);
      }
    }
    ptx::griddep_wait();  // x from here on
    g = 0;
    for (int grp = cluster; grp < groups; grp += clusters) {
      const int x_row = x_row_of(grp);
      for (int kb = kb_begin; kb < kb_end; ++kb, ++g) {
        const int s = g % T::kStages;
        const bool stamp = XY_GEMM_TIMELINE && g < uint32_t(kb_end - kb_begin);  // the first group's blocks
        if (stamp) swap_stamp(g, kSwapEmptyWait);
        if (g >= T::kStages) {  // stage s is refilled once every consumer it serves released it
          ptx::mbarrier_wait(&empty_bar[s], ((g / T::kStages) - 1) & 1);
          ptx::mbarrier_arrive_expect_tx(&full_bar[s], stage_tx_bytes);
          load_w(s, grp, kb);
        }
        unsigned char* x_dst = x_tiles + s * T::kXTileBytes;
        if constexpr (T::kShareX) {
          if (rank < x_slicers) {
            ptx::tma_load_2d_multicast(x_dst + rank * x_slice_rows * 128, &map_x, &full_bar[s], kb * T::kBK,
                                       min(x_row + rank * x_slice_rows, m - 1), uint16_t((1u << kCluster) - 1));
          }
        } else {
          ptx::tma_load_2d(x_dst, &map_x, &full_bar[s], kb * T::kBK, x_row);
        }
        if (stamp) swap_stamp(g, kSwapIssued);
      }
    }
    ptx::griddep_launch_dependents();
    if constexpr (T::kShared) ptx::wait_last_releases<T::kStages>(empty_bar, g);
    return;
  }

  ptx::griddep_wait();  // y from here on
  const int consumer = threadIdx.x / 128;
  const int t = threadIdx.x % 128;  // thread within this consumer
  const bool leader = t == 0;
  const int warp = t / 32, lane = t % 32;
  const ptx::RingRelease<T::kShared ? kCluster : 1> release(empty_bar);
  uint32_t g = 0;
  uint32_t round = 0;  // this CTA's groups so far: the reduction barriers' phase
  uint32_t slabs_stored = 0;
  for (int grp = cluster; grp < groups; grp += clusters, ++round) {
    const bool last_group = grp + clusters >= groups;
    if (last_group) ptx::griddep_launch_dependents();
    // acc[kMB][64 W rows][kBX x rows] of this consumer, in wgmma fragment order.
    float d[T::kMB][T::kAcc];
#pragma unroll
    for (int mb = 0; mb < T::kMB; ++mb) {
#pragma unroll
      for (int j = 0; j < T::kAcc; ++j) d[mb][j] = 0.f;
    }
    const int iters = kb_end - kb_begin;
    ptx::wgmma_ring_k_blocks<kBX, T::kBK, T::kStages, T::kWTileBytes, T::kXTileBytes, T::kMB>(
        d, w_tiles, x_tiles, consumer * 64 * T::kMB, 0, full_bar, release, g, iters, leader,
        ConsumerStamps{XY_GEMM_TIMELINE && round == 0 && consumer == 0 && leader});
    ptx::wgmma_wait<0>();
    if (iters > 0 && leader) release(int((g - 1) % T::kStages));

    if constexpr (T::kSplitK) {
      // Slot (rank - 1, consumer), float4 j4 of thread t at ((slot * kAcc / 4 + j4) * 128 + t) * 4.
      if (rank > 0) {
        if (round > 0) ptx::mbarrier_wait_cluster(&reduce_empty_bar, (round - 1) & 1);
        const int slot = (rank - 1) * T::kConsumers + consumer;
        const uint32_t base = ptx::map_to_rank(ptx::smem_addr(reduce_buf), 0);
#pragma unroll
        for (int j4 = 0; j4 < T::kAcc / 4; ++j4) {
          ptx::st_shared_cluster_v4(base + ((slot * (T::kAcc / 4) + j4) * 128 + t) * 16, d[0][4 * j4],
                                    d[0][4 * j4 + 1], d[0][4 * j4 + 2], d[0][4 * j4 + 3]);
        }
        ptx::mbarrier_arrive_cluster(ptx::map_to_rank(ptx::smem_addr(&reduce_full_bar), 0));
        continue;
      }
      ptx::mbarrier_wait_cluster(&reduce_full_bar, round & 1);
#pragma unroll
      for (int r = 1; r < kCluster; ++r) {
        const int slot = (r - 1) * T::kConsumers + consumer;
#pragma unroll
        for (int j4 = 0; j4 < T::kAcc / 4; ++j4) {
          const float4 v = reinterpret_cast<const float4*>(reduce_buf)[(slot * (T::kAcc / 4) + j4) * 128 + t];
          d[0][4 * j4] += v.x;
          d[0][4 * j4 + 1] += v.y;
          d[0][4 * j4 + 2] += v.z;
          d[0][4 * j4 + 3] += v.w;
        }
      }
      if (!last_group) {
#pragma unroll
        for (int r = 1; r < kCluster; ++r) {
          ptx::mbarrier_arrive_cluster(ptx::map_to_rank(ptx::smem_addr(&reduce_empty_bar), r));
        }
      }
    }

    if constexpr (T::kStagedOut) {
#pragma unroll
      for (int mb = 0; mb < T::kMB; ++mb) {
        const int col0 = w_tile_of(grp) * kBW + (consumer * T::kMB + mb) * 64;
        if (x_tile_of(grp) < x_tiles_m && col0 < n) {
          ptx::store_tile_transposed_by_slabs<kBX, T::kOutSlabs>(
              d[mb], out_slabs + consumer * T::kOutSlabs * T::kSlabBytes, slabs_stored, &map_y, col0,
              x_tile_of(grp) * kBX, m, 1 + consumer, leader);
        }
      }
      continue;
    }
    // Epilogue. Fragment of m64nkBXk16 (PTX 9.7.15.5.1.1): d[4j + q] is yᵀ at row (W row)
    // warp*16 + lane/4 (+8 for q >= 2), column (x row) 8j + 2*(lane%4) (+1 for odd q). Lanes l and
    // l ^ 4 hold W rows c and c + 1 (c even) for the same two x rows: they swap one value each so
    // that one stores y[x row][c, c + 1] and the other y[x row + 1][c, c + 1], 4 bytes apiece.
    const bool odd = (lane >> 2) & 1;
    const int row0 = x_tile_of(grp) * kBX + 2 * (lane & 3) + (odd ? 1 : 0);
    // Past N, and past kBW in a partial last block.
    const int col_end = T::kWRows == kBW ? n : min(n, w_tile_of(grp) * kBW + kBW);
#pragma unroll
    for (int mb = 0; mb < T::kMB; ++mb) {
      // The pair's first column.
      const int col = w_tile_of(grp) * kBW + (consumer * T::kMB + mb) * 64 + warp * 16 + ((lane >> 2) & ~1);
#pragma unroll
      for (int j = 0; j < kBX / 8; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float v0 = d[mb][4 * j + 2 * h], v1 = d[mb][4 * j + 2 * h + 1];
          const float other = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
          const int row = row0 + 8 * j;
          const int c = col + 8 * h;
          if (row < m && c < col_end) {
            *reinterpret_cast<__nv_bfloat162*>(y + int64_t{row} * n + c) =
                odd ? __floats2bfloat162_rn(other, v1) : __floats2bfloat162_rn(v0, other);
          }
        }
      }
    }
  }
  if (T::kStagedOut && leader) ptx::bulk_wait_group<0>();  // shared memory must outlive the stores
}

template <int kBW, int kBX, int kCluster, SwapCluster kMode, int kMB>
cudaError_t launch(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k, bool pdl,
                   cudaStream_t stream) {
  using T = SwapTraits<kBW, kBX, kCluster, kMode, kMB>;
  auto* kernel = wgmma_swap_kernel<kBW, kBX, kCluster, kMode, kMB>;
  const int x_rows = x_box_rows(m, kBX);
  // kShareX: the first x_slicers ranks load a slice each of x_slice_rows rows, whole swizzle atoms
  // (8 rows), together at least x_rows (at most T::kXRows).
  const int x_slice_rows = T::kShareX ? ((x_rows + kCluster - 1) / kCluster + 7) / 8 * 8 : x_rows;
  const int x_slicers = (x_rows + x_slice_rows - 1) / x_slice_rows;
  CUtensorMap map_w, map_x, map_y{};  // y's map: staged tiles only
  if (!make_map(&map_w, w, n, k, T::kShareW ? kBW / kCluster : kBW) || !make_map(&map_x, x, m, k, x_slice_rows) ||
      (T::kStagedOut && !make_out_map(&map_y, y, m, n, 64, 8))) {
    return cudaErrorInvalidValue;
  }
  const int stage_tx_bytes = (kBW + x_slicers * x_slice_rows) * T::kBK * 2;
  static std::atomic<uint64_t> smem_allowed{0};
  if (const cudaError_t err = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), T::kSmemBytes, smem_allowed);
      err != cudaSuccess) {
    return err;
  }
  static std::atomic<int> resident[64] = {};
  const int64_t groups = int64_t{T::x_groups((m + kBX - 1) / kBX)} * T::w_groups((n + kBW - 1) / kBW);
  const int clusters = static_cast<int>(
      std::min<int64_t>(groups, resident_clusters(kernel, kCluster, T::kThreads, T::kSmemBytes, resident)));
  return launch_kernel_in_clusters(kernel, dim3(static_cast<unsigned>(clusters * kCluster)), dim3(T::kThreads),
                                   T::kSmemBytes, stream, pdl, static_cast<unsigned>(kCluster), map_w, map_x, map_y, y,
                                   m, n, k, x_slice_rows, x_slicers, stage_tx_bytes);
}

}  // namespace

#if XY_GEMM_TIMELINE
std::vector<long long> take_swap_timeline() {
  std::vector<long long> t(size_t(kSwapTimelineCtas) * kSwapTimelineBlocks * kSwapBlockFields);
  if (cudaDeviceSynchronize() != cudaSuccess ||
      cudaMemcpyFromSymbol(t.data(), g_swap_timeline, t.size() * sizeof(long long)) != cudaSuccess) {
    t.assign(t.size(), -1);
  }
  const std::vector<long long> empty(t.size(), -1);
  (void)cudaMemcpyToSymbol(g_swap_timeline, empty.data(), empty.size() * sizeof(long long));
  (void)cudaDeviceSynchronize();  // a copy from pageable memory may return before it lands
  return t;
}
#endif

cudaError_t launch_wgmma_swap(int bx, int bw, int cluster, SwapCluster mode, int m_blocks, const __nv_bfloat16* x,
                              const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k, bool pdl,
                              cudaStream_t stream) {
  constexpr SwapCluster kX = SwapCluster::kShareX, kW = SwapCluster::kShareW, kK = SwapCluster::kSplitK;
#define XY_SWAP_CASE(BX, BW, C, MODE, MB)                                           \
  if (bx == BX && bw == BW && cluster == C && mode == MODE && m_blocks == MB) {      \
    return launch<BW, BX, C, MODE, MB>(x, w, y, m, n, k, pdl, stream);              \
  }
  XY_SWAP_CASE(32, 64, 4, kX, 1)
  XY_SWAP_CASE(32, 128, 2, kX, 1)
  XY_SWAP_CASE(64, 128, 2, kX, 1)
  XY_SWAP_CASE(32, 64, 2, kW, 1)
  XY_SWAP_CASE(32, 64, 2, kK, 1)
  XY_SWAP_CASE(64, 64, 2, kK, 1)
  XY_SWAP_CASE(200, 192, 2, kW, 1)
  XY_SWAP_CASE(200, 128, 2, kX, 1)
  XY_SWAP_CASE(112, 256, 2, kX, 1)
  XY_SWAP_CASE(160, 192, 2, kX, 1)
  XY_SWAP_CASE(136, 128, 2, kK, 1)
  XY_SWAP_CASE(136, 192, 2, kW, 1)
  XY_SWAP_CASE(128, 192, 2, kW, 1)
  XY_SWAP_CASE(104, 64, 2, kK, 1)
  XY_SWAP_CASE(136, 64, 1, kX, 1)
  XY_SWAP_CASE(72, 192, 1, kW, 3)
  XY_SWAP_CASE(32, 192, 1, kX, 1)
  XY_SWAP_CASE(32, 224, 1, kX, 1)
  XY_SWAP_CASE(136, 256, 1, kX, 2)
#undef XY_SWAP_CASE
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
