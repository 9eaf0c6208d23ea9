// Stream-K GEMM for Hopper, mid and large M: y[M, N] = x[M, K] · W[N, K]ᵀ with TMA loads, wgmma
// (sm_90a) and TMA stores.
//
// Why: the split-K wgmma kernel (gemm_wgmma.cu) picks a split count from a wave model, which
// leaves SMs idle (Llama-3-8B qkv at M = 128: 48 tiles x 2 splits = 96 CTAs for 132 SMs) and
// quantizes badly past a wave (M = 257: a third m-tile of one row). Here the work is the set of
// (output tile, 64-column K block) iterations, and a persistent grid gives every CTA an equal,
// contiguous share of them ("stream-K", Osama et al., PPoPP 2023), so all SMs finish together
// whatever M is.
//
// Roles (as in gemm_wgmma.cu): warpgroup 0 is the producer, one thread issuing TMA loads of x
// and W blocks into a kStages ring completing on mbarriers; warpgroups 1 and 2 are consumers
// running wgmma on 64 rows each. With kBM = 128 the consumers split the tile's rows (64 x kBN
// each, m64nkBNk16); with kBM = 64 they split its columns (64 x kBN/2 each, m64n128k16 for kBN =
// 256), so that a 64-row tile still has two warpgroups issuing MMAs and sharing the epilogue.
// The 128 x 128 tile also runs at two CTAs per SM (kCtasPerSm = 2), so that while one CTA waits
// on its ring or its fix-up the other's MMAs can run: a 3-stage ring, a producer warp after the
// consumers instead of a warpgroup before them, and no output staging (see SkTraits).
//
// Schedule (SkSchedule, made on the host by make_plan):
//  - At most kMaxAlignedMTiles m-tiles (M <= 1024 at kBM = 128, the mid M that this kernel is
//    for): every tile is stream-K'd, tiles in m-major order (tile = m_tile * num_n + n_tile), on a
//    grid that is a multiple of the m-tile count (at most kMaxAlignedMTiles - 1 SMs left idle).
//    Then CTA m_tile * g + i runs the i-th of g equal shares of m-tile m_tile's iterations, so the
//    CTAs with the same i, one per m-tile, ask for the same block of W at the same time: W comes
//    from HBM about once and the other m-tiles find it in L2 (x, at most 8 row tiles, stays in L2).
//  - More m-tiles: whole tiles round-robin over the CTAs ("data-parallel") in grouped raster
//    order (kRasterGroupM m-tiles at a time, m-tiles varying fastest, so a wave of CTAs shares a
//    band of x and of W in L2), except the last tiles % G + G tiles (G CTAs), which are stream-K'd:
//    the "data-parallel + two-tile stream-K" hybrid of the stream-K paper. Full waves need no
//    fix-up; the stream-K tail removes the last wave's quantization, and with at least a tile per
//    CTA no tile is cut among many CTAs.
//
// Partial tiles: a CTA whose share covers only part of a tile's K blocks adds its fp32 partial
// into a workspace slot with vector reductions at L2 and counts its K blocks on the slot's
// counter (one release fence per CTA, not per thread: see the fix-up); the CTA that completes the count stores the tile and re-zeroes the slot, so the
// workspace is zero between calls and no CTA ever waits for another. Before adding, a CTA reads
// the counter: when every other part is already in (usually so for the CTA holding a tile's first
// K blocks, which reaches them at the end of its share), it sums the slot into its registers and
// skips its own reduction. The slot of a split tile is the index of the first CTA whose share
// begins inside it (unique: shares are disjoint), so the workspace is grid x tile, not tiles x tile.
//
// Epilogue: each consumer converts its accumulators to bf16 in 64 x 64 slabs in shared memory
// (two buffers each, 128-byte swizzled rows: conflict-free fragment writes) and one thread stores
// each slab with a TMA store, overlapping the next slab's conversion. y's tensor map is exactly
// [M, N], so TMA drops the rows past M (virtual padding) and x's map zero-fills them on load.
//
// Programmatic dependent launch: the producer requests the first kStages blocks of W (and the
// next kWPrefetch into L2) before griddepcontrol.wait (no kernel writes W), x only after it; the
// consumers wait before they touch y or the workspace.
//
// Timeline instrument (CMake option XY_GEMM_TIMELINE, bench builds only): thread 0 of consumer 0
// stamps each segment's phases and the CTA's entry and exit, the producer its first and last TMA
// load (SkSegmentField, SkCtaField in gemm_kernels.cuh); gemm_bench --timeline prints where a
// CTA's time goes. Off, every stamp is behind `if constexpr (kTimeline)`: the same code.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#if XY_GEMM_TIMELINE
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#endif

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_consumer.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_ptx.cuh"
#include "xyserve/backend/cuda/tensor_maps.h"

namespace xy::cuda::gemm_detail {
namespace {

constexpr int kMaxAlignedMTiles = 8;
constexpr int kRasterGroupM = 8;
constexpr int kMaxSmemBytes = 227 * 1024;  // per block, sm_90
constexpr int kSmPerSmBytes = 228 * 1024;  // per SM, of which 1 KB per resident block is the driver's

#ifndef XY_GEMM_TIMELINE
#define XY_GEMM_TIMELINE 0
#endif
constexpr bool kTimeline = XY_GEMM_TIMELINE != 0;
#if XY_GEMM_TIMELINE
__device__ long long g_sk_timeline[kSkTimelineCtas][kSkTimelineSegments][kSkSegmentFields];
__device__ long long g_sk_timeline_cta[kSkTimelineCtas][kSkCtaFields];
#endif

// The instrument's accessors, defined in every build (the kernel names them in discarded
// `if constexpr` branches), empty without it.
__device__ __forceinline__ long long global_ns() {  // %globaltimer: ns, one clock for all SMs
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return static_cast<long long>(t);
}
__device__ __forceinline__ long long sm_id() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}
// Each stamp goes straight to global memory (a store in flight costs the recorder nothing; a
// stamp kept in registers through the main loop made the consumers spill).
__device__ __forceinline__ void timeline_put_segment(int i, int field, long long v) {
#if XY_GEMM_TIMELINE
  if (blockIdx.x < kSkTimelineCtas && static_cast<unsigned>(i) < kSkTimelineSegments) {
    g_sk_timeline[blockIdx.x][i][field] = v;
  }
#endif
}
__device__ __forceinline__ void timeline_put_cta(int field, long long v) {
#if XY_GEMM_TIMELINE
  if (blockIdx.x < kSkTimelineCtas) g_sk_timeline_cta[blockIdx.x][field] = v;
#endif
}

template <int kBM_, int kBN_, int kCtasPerSm_>
struct SkTraits {
  static_assert((kBM_ == 128 && (kBN_ == 128 || kBN_ == 256)) || (kBM_ == 64 && kBN_ == 256),
                "tiles: 128 x 256, 128 x 128, 64 x 256");
  static_assert(kCtasPerSm_ == 1 || (kCtasPerSm_ == 2 && kBM_ == 128 && kBN_ == 128),
                "two CTAs per SM: 128 x 128 only (64 accumulators per consumer thread)");
  static constexpr int kBM = kBM_;
  static constexpr int kBN = kBN_;
  // Two CTAs per SM: while one waits on its ring or its fix-up, the other may compute.
  static constexpr int kCtasPerSm = kCtasPerSm_;
  static constexpr int kBK = 64;  // 128 bytes: one swizzle row
  static constexpr int kConsumers = 2;
  // One CTA per SM: warpgroup 0 produces (its registers handed to the consumers by setmaxnreg),
  // warpgroups 1 and 2 consume. Two: ptxas allocates every thread the launch-bounds cap, which at
  // 2 x 384 threads (80) cannot hold a wgmma's 64 accumulators, so the producer is one warp after
  // the consumers (warps 0-7, warpgroup-aligned as wgmma needs): 2 x 288 threads, 112 registers.
  static constexpr bool kProducerWarpgroup = kCtasPerSm == 1;
  static constexpr int kThreads = kConsumers * 128 + (kProducerWarpgroup ? 128 : 32);
  static constexpr int kConsumerThread0 = kProducerWarpgroup ? 128 : 0;
  static constexpr int kProducerThread = kProducerWarpgroup ? 0 : kConsumers * 128;
  // Each consumer owns 64 rows x kConsumerN columns of the tile, at (kRowBase, kColBase) * its index.
  static constexpr bool kSplitRows = kBM == 128;
  static constexpr int kConsumerN = kSplitRows ? kBN : kBN / 2;
  static constexpr int kRowStep = kSplitRows ? 64 : 0;
  static constexpr int kColStep = kSplitRows ? 0 : kConsumerN;
  static constexpr int kAcc = kConsumerN / 2;  // fp32 accumulators per thread
  static constexpr int kATileBytes = kBM * kBK * 2;
  static constexpr int kBTileBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kATileBytes + kBTileBytes;
  // Output staging (store_tile_by_slabs): per consumer two 8 KB chunk buffers. With two
  // CTAs per SM the 16-32 KB do not fit beside a 3-stage ring (2 x (96 + 16 + 1 + 1) KB > 228
  // KB): bf16 pairs go from the fragments straight to global memory (at mid M, y is small).
  static constexpr bool kStagedOut = kCtasPerSm == 1;
  static constexpr int kOutBytes = kStagedOut ? kConsumers * ptx::kOutStagingBytes : 0;
  // Shared memory a CTA may have: the block maximum, or its share of the SM less the driver's KB.
  static constexpr int kSmemBudget = kCtasPerSm == 1 ? kMaxSmemBytes : kSmPerSmBytes / kCtasPerSm - 1024;
  // As many stages as fit beside the staging (+1024 for aligning to the swizzle atom, +1024 for
  // the static barriers), at most 6: 4 for 128 x 256 and 64 x 256, 6 for 128 x 128, 3 for
  // 128 x 128 at two CTAs per SM.
  static constexpr int kStages = std::min(6, (kSmemBudget - kOutBytes - 2048) / kStageBytes);
  static constexpr int kSmemBytes = kStages * kStageBytes + kOutBytes + 1024;
  // W blocks requested into L2 ahead of the ring (cp.async.bulk.prefetch): the fill and the
  // refills find them on chip sooner; 0 turns it off.
  static constexpr int kWPrefetch = 0;
  static constexpr int kTileFloats = kBM * kBN;  // one partial tile in the workspace
  // Registers (producer warpgroup only): the launch gives every thread ptxas's count, the
  // launch-bounds cap (168); setmaxnreg then moves the producer's spare registers to the
  // consumers within the CTA's allocation, so the sum must fit in it, or setmaxnreg.inc would
  // wait forever.
  static constexpr int kLaunchRegs = (65536 / (kCtasPerSm * kThreads)) / 8 * 8;
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs =
      std::min(256, (kThreads * kLaunchRegs - 128 * kProducerRegs) / (kConsumers * 128) / 8 * 8);
  static_assert(kStages >= 3, "pipeline depth");
  static_assert(kConsumerN == 128 || kConsumerN == 256, "wgmma wrappers exist for n = 128 and 256");
  static_assert(kSmemBytes + 1024 <= kSmemBudget, "shared memory per block");
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= kThreads * kLaunchRegs,
                "register file");
};

// Which iterations run where; made once per launch by make_plan, read by every CTA.
struct SkSchedule {
  int m, n;
  int num_m_tiles, num_n_tiles, k_iters;
  int group_m;       // raster: group_m m-tiles at a time, m-tiles fastest (1: m-major order)
  int dp_tiles;      // tiles [0, dp_tiles) run whole: CTA b takes b, b + G, b + 2G, ...
  int sk_tiles;      // tiles [dp_tiles, dp_tiles + sk_tiles) are stream-K'd over all G CTAs
  int64_t sk_iters;  // sk_tiles * k_iters
  int narrow;        // sk_iters * (grid + 1) < 2^32: share bounds and slots in 32-bit arithmetic
};

// One run of K blocks [kb_begin, kb_end) of one tile, accumulated without a break.
struct Segment {
  int tile, kb_begin, kb_end;
};

// CTA blockIdx.x's work: its data-parallel tiles, then its stream-K iterations
// [sk_begin, sk_end) (numbered within the stream-K tiles), cut at tile boundaries.
struct CtaWork {
  int num_dp;
  int first_sk_tile;  // within the stream-K tiles
  int num_segments;
  int sk_begin, sk_end;  // sk_iters < 2^31 (launch checks it)
};

// floor(sk_iters * b / grid). In 32 bits whenever the product fits (always at mid M): a 64-bit
// division is a software routine of ~100 instructions, and this is on the way to the first load.
__device__ __forceinline__ int share_bound(const SkSchedule& s, int b) {
  if (s.narrow) return static_cast<int>(static_cast<uint32_t>(s.sk_iters) * b / gridDim.x);
  return static_cast<int>(s.sk_iters * b / gridDim.x);
}

__device__ __forceinline__ CtaWork cta_work(const SkSchedule& s) {
  const int b = blockIdx.x, grid = gridDim.x;
  CtaWork w;
  w.num_dp = b < s.dp_tiles ? (s.dp_tiles - b + grid - 1) / grid : 0;
  w.sk_begin = share_bound(s, b);
  w.sk_end = share_bound(s, b + 1);
  w.first_sk_tile = w.sk_begin / s.k_iters;
  const int num_sk = w.sk_begin < w.sk_end ? (w.sk_end - 1) / s.k_iters - w.first_sk_tile + 1 : 0;
  w.num_segments = w.num_dp + num_sk;
  return w;
}

__device__ __forceinline__ Segment segment_of(const SkSchedule& s, const CtaWork& w, int i) {
  if (i < w.num_dp) return {static_cast<int>(blockIdx.x) + i * static_cast<int>(gridDim.x), 0, s.k_iters};
  const int t = w.first_sk_tile + (i - w.num_dp);
  const int start = t * s.k_iters;
  return {s.dp_tiles + t, max(w.sk_begin, start) - start, min(w.sk_end, start + s.k_iters) - start};
}

// Workspace slot of a stream-K tile that several CTAs share: the first CTA b whose share begins
// strictly inside the tile, i.e. the least b with floor(sk_iters * b / G) > start; minus one
// (b >= 1), so slots are 0 .. G - 2.
__device__ __forceinline__ int slot_of(const SkSchedule& s, int tile) {
  if (s.narrow) {  // (start + 1) * grid + sk_iters - 1 <= sk_iters * (grid + 1) - 1 fits
    const uint32_t start = static_cast<uint32_t>(tile - s.dp_tiles) * s.k_iters;
    const uint32_t iters = static_cast<uint32_t>(s.sk_iters);
    return static_cast<int>(((start + 1) * gridDim.x + iters - 1) / iters) - 1;
  }
  const int64_t start = int64_t{tile - s.dp_tiles} * s.k_iters;
  return static_cast<int>(((start + 1) * gridDim.x + s.sk_iters - 1) / s.sk_iters) - 1;
}

// Grouped raster order: tile -> (m_tile, n_tile).
__device__ __forceinline__ void tile_coords(const SkSchedule& s, int tile, int& m_tile, int& n_tile) {
  const int group_size = s.group_m * s.num_n_tiles;
  const int group = tile / group_size;
  const int first_m = group * s.group_m;
  const int group_m = min(s.num_m_tiles - first_m, s.group_m);
  const int in_group = tile - group * group_size;
  m_tile = first_m + in_group % group_m;
  n_tile = in_group / group_m;
}

template <int kBM, int kBN, int kCtasPerSm>
__global__ void __launch_bounds__(SkTraits<kBM, kBN, kCtasPerSm>::kThreads, kCtasPerSm)
    wgmma_sk_kernel(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w,
                    const __grid_constant__ CUtensorMap map_y, __nv_bfloat16* __restrict__ y,
                    const SkSchedule sched, uint32_t* __restrict__ counters, float* __restrict__ partials,
                    int stage_tx_bytes) {
  using T = SkTraits<kBM, kBN, kCtasPerSm>;
  if constexpr (kTimeline) {
    if (threadIdx.x == T::kConsumerThread0) {  // the consumer thread that records the timeline
      timeline_put_cta(kCtaConsumerIn, clock64());
      timeline_put_cta(kCtaEntryNs, global_ns());
    }
  }
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[T::kStages];
  __shared__ __align__(8) uint64_t empty_bar[T::kStages];
  // Fix-up decisions broadcast to both consumers: two pairs, used alternately by successive
  // fix-ups, so a pair is rewritten only after every consumer thread passed a later barrier.
  __shared__ int s_flags[4];
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* a_tiles = smem;                                  // [stage][kBM rows][64] of x
  unsigned char* b_tiles = smem + T::kStages * T::kATileBytes;    // [stage][kBN rows][64] of W
  unsigned char* out_slabs = smem + T::kStages * T::kStageBytes;  // [consumer][2][64 rows][64] bf16

  const CtaWork work = cta_work(sched);
  // Both roles count K blocks over all of this CTA's segments (g): stage g % kStages, phase
  // g / kStages, so the ring runs on across segments and tiles.
  if (threadIdx.x == T::kProducerThread) {
    // At mid M a CTA runs ~12-25 K blocks, so the ring's first fill is as long as the rest of the
    // run: the producer's thread starts it first thing, before the block-wide barrier and the
    // register reallocation (it initialised the barriers itself, so it may use them at once).
    // W of the first kStages blocks goes into the ring and the next kWPrefetch blocks into L2,
    // all before griddepcontrol.wait (no kernel writes W); x waits for it below.
    ptx::prefetch_tensor_map(&map_w);
    ptx::init_ring_barriers<T::kStages>(full_bar, empty_bar, T::kConsumers);
    ptx::fence_mbarrier_init();
    uint32_t g = 0;
    for (int i = 0; i < work.num_segments && g < T::kStages + T::kWPrefetch; ++i) {
      const Segment seg = segment_of(sched, work, i);
      int m_tile, n_tile;
      tile_coords(sched, seg.tile, m_tile, n_tile);
      for (int kb = seg.kb_begin; kb < seg.kb_end && g < T::kStages + T::kWPrefetch; ++kb, ++g) {
        if (g < T::kStages) {
          ptx::mbarrier_arrive_expect_tx(&full_bar[g], stage_tx_bytes);
          ptx::tma_load_2d(b_tiles + g * T::kBTileBytes, &map_w, &full_bar[g], kb * T::kBK, n_tile * T::kBN);
          if constexpr (kTimeline) if (g == 0) timeline_put_cta(kCtaFirstLoad, clock64());
        } else {
          ptx::tma_prefetch_l2_2d(&map_w, kb * T::kBK, n_tile * T::kBN);
        }
      }
    }
    ptx::prefetch_tensor_map(&map_x);
    ptx::prefetch_tensor_map(&map_y);
  }
  __syncthreads();

  if (T::kProducerWarpgroup ? threadIdx.x < 128 : threadIdx.x >= T::kProducerThread) {
    if constexpr (T::kProducerWarpgroup) ptx::setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x != T::kProducerThread) return;
    ptx::griddep_wait();  // x from here on
    uint32_t g = 0;
    for (int i = 0; i < work.num_segments; ++i) {
      const Segment seg = segment_of(sched, work, i);
      int m_tile, n_tile;
      tile_coords(sched, seg.tile, m_tile, n_tile);
      for (int kb = seg.kb_begin; kb < seg.kb_end; ++kb, ++g) {
        const int s = g % T::kStages;
        if (g >= T::kStages) {  // stage s is refilled once both consumers released it
          // Keep kWPrefetch blocks of W requested ahead of the ring (within the segment; the
          // prologue covered the blocks after the first kStages).
          if (T::kWPrefetch > 0 && kb + T::kWPrefetch < seg.kb_end) {
            ptx::tma_prefetch_l2_2d(&map_w, (kb + T::kWPrefetch) * T::kBK, n_tile * T::kBN);
          }
          ptx::mbarrier_wait(&empty_bar[s], ((g / T::kStages) - 1) & 1);
          ptx::mbarrier_arrive_expect_tx(&full_bar[s], stage_tx_bytes);
          ptx::tma_load_2d(b_tiles + s * T::kBTileBytes, &map_w, &full_bar[s], kb * T::kBK, n_tile * T::kBN);
        }
        ptx::tma_load_2d(a_tiles + s * T::kATileBytes, &map_x, &full_bar[s], kb * T::kBK, m_tile * T::kBM);
      }
    }
    if constexpr (kTimeline) timeline_put_cta(kCtaLastLoad, clock64());
    // Every load is issued: the next kernel may start on the SMs that this grid frees (a hint;
    // it still waits for this grid's completion). The consumers issue it too, at their last
    // segment, whether the hardware counts a CTA's first thread or all of them.
    ptx::griddep_launch_dependents();
    return;
  }

  if constexpr (T::kProducerWarpgroup) ptx::setmaxnreg_inc<T::kConsumerRegs>();
  ptx::griddep_wait();  // y and the workspace from here on
  const int ct = threadIdx.x - T::kConsumerThread0;  // 0..255 over both consumers
  const int consumer = ct / 128;
  const int t = ct % 128;  // thread within this consumer
  const bool leader = t == 0;
  const int warp = t / 32, lane = t % 32;
  const int row_base = consumer * T::kRowStep;  // this consumer's rows and columns in the tile
  const int col_base = consumer * T::kColStep;
  unsigned char* my_slabs = out_slabs + consumer * ptx::kOutStagingBytes;
  uint32_t g = 0;
  uint32_t slabs_stored = 0;  // by this consumer: slab buffer slabs_stored % 2 is next
  int fixups = 0;

  for (int i = 0; i < work.num_segments; ++i) {
    // Timeline: every field of segment i is written in each launch (none left from an earlier one).
    if constexpr (kTimeline) {
      if (ct == 0) {  // segment i - 1 ended where segment i starts
        const long long now = clock64();
        timeline_put_segment(i, kSegStart, now);
        if (i > 0) timeline_put_segment(i - 1, kSegEpilogueDone, now);
      }
    }
    if (i == work.num_segments - 1) ptx::griddep_launch_dependents();
    // Only the count of K blocks is live through the main loop; the rest is recomputed after it.
    const int num_iters = [&] {
      const Segment seg = segment_of(sched, work, i);
      return seg.kb_end - seg.kb_begin;
    }();

    // acc[64 rows][kConsumerN columns] of this consumer = x rows · W rowsᵀ over the segment's
    // K blocks, in wgmma fragment order.
    float d[T::kAcc];
#pragma unroll
    for (int j = 0; j < T::kAcc; ++j) d[j] = 0.f;
    if constexpr (kTimeline) {
      // The first block's wait, ahead of the loop (a stamp inside it kept an address live through
      // the main loop): the loop's own wait then passes at once, as stage g % kStages cannot
      // complete another phase before this consumer releases it.
      if (num_iters > 0) {
        ptx::mbarrier_wait(&full_bar[g % T::kStages], (g / T::kStages) & 1);
        if (ct == 0) timeline_put_segment(i, kSegFirstFull, clock64());
      }
    }
    ptx::wgmma_ring_k_blocks<T::kConsumerN, T::kBK, T::kStages, T::kATileBytes, T::kBTileBytes>(
        d, a_tiles, b_tiles, row_base, col_base, full_bar, ptx::RingRelease<1>(empty_bar), g, num_iters,
        leader);
    const Segment seg = segment_of(sched, work, i);
    const bool split = seg.kb_begin != 0 || seg.kb_end != sched.k_iters;
    const int slot = split ? slot_of(sched, seg.tile) : 0;
    // The fix-up's first question (are the other parts in?) is asked while the last MMAs run.
    uint32_t seen = 0;
    if (split && ct == 0) seen = ptx::ld_relaxed_gpu(&counters[slot]);
    ptx::wgmma_wait<0>();
    if constexpr (kTimeline) {
      if (ct == 0) {
        timeline_put_segment(i, kSegMainDone, clock64());
        timeline_put_segment(i, kSegTile, seg.tile);
        timeline_put_segment(i, kSegKbBegin, seg.kb_begin);
        timeline_put_segment(i, kSegKbEnd, seg.kb_end);
        timeline_put_segment(i, kSegSplit, split);
        timeline_put_segment(i, kSegCompleted, 1);
        timeline_put_segment(i, kSegFixupDone, -1);
      }
    }
    if (num_iters > 0 && leader) ptx::mbarrier_arrive(&empty_bar[(g - 1) % T::kStages]);
    int m_tile, n_tile;
    tile_coords(sched, seg.tile, m_tile, n_tile);

    // A warp whose 16 rows all lie past M holds zeros: it neither adds to the workspace nor reads
    // it back, so its part of the slot stays zero.
    const bool rows_live = m_tile * T::kBM + row_base + warp * 16 < sched.m;
    if (split) {
      // Part of a tile: sum with the other parts in workspace slot `slot`. The partial tile is
      // kept in fragment order: thread t's d[4j .. 4j+3] are 16 contiguous bytes, a warp's 512.
      //
      // Memory ordering (PTX memory model), with one fence per CTA rather than one per thread:
      // - Release: every consumer thread's reductions precede the bar.sync below, which orders
      //   them (CTA-scope synchronization, in causality order) before thread ct == 0's
      //   fence.acq_rel.gpu; that fence is cumulative, so its counter update (relaxed atomic)
      //   releases the reductions of all 256 threads, not only its own.
      // - Acquire: thread ct == 0 reads the counter (relaxed load or the atomic), and when the
      //   tile is complete issues fence.acq_rel.gpu, which with that read forms an acquire
      //   pattern; the bar.sync after it orders every consumer thread's reads of the slot after it.
      // The same scheme as CUTLASS's generic barrier (arrive_inc / wait_eq).
      const uint32_t mine = static_cast<uint32_t>(num_iters);
      const uint32_t total = static_cast<uint32_t>(sched.k_iters);
      float* part = partials + int64_t{slot} * T::kTileFloats + consumer * (T::kTileFloats / 2) + t * 4;
      int* flags = s_flags + 2 * (fixups & 1);
      ++fixups;
      // Are all the other parts in already? Then this CTA finishes the tile without adding. (An
      // older counter value only sends it down the other path, which is always right.)
      if (ct == 0) {
        const bool all_in = seen + mine == total;
        if (all_in) ptx::fence_acq_rel_gpu();  // acquire
        flags[0] = all_in;
      }
      ptx::named_barrier_sync(1, 256);
      if constexpr (kTimeline) if (ct == 0 && flags[0]) timeline_put_segment(i, kSegCompleted, 2);
      bool own_in_slot = false;
      if (!flags[0]) {
        if (rows_live) {
#pragma unroll
          for (int j = 0; j < T::kAcc / 4; ++j) {
            ptx::red_add_v4(part + j * 512, d[4 * j], d[4 * j + 1], d[4 * j + 2], d[4 * j + 3]);
          }
        }
        ptx::named_barrier_sync(1, 256);  // every thread's reductions, before the release below
        if (ct == 0) {
          ptx::fence_acq_rel_gpu();  // release, cumulative
          const bool last = ptx::atom_add_relaxed_gpu(&counters[slot], mine) + mine == total;
          if (last) ptx::fence_acq_rel_gpu();  // acquire: the other parts' reductions
          flags[1] = last;
        }
        ptx::named_barrier_sync(1, 256);
        if (!flags[1]) {  // another CTA completes the tile
          if constexpr (kTimeline) {
            if (ct == 0) {
              timeline_put_segment(i, kSegFixupDone, clock64());
              timeline_put_segment(i, kSegCompleted, 0);
            }
          }
          continue;
        }
        own_in_slot = true;
      }
      if (rows_live) {
        // The slot holds the other parts, and this CTA's own too when it added it above.
#pragma unroll
        for (int j = 0; j < T::kAcc / 4; ++j) {
          float4* p = reinterpret_cast<float4*>(part + j * 512);
          const float4 v = __ldcg(p);
          __stcg(p, make_float4(0.f, 0.f, 0.f, 0.f));
          if (own_in_slot) d[4 * j] = d[4 * j + 1] = d[4 * j + 2] = d[4 * j + 3] = 0.f;
          d[4 * j] += v.x;
          d[4 * j + 1] += v.y;
          d[4 * j + 2] += v.z;
          d[4 * j + 3] += v.w;
        }
      }
      if (ct == 0) counters[slot] = 0;  // the next launch (stream-ordered) starts from zero
      if constexpr (kTimeline) if (ct == 0) timeline_put_segment(i, kSegFixupDone, clock64());
    }

    // Store: 64 x 64 slabs through shared memory, one TMA store each (store_tile_by_slabs), or
    // without staging bf16 pairs straight from the fragments (fragment order there). (Never
    // consumer 0, the timeline's recorder: its rows start the tile, which has some below M.)
    if (m_tile * T::kBM + row_base >= sched.m) continue;  // all of this consumer's rows past M
    if constexpr (!T::kStagedOut) {
      // No staging (two CTAs per SM): each thread stores its bf16 pairs, rows past M skipped.
      const int row0 = m_tile * T::kBM + row_base + warp * 16 + (lane >> 2);
      __nv_bfloat16* out = y + int64_t{row0} * sched.n + n_tile * T::kBN + col_base + 2 * (lane & 3);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        if (row0 + 8 * half >= sched.m) continue;
        uint32_t* row = reinterpret_cast<uint32_t*>(out + int64_t{8 * half} * sched.n);
#pragma unroll
        for (int j = 0; j < T::kAcc / 4; ++j) {
          row[4 * j] = ptx::pack_bf16x2(d[4 * j + 2 * half], d[4 * j + 2 * half + 1]);
        }
      }
    } else {
      ptx::store_tile_by_slabs<T::kConsumerN>(d, my_slabs, slabs_stored, &map_y, n_tile * T::kBN + col_base,
                                              m_tile * T::kBM + row_base, 2 + consumer, leader);
    }
  }
  if constexpr (kTimeline) if (ct == 0) timeline_put_segment(work.num_segments - 1, kSegEpilogueDone, clock64());
  if (T::kStagedOut && leader) ptx::bulk_wait_group<0>();  // shared memory must outlive the stores
  if constexpr (kTimeline) {
    if (ct == 0) {
      timeline_put_cta(kCtaConsumerOut, clock64());
      timeline_put_cta(kCtaExitNs, global_ns());
      timeline_put_cta(kCtaSm, sm_id());
      timeline_put_cta(kCtaNumSegments, work.num_segments);
    }
  }
}

size_t counters_bytes(int slots) { return (size_t(slots) * 4 + 255) / 256 * 256; }

struct SkPlan {
  int grid = 0;
  SkSchedule sched{};
  bool has_split_tiles = false;  // some tile is shared by CTAs: the workspace is needed
};

// Preconditions: n % bn == 0, k % 64 == 0, fewer than 2^31 (tile, K block) iterations
// (gemm_unsupported_reason); a plan of no CTAs otherwise.
SkPlan make_plan(int bm, int bn, int ctas_per_sm, int m, int n, int k) {
  SkPlan p;
  SkSchedule& s = p.sched;
  s.m = m;
  s.n = n;
  s.num_m_tiles = (m + bm - 1) / bm;
  s.num_n_tiles = n / bn;
  s.k_iters = k / 64;
  if (m < 1 || s.num_n_tiles < 1 || s.k_iters < 1 ||
      int64_t{s.num_m_tiles} * s.num_n_tiles * s.k_iters > INT32_MAX) {
    return p;
  }
  const int tiles = s.num_m_tiles * s.num_n_tiles;
  const int sms = num_sms() * ctas_per_sm;  // resident CTAs, called SMs below
  if (s.num_m_tiles <= kMaxAlignedMTiles) {
    s.group_m = 1;
    s.dp_tiles = 0;
    s.sk_tiles = tiles;
    p.grid = s.num_m_tiles * (sms / s.num_m_tiles);
  } else {
    s.group_m = kRasterGroupM;
    p.grid = sms;
    const int rem = tiles % sms;
    s.sk_tiles = rem == 0 ? 0 : tiles >= 2 * sms ? sms + rem : tiles;
    s.dp_tiles = tiles - s.sk_tiles;
  }
  s.sk_iters = int64_t{s.sk_tiles} * s.k_iters;
  // No CTA without work: with few iterations, one each.
  if (s.dp_tiles == 0) p.grid = static_cast<int>(std::min<int64_t>(p.grid, s.sk_iters));
  s.narrow = s.sk_iters * (p.grid + 1) <= int64_t{UINT32_MAX};
  for (int b = 1; b < p.grid && !p.has_split_tiles; ++b) {
    p.has_split_tiles = s.sk_iters * b / p.grid % s.k_iters != 0;
  }
  return p;
}

template <int kBM, int kBN, int kCtasPerSm>
cudaError_t launch(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k,
                   void* workspace, bool pdl, cudaStream_t stream) {
  using T = SkTraits<kBM, kBN, kCtasPerSm>;
  const void* kernel = reinterpret_cast<const void*>(wgmma_sk_kernel<kBM, kBN, kCtasPerSm>);
  CUtensorMap map_x, map_w, map_y;
  // x's box: x_box_rows. Its stale rows also reach workspace fragments, which the completing CTA
  // re-zeroes with the rest of its live warps' parts.
  const int x_rows = x_box_rows(m, T::kBM);
  if (!make_map(&map_x, x, m, k, x_rows) || !make_map(&map_w, w, n, k, T::kBN) ||
      !make_out_map(&map_y, y, m, n, ptx::kOutBoxCols<T::kConsumerN>)) {
    return cudaErrorInvalidValue;
  }
  static std::atomic<uint64_t> smem_allowed{0};
  if (const cudaError_t err = allow_dynamic_smem(kernel, T::kSmemBytes, smem_allowed); err != cudaSuccess) {
    return err;
  }
  if constexpr (kCtasPerSm > 1) {
    // Ask for the largest shared-memory carveout, so that kCtasPerSm CTAs fit on an SM (the
    // default may size it for one). Correctness does not depend on it: no CTA waits for another.
    static std::atomic<uint64_t> carveout_set{0};  // per device, as allow_dynamic_smem
    int device = 0;
    if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if (bit == 0 || (carveout_set.load(std::memory_order_acquire) & bit) == 0) {
      if (const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                       int(cudaSharedmemCarveoutMaxShared));
          err != cudaSuccess) {
        return err;
      }
      carveout_set.fetch_or(bit, std::memory_order_acq_rel);
    }
  }
  const SkPlan plan = make_plan(kBM, kBN, kCtasPerSm, m, n, k);
  if (plan.grid == 0 || (plan.has_split_tiles && workspace == nullptr)) return cudaErrorInvalidValue;
  auto* counters = static_cast<uint32_t*>(workspace);
  auto* partials = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + counters_bytes(plan.grid));
  return launch_kernel(wgmma_sk_kernel<kBM, kBN, kCtasPerSm>, dim3(static_cast<unsigned>(plan.grid)),
                       dim3(T::kThreads), T::kSmemBytes, stream, pdl, map_x, map_w, map_y, y, plan.sched, counters,
                       partials, T::kBTileBytes + x_rows * T::kBK * 2);
}

}  // namespace

#if XY_GEMM_TIMELINE
SkTimeline take_sk_timeline() {
  SkTimeline t;
  t.segments.resize(size_t(kSkTimelineCtas) * kSkTimelineSegments * kSkSegmentFields);
  t.ctas.resize(size_t(kSkTimelineCtas) * kSkCtaFields);
  XY_CUDA_CHECK(cudaDeviceSynchronize());
  XY_CUDA_CHECK(cudaMemcpyFromSymbol(t.segments.data(), g_sk_timeline, t.segments.size() * sizeof(long long)));
  XY_CUDA_CHECK(cudaMemcpyFromSymbol(t.ctas.data(), g_sk_timeline_cta, t.ctas.size() * sizeof(long long)));
  const std::vector<long long> empty(t.segments.size(), -1);
  XY_CUDA_CHECK(cudaMemcpyToSymbol(g_sk_timeline, empty.data(), t.segments.size() * sizeof(long long)));
  XY_CUDA_CHECK(cudaMemcpyToSymbol(g_sk_timeline_cta, empty.data(), t.ctas.size() * sizeof(long long)));
  // A copy from pageable memory may return before it lands; a launch on a non-blocking stream
  // must not race it.
  XY_CUDA_CHECK(cudaDeviceSynchronize());
  return t;
}
#endif

size_t wgmma_sk_workspace_bytes(int bm, int bn, int ctas_per_sm, int m, int n, int k) {
  const SkPlan plan = make_plan(bm, bn, ctas_per_sm, m, n, k);
  if (!plan.has_split_tiles) return 0;
  return counters_bytes(plan.grid) + size_t(plan.grid) * bm * bn * sizeof(float);
}

cudaError_t launch_wgmma_sk(int bm, int bn, int ctas_per_sm, const __nv_bfloat16* x, const __nv_bfloat16* w,
                            __nv_bfloat16* y, int m, int n, int k, void* workspace, bool pdl, cudaStream_t stream) {
  if (ctas_per_sm == 1) {
    if (bm == 128 && bn == 256) return launch<128, 256, 1>(x, w, y, m, n, k, workspace, pdl, stream);
    if (bm == 128 && bn == 128) return launch<128, 128, 1>(x, w, y, m, n, k, workspace, pdl, stream);
    if (bm == 64 && bn == 256) return launch<64, 256, 1>(x, w, y, m, n, k, workspace, pdl, stream);
  } else if (ctas_per_sm == 2 && bm == 128 && bn == 128) {
    return launch<128, 128, 2>(x, w, y, m, n, k, workspace, pdl, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
