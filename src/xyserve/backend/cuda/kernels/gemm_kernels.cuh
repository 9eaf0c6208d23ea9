// Launchers of the GEMM kernel family, one per compiled tile; gemm.cu dispatches to them after
// checking shapes. Each returns the CUDA launch error (never throws). The split-K wgmma kernel is
// not PDL-aware and is always launched plainly.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>
#if XY_GEMM_TIMELINE
#include <vector>
#endif

#include "xyserve/backend/cuda/kernels/launch.cuh"

namespace xy::cuda::gemm_detail {

// Tensor map of a row-major bf16 matrix [rows, cols], boxes of [box_rows, 64] with 128-byte
// swizzle (the wgmma kernels' operand and output tiles); loads past `rows` return zeros, stores
// past it are dropped.
bool make_map(CUtensorMap* map, const __nv_bfloat16* base, int rows, int cols, int box_rows);
// Tensor map of the output y [rows, cols] for TMA stores of boxes of [box_cols, box_rows]: 128-byte
// swizzle for 64 columns, none for fewer (store_tile_by_slabs and, with 8-row boxes,
// store_tile_transposed_by_slabs, gemm_wgmma_consumer.cuh).
bool make_out_map(CUtensorMap* map, const __nv_bfloat16* base, int rows, int cols, int box_cols, int box_rows = 64);
// Rows of x's box for a kernel whose tiles hold `tile_rows` rows of x: M rounded up to 8 (a whole
// swizzle atom) when one m-tile holds all of M, else the tile's rows. TMA spends time on every row
// of a box, zero-filled or not: at small M a tile-high x box cost as many rows per K block as W's
// (docs/PERFORMANCE.md, seventh session). The tile's rows past the box keep stale shared memory;
// each output row depends on its own row of x only, and rows of y past M are never stored.
inline int x_box_rows(int m, int tile_rows) { return m < tile_rows ? (m + 7) / 8 * 8 : tile_rows; }
// SMs of the current device, for the persistent grids (not cached: the devices of one process may
// differ; the query is a lookup in the runtime's device properties). Defined in gemm_wgmma.cu.
int num_sms();

// cudaFuncSetAttribute applies to the current device only, so a kernel's dynamic shared memory
// limit is raised once per device that launches it (devices 0..63; `done` holds one bit per
// device, one mask per kernel): a process that drives several GPUs from its threads (tensor
// parallelism) needs it on each.
inline cudaError_t allow_dynamic_smem(const void* kernel, int bytes, std::atomic<uint64_t>& done) {
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

// Clusters of `cluster` CTAs of `kernel` that can be resident at once on the current device (the
// persistent clustered grids' size), asked once per device and kept in `cache` (one per kernel).
template <class Kernel>
int resident_clusters(Kernel kernel, int cluster, int threads, int smem_bytes, std::atomic<int> (&cache)[64]) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device < 64) {
    if (const int known = cache[device].load(std::memory_order_relaxed); known > 0) return known;
  }
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim = {static_cast<unsigned>(cluster), 1, 1};
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(cluster));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters < 1) {
    (void)cudaGetLastError();
    clusters = num_sms() / cluster > 0 ? num_sms() / cluster : 1;
  }
  if (device < 64) cache[device].store(clusters, std::memory_order_relaxed);
  return clusters;
}

using xy::cuda::launch_kernel;  // kernels/launch.cuh

// Weight-streaming kernel for M <= `tok` (8, 16 or 32; a larger M runs ceil(M / tok) passes
// over W): one CTA per SM owns an even share of W's rows, whole (gemm_gemv.cu). PDL-aware
// (`pdl`); no workspace. Preconditions: k % 32 == 0, pointers 16-byte aligned; any n >= 1.
//
// Launch configuration: gemv_config() derives it from the shape; benchmarks pass their own to
// compare. groups x unroll: 8-row groups of W per block x 32-column chunks per warp step, 8 x 1
// or 4 x 2 (tok = 32: 4 x 2 only); prefetch_steps: how many steps ahead each warp prefetches
// its W lines into L2 (0: none). The defaults are measured (gemm_bench's gemv ablation, H200,
// 2026-11-25, Llama-3-8B shapes at M = 1, 8, 16): prefetching cost 2-25%, and 4 x 2 beat 8 x 1
// everywhere but qkv (18.5 against 18.3 µs at M = 1); e.g. down M = 1: 4 x 2 32.8 µs, 8 x 1 46.9.
inline constexpr int kGemvPrefetchSteps = 0;
struct GemvConfig {
  int groups = 8;
  int unroll = 1;
  int prefetch_steps = kGemvPrefetchSteps;
};
GemvConfig gemv_config(int tok, int n);
cudaError_t launch_gemv(int tok, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                        int m, int n, int k, bool pdl, cudaStream_t stream,
                        const GemvConfig* config = nullptr);

// Stream-K weight-streaming kernel with `tok` rows of x per tile and W blocks of `bn` rows x
// 8192 / bn columns: (tok, bn) in {16, 32, 64} x {128, 64} and (16, 32).
// Preconditions: n % bn == 0, k % (8192 / bn) == 0, pointers 16-byte aligned, workspace of
// stream_workspace_bytes() bytes, zero-filled. PDL-aware (`pdl`).
size_t stream_workspace_bytes(int tok, int bn, int m, int n, int k);
cudaError_t launch_stream(int tok, int bn, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          __nv_bfloat16* y, int m, int n, int k, void* workspace, bool pdl,
                          cudaStream_t stream);

// TMA + wgmma kernel, 128 x `bn` output tile (bn = 128 or 256), in clusters of `cluster` CTAs
// (1 or 2) along M that load W's box once for both by multicast; split along K into
// wgmma_splits() parts when there are too few tiles to fill the GPU. Preconditions:
// n % bn == 0, k % 64 == 0, pointers 16-byte aligned, workspace of wgmma_workspace_bytes()
// bytes (none when unsplit), zero-filled.
int wgmma_splits(int bn, int cluster, int m, int n, int k);
size_t wgmma_workspace_bytes(int bn, int cluster, int m, int n, int k);
cudaError_t launch_wgmma(int bn, int cluster, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                         int m, int n, int k, void* workspace, cudaStream_t stream);

// Stream-K TMA + wgmma kernel (gemm_wgmma_sk.cu), bm x bn output tile with (bm, bn, ctas_per_sm)
// in {(128, 256, 1), (128, 128, 1), (64, 256, 1), (128, 128, 2)}: a persistent grid of at most
// ctas_per_sm CTAs per SM, each running an equal share of the (tile, K block) iterations;
// partial tiles summed in the workspace.
// Preconditions: n % bn == 0, k % 64 == 0, pointers 16-byte aligned, workspace of
// wgmma_sk_workspace_bytes() bytes (none when no tile is shared by CTAs), zero-filled.
// PDL-aware (`pdl`).
size_t wgmma_sk_workspace_bytes(int bm, int bn, int ctas_per_sm, int m, int n, int k);
cudaError_t launch_wgmma_sk(int bm, int bn, int ctas_per_sm, const __nv_bfloat16* x, const __nv_bfloat16* w,
                            __nv_bfloat16* y, int m, int n, int k, void* workspace, bool pdl, cudaStream_t stream);

// Data-parallel TMA + wgmma kernel (gemm_wgmma_dp.cu), bm x bn output tile with bm = 64 and
// bn in {64, 96, 128, 192}, or bm = 128 and bn in {96, 128, 144, 192, 224}: a persistent grid of
// one CTA per SM runs whole tiles, m-tiles varying fastest; no split of K, no workspace.
// Preconditions: n % 16 == 0 (not of bn: columns past n are not stored), k % 64 == 0, pointers
// 16-byte aligned. PDL-aware (`pdl`).
cudaError_t launch_wgmma_dp(int bm, int bn, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                            int m, int n, int k, bool pdl, cudaStream_t stream);

// Swapped TMA + wgmma kernel for small M (gemm_wgmma_swap.cu): tiles of bx rows of x by bw rows of
// W computed as W · xᵀ (W rows as wgmma's m), in clusters of `cluster` CTAs that share x's box by
// multicast (kShareX: neighbouring W tiles), share W's (kShareW: neighbouring x tiles), or split
// the tile's K blocks and add up in distributed shared memory (kSplitK). (bx, bw, cluster, mode):
// the combinations listed in launch_wgmma_swap (gemm_wgmma_swap.cu), bx a multiple of 8 up to 200
// (those from 72 up store y through shared memory and TMA), bw a multiple of 8 up to 256, in
// consumers of m_blocks x 64 W rows (the last one's partly empty where bw is not a multiple of
// that). Preconditions as launch_wgmma_dp's. PDL-aware (`pdl`).
enum class SwapCluster { kShareX, kShareW, kSplitK };
cudaError_t launch_wgmma_swap(int bx, int bw, int cluster, SwapCluster mode, int m_blocks, const __nv_bfloat16* x,
                              const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k, bool pdl,
                              cudaStream_t stream);

// The stream-K kernel's timeline instrument, compiled in only with the CMake option
// XY_GEMM_TIMELINE (a bench build; gemm_bench --timeline prints it). Thread 0 of consumer 0 of
// each CTA (the first kSkTimelineCtas: every CTA of a grid of up to 2 per SM on 132 SMs) records
// its segments (runs of K blocks of one tile, in its order; the first kSkTimelineSegments) and the
// CTA's own stamps. Clock stamps are clock64() (cycles of the CTA's SM, comparable only within a
// CTA); the *Ns fields are %globaltimer (ns, comparable across CTAs).
enum SkSegmentField : int {
  kSegTile,          // tile index in the schedule's order (m-major at mid M)
  kSegKbBegin,       // K blocks [kb_begin, kb_end) of the tile
  kSegKbEnd,
  kSegSplit,         // 1: part of a tile shared with other CTAs (fix-up through the workspace)
  kSegCompleted,     // 0: added its part and left; 1: stored the tile (whole, or last to add);
                     // 2: stored it without adding (every other part was in: read back only)
  kSegStart,         // clock: the consumer starts the segment
  kSegFirstFull,     // clock: its first K block's full barrier passed
  kSegMainDone,      // clock: after the last wgmma wait
  kSegFixupDone,     // clock: after the reduction / read-back (split segments; -1 otherwise)
  kSegEpilogueDone,  // clock: the segment's end (the next one's start): its stores issued, or
                     // its part added when another CTA stores the tile (= kSegFixupDone then)
};
inline constexpr int kSkSegmentFields = 10;
enum SkCtaField : int {
  kCtaConsumerIn,   // clock: the consumer's kernel entry
  kCtaConsumerOut,  // clock: its exit (after its last store has read shared memory)
  kCtaFirstLoad,    // clock: the producer issued its first TMA load (-1: none)
  kCtaLastLoad,     // clock: ... its last
  kCtaEntryNs,      // globaltimer at the consumer's entry
  kCtaExitNs,       // ... and exit
  kCtaSm,           // %smid
  kCtaNumSegments,  // the CTA's segments, recorded or not
};
inline constexpr int kSkCtaFields = 8;
// (Named apart from the attention instrument's kTimelineCtas in xy::cuda, which is 132.)
inline constexpr int kSkTimelineCtas = 2 * 132;
inline constexpr int kSkTimelineSegments = 16;
// The swapped kernel's ring instrument (same option): per CTA (the first kSwapTimelineCtas) and
// K block of its first group (the first kSwapTimelineBlocks), clock64() stamps of the producer
// (before it waits for the block's stage to be released, and once its loads are issued; the first
// kStages blocks need no wait: both stamps are at their issue) and of consumer 0's leader (before
// its wait for the block's data, after it, and after the block's wgmma_wait<1>, i.e. once the
// previous block's MMAs are done), and %globaltimer beside the first (ns: the SM clock is the
// ratio of the two over a group).
enum SwapBlockField : int {
  kSwapEmptyWait,  // producer
  kSwapIssued,
  kSwapFullWait,   // consumer 0
  kSwapFullDone,
  kSwapPrevDone,
  kSwapFullWaitNs,
};
inline constexpr int kSwapBlockFields = 6;
inline constexpr int kSwapTimelineCtas = 132;
inline constexpr int kSwapTimelineBlocks = 256;
#if XY_GEMM_TIMELINE
// [kSwapTimelineCtas][kSwapTimelineBlocks][kSwapBlockFields], -1 where nothing was stamped;
// taken (and cleared) as take_sk_timeline does.
std::vector<long long> take_swap_timeline();
struct SkTimeline {
  std::vector<long long> segments;  // [kSkTimelineCtas][kSkTimelineSegments][kSkSegmentFields]
  std::vector<long long> ctas;      // [kSkTimelineCtas][kSkCtaFields]
};
// Waits for the device, returns what the launches since the last call recorded and clears it
// (-1: no CTA, no segment, no stamp). Call it once before the launch to look at (the arrays start
// at zero) and let only that launch run in between: every launch writes the same places.
SkTimeline take_sk_timeline();
#endif

}  // namespace xy::cuda::gemm_detail
