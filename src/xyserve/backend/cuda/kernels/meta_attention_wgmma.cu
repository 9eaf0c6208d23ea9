// Hopper attention over the meta work list (issue 6, third version): wgmma (sm_90a) issued by
// warpgroups, with a producer warpgroup feeding two consumer warpgroups through shared-memory
// rings that complete on mbarriers (the FlashAttention-3 design, written here from its ideas).
// The producer warps and the task ring they share with the consumers are in
// meta_attention_wgmma_producer.cuh; the consumers, the kernel and its launcher here.
//
// A persistent CTA of 3 warpgroups walks the tasks (one CTA per SM: 225 KB of shared memory at
// head_dim 128). Per task, a GQA-packed query tile of up to 128 rows against a KV span read
// through the block table, in blocks of 128 keys:
//   producer (warpgroup 0, 56 registers; warps 2 and 3 leave at once):
//     warp 0 takes the tasks (see Dealing), publishes each in a 2-slot task ring (and describes
//       the next one right away, so its dependent loads overlap this task's), and loads the
//       K and V blocks by TMA into two rings (kStages each): one 3-D box per (page, 64-column
//       panel) of the paged cache (encode_kv_tensor_map), 128B-swizzled as wgmma reads them,
//       issued by lane i for the block's i-th page and completing on the stage's "full" mbarrier
//       by byte count. A stage is refilled once its "empty" mbarrier says the 8 consumer warps are
//       done with it. The rings run across task boundaries: the producer is kStages blocks ahead
//       of the consumers whatever the task, so a step of many small tasks streams like one long
//       one.
//     warp 1 loads each task's query tile with cp.async into one of two Q buffers (task t into
//       buffer t % 2), so the next task's tile lands while the consumers finish this one.
//   consumers (warpgroups 1 and 2, 224 registers), each 64 query rows:
//     S = Q K^T            wgmma m64n128k16, Q and K from shared memory
//     mask, online softmax fp32 registers, base 2, the masking rules of meta_attention.cu
//     O += P V             wgmma m64nDk16, P (bf16) from the S registers, V MN-major
//   The next block's Q K^T is issued before this block's P V (each its own wgmma group), so the
//   softmax of one block runs while the tensor cores work on the other (FA3's intra-warpgroup
//   overlap); K is released as soon as its scores are in registers, V after its P V. And the
//   two consumers take turns to issue (pingpong, FA3's inter-warpgroup overlap: named barriers
//   kTurnBarrier + c), so one's softmax runs while the other's wgmmas fill the tensor cores.
//   Epilogue: the normalised rows are written in bf16 into the consumer's own rows of the task's
//   Q buffer (done with by then) and copied out as 16-byte row segments; the buffer goes back to
//   the Q loader after that. Partials (fp32) are stored from registers.
// A tile of at most 64 rows (a decode, a verify, a short chunk, any tile of a 64-row list) fills
// one consumer's rows: both consumers then take the same 64 rows and alternate key blocks, and
// consumer 1 hands its softmax state to consumer 0 through shared memory, which merges the two
// by log-sum-exp and writes the rows. There each consumer finishes a block (P V retired, K and V
// released) before it starts its next, without turns: such tiles read the cache, not the tensor
// cores, and a V stage must not wait for the K load issued just before its refill (the producer
// refills in ring order, K then V: with P V trailing the next block's Q K^T, every block paid a
// whole load latency). With 2 stages each consumer's next block (64 KB at head_dim 128) loads
// once its last is done: 128 KB per (load latency + one block's compute, ~0.8 us), past the
// ~32 KB/us per SM of a full-rate read for latencies up to ~3 us.
//
// Keys: a task lists the cache slots [key_base, key_base + num_keys), key_base the multiple of 128
// at or below its first visible slot, so block b is slots key_base + 128 b onwards and starts on a
// page boundary (block sizes are powers of two). A slot below num_computed (any slot, for a task
// without a tree) is the key at position = slot, visible to the mask when in [a_begin, a_end); a
// tree task's slots from num_computed on are its step rows, visible when their position is in
// the span. Keys outside that (before the span or window, past the span, rows of the 128-key
// block past the list) are masked to -inf. Every stage row holds finite data all the same: the
// TMA boxes of a block cover all 128 rows, a box past the list loads a page the task holds (the
// one of its first visible slot) instead, and the cache holds finite bf16 (zero-initialised,
// written only with finite values), so P = 0 times a stale V stays 0.
//
// Outputs are those of launch_attention(kTensorCore) (kernels.h): normalised bf16 rows, or the
// (o, max in log2 units, sum) partial of a split task at row partial * partial_rows + r.
//
// Dealing: eager launches (task_count null) take tasks greedily from a per-stream device counter in list
// order (largest first), as the hardware scheduler deals one-CTA-per-task grids; graph launches
// (task_count set) deal the list in XY-Serve's symmetric round-robin over a grid sized by the
// list's capacity, so the launch never depends on the step. Not batch invariant (a row's
// reduction order depends on its tile's size: split or not); deterministic mode runs the
// tensor-core kernel. Deterministic run to run: no atomics touch the arithmetic.
//
// The kernel's first instruction allows a dependent launch (griddepcontrol.launch_dependents):
// a kernel launched after it with programmatic stream serialization (the o-projection GEMM) may
// be scheduled early and still waits for this grid's completion before it reads the output.
#include <cuda.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/attention_mask.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_wgmma_producer.cuh"
#include "xyserve/backend/cuda/kernels/meta_attention_wgmma_ptx.cuh"
#include "xyserve/backend/cuda/tensor_maps.h"

namespace xy::cuda {
namespace {

using namespace wgmma;
using namespace wgmma_attention;  // TaskInfo, SharedState and the producer warps

template <int kHeadDim_>
struct WgmmaAttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kRows = 64 * kConsumers;  // query rows of the CTA's tile
  static constexpr int kKeys = 128;              // keys per block
  // Ring depth per K and V: head_dim 128 fills the 227 KB with 2 (and two Q buffers); head_dim
  // 64 takes 4. Chosen by the shared-memory budget, not yet by a measurement.
  static constexpr int kStages = kHeadDim == 128 ? 2 : 4;
  static constexpr int kPanels = kHeadDim / 64;  // 64-column blocks of a head vector (one TMA box wide)
  static constexpr int kChunks = kHeadDim / 8;   // 16-byte chunks per head vector
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kKvBytes = kKeys * kHeadDim * 2;  // one block of K (or of V)
  static constexpr int kScoreRegs = kKeys / 2;           // S: 64 x kKeys fp32 over 128 threads
  static constexpr int kOutRegs = kHeadDim / 2;          // O: 64 x kHeadDim
  // Merge buffer: consumer 1's O, [value][thread], then the row max and sum of its 64 rows.
  static constexpr int kMergeBytes = 128 * kOutRegs * 4 + 2 * 64 * 4;
  // +1024: dynamic shared memory is only 16-byte aligned; swizzled tiles need 1024.
  static constexpr size_t kSmemBytes =
      1024 + 2 * size_t(kQBytes) + 2 * size_t(kStages) * kKvBytes + size_t(kMergeBytes);
  // ptxas -v: no spills at 56 / 224 (the producer spills at 40: warp 0 holds the next task's
  // description while it loads this one's blocks); the consumers hold S, O and P, 160 registers.
  // Pingpong turns between the consumers on tiles over 64 rows (consume); false restores the
  // second version's free-running consumers (for an A/B on the device).
  static constexpr bool kPingpong = true;
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = 224;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "P V wrappers exist for n = 64 and 128");
  static_assert(kKeys == 128, "S = Q K^T is one m64n128 wgmma chain");
  static_assert(kQBytes % 1024 == 0 && kKvBytes % 1024 == 0 && kMergeBytes % 16 == 0);
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= 65536, "register file");
};

// Named barriers (0 is __syncthreads).
constexpr int kMergeFullBarrier = 2;   // consumer 1's state is in the merge buffer
constexpr int kMergeEmptyBarrier = 3;  // consumer 0 has read it
constexpr int kTurnBarrier = 4;        // + c: consumer c's turn to issue wgmmas (pingpong)
constexpr int kOutBarrier = 6;         // + c: consumer c's rows are in shared memory for the TMA store

// Timeline instrument (CMake option XY_ATTENTION_TIMELINE, off in every real build): consumer 0
// of each CTA stamps clock64() at its tasks' phases (TimelineField in kernels.h), for
// bench/cuda/attention_bench to say where a tile's time goes between its blocks' wgmmas.
#ifndef XY_ATTENTION_TIMELINE
#define XY_ATTENTION_TIMELINE 0
#endif
constexpr bool kTimeline = XY_ATTENTION_TIMELINE != 0;
#if XY_ATTENTION_TIMELINE
__device__ long long g_timeline[kTimelineCtas][kTimelineTasks][kTimelineFields];
#endif

// ---------------------------------------------------------------------------------------------
// Consumer `c` (0 or 1): its 64 rows of the tile, or (tile of at most 64 rows) the tile's rows
// against every other key block.
template <class T, class Shared>
__device__ void consume(const AttentionArgs& a, int c, uint8_t* q_s, const uint8_t* k_s, const uint8_t* v_s,
                        float* merge_s, const CUtensorMap* o_map, Shared& sh) {
  const int ctid = threadIdx.x - 128 * (1 + c);
  const int warp = ctid / 32, lane = ctid % 32;
  const int gq = lane / 4, tq = lane % 4;  // accumulator fragment coordinates
  const float scale_log2 = a.scale * 1.4426950408889634f;
  float* const merge_rows = merge_s + T::kOutRegs * 128;  // [64] row max, then [64] row sum
  bool merge_written = false;  // consumer 1 has handed a state over (the buffer may be in use)

  // Consumer 0 takes the first turn. Each later arrival of consumer 1 on consumer 0's turn
  // barrier answers one of consumer 0's turns, and consumer 0 takes this first one back at the
  // end, so both turn barriers end balanced.
  if (T::kPingpong && c == 1) ptx::named_barrier_arrive(kTurnBarrier + 0, 256);

  // Thread 0 of a consumer that wrote its rows by TMA store releases their Q buffer only once the
  // store has read it, and waits for that at its next task's query tile (or at the end), not
  // right after issuing it: the wait held the consumer's first warp ~0.5 us a tile (timeline).
  int pending_release = -1;  // Q buffer slot, or -1
  auto release_stored = [&] {
    if (pending_release < 0) return;
    ptx::bulk_wait_group_read<0>();
    ptx::mbarrier_arrive(&sh.q_empty[pending_release]);
    pending_release = -1;
  };

  uint32_t g = 0;  // blocks consumed so far, as the producer counts them
  for (uint32_t t = 0;; ++t) {
    const int slot = t % 2;
    ptx::mbarrier_wait(&sh.task_full[slot], (t / 2) & 1);
    [[maybe_unused]] long long stamps[kTimelineFields] = {};
    if constexpr (kTimeline) stamps[kTaskIn] = clock64();
    TaskInfo ti = sh.task[slot];
    ptx::mbarrier_arrive(&sh.task_empty[slot]);
    // Every field through a shuffle from lane 0: the compiler then knows the branches around
    // the wgmmas are warp-uniform, and does not serialize them.
    int32_t* const fields = reinterpret_cast<int32_t*>(&ti);
#pragma unroll
    for (int i = 0; i < int(sizeof(TaskInfo) / 4); ++i) fields[i] = __shfl_sync(0xffffffffu, fields[i], 0);
    if (ti.index < 0) break;

    const int32_t rows = ti.q_count * a.group;
    const bool split = rows <= 64;  // both consumers on rows 0-63, alternate key blocks
    const int row_base = split ? 0 : 64 * c;
    const int32_t num_blocks = ti.num_blocks;
    const bool masked = ti.mask != int32_t(meta::MaskKind::kNone);
    const bool tree = ti.mask == int32_t(meta::MaskKind::kTree);
    const int32_t window = masked ? a.window : 0;
    const int32_t* parents = ti.tree_parents >= 0 ? a.tree_parents + ti.tree_parents : nullptr;
    uint8_t* const q_tile = q_s + slot * T::kQBytes;
    // This thread's two rows (gq and gq + 8 of its warp's 16): live, position (below, once the
    // tile is in), new-row index.
    int32_t row_pos[2], row_new[2];
    bool row_live[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row_base + warp * 16 + gq + 8 * h;
      row_live[h] = r < rows;
      row_new[h] = ti.q_begin + r / a.group;
    }

    float o[T::kOutRegs];
#pragma unroll
    for (int i = 0; i < T::kOutRegs; ++i) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float s[T::kScoreRegs];        // S of the block in hand, then its P in fp32
    uint32_t p[T::kKeys / 16][4];  // P of the previous block: the A fragments of its 8 k-steps
#pragma unroll
    for (int i = 0; i < T::kScoreRegs; ++i) s[i] = 0.0f;

    ptx::mbarrier_wait(&sh.q_full[slot], (t / 2) & 1);
    if constexpr (kTimeline) stamps[kQueryIn] = clock64();
    release_stored();
    fence_proxy_async_shared();  // the tile came by cp.async (generic proxy); wgmma reads it (async)
    // Rows' visible keys by local index in a block, for the range mask of a tile without a tree:
    // slots [a_begin, a_end), clipped by position (causal) and window. Per row: [key_lo, key_hi).
    int32_t key_lo[2], key_hi[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_pos[h] = row_live[h] ? sh.q_pos[slot][row_new[h] - ti.q_begin] : 0;
      key_lo[h] = ti.a_begin;
      key_hi[h] = ti.a_end;
      if (masked) {
        key_hi[h] = min(key_hi[h], row_pos[h] + 1);
        if (window > 0) key_lo[h] = max(key_lo[h], row_pos[h] - window + 1);
      }
      if (!row_live[h]) key_hi[h] = key_lo[h];
      // As offsets from this lane's first key column (2 tq) of a block's first slot key_base.
      key_lo[h] -= ti.key_base + 2 * tq;
      key_hi[h] -= ti.key_base + 2 * tq;
    }
    const uint32_t q_addr = ptx::smem_addr(q_tile) + row_base * 128;

    auto stage_of = [&](int32_t blk) { return int((g + uint32_t(blk)) % T::kStages); };
    auto phase_of = [&](int32_t blk) { return ((g + uint32_t(blk)) / T::kStages) & 1; };
    // A warp's release of a stage: every lane is past the wgmma.wait that retired its reads.
    auto release = [&](uint64_t* empty) {
      __syncwarp();
      if (lane == 0) ptx::mbarrier_arrive(empty);
    };
    // The other consumer's block: release it in ring order (after it filled, so that this
    // arrival cannot count towards the stage's previous use).
    auto release_other = [&](int32_t blk) {
      const int st = stage_of(blk);
      ptx::mbarrier_wait(&sh.k_full[st], phase_of(blk));
      release(&sh.k_empty[st]);
      ptx::mbarrier_wait(&sh.v_full[st], phase_of(blk));
      release(&sh.v_empty[st]);
    };

    // Pingpong turns of tiles over 64 rows (both consumers on every block): consumer c waits on
    // barrier kTurnBarrier + c (its 128 threads and the other's 128 arrivals), then passes the
    // turn on by arriving on the other's. A consumer arrives again on a barrier only after
    // taking a turn that the other passed after syncing on it, so no barrier ever sees one
    // consumer's arrivals twice in a generation.
    // (Constant barrier ids: with an id in a register, ptxas reserves all 16 barriers.)
    auto take_turn = [&] {
      if (!T::kPingpong) return;
      if (T::kPingpong && c == 0) ptx::named_barrier_sync(kTurnBarrier + 0, 256);
      else ptx::named_barrier_sync(kTurnBarrier + 1, 256);
    };
    auto pass_turn = [&] {
      if (!T::kPingpong) return;
      if (c == 0) ptx::named_barrier_arrive(kTurnBarrier + 1, 256);
      else ptx::named_barrier_arrive(kTurnBarrier + 0, 256);
    };
    // Operand fences keep the compiler's plain register accesses on their side of the wgmmas
    // (CUTLASS's warpgroup_fence_operand); the hardware ordering is wgmma.fence / wait's.
    auto fence_s = [&] {
#pragma unroll
      for (int i = 0; i < T::kScoreRegs; ++i) fence_operand(s[i]);
    };
    auto fence_o = [&] {
#pragma unroll
      for (int i = 0; i < T::kOutRegs; ++i) fence_operand(o[i]);
    };
    auto fence_p = [&] {
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) fence_operand(p[kk][i]);
    };
    // S = Q K^T over the block in K stage `st`: one wgmma group.
    auto issue_qk = [&](int st) {
      const uint32_t k_addr = ptx::smem_addr(k_s + st * T::kKvBytes);
      fence_s();
      ptx::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < T::kHeadDim / 16; ++ks) {
        // Column block ks / 4 of both tiles, then +32 bytes per 16 columns inside the swizzled row.
        const uint32_t col = (ks % 4) * 32;
        const uint64_t dq = desc_sw128(q_addr + (ks / 4) * T::kRows * 128 + col, 16);
        const uint64_t dk = desc_sw128(k_addr + (ks / 4) * T::kKeys * 128 + col, 16);
        ptx::wgmma_m64n128k16_bf16(s, dq, dk, ks > 0 ? 1 : 0);
      }
      ptx::wgmma_commit();
      fence_s();
    };
    // O += P V over the block in V stage `st`: one wgmma group.
    auto issue_pv = [&](int st) {
      const uint32_t v_addr = ptx::smem_addr(v_s + st * T::kKvBytes);
      fence_p();
      fence_o();
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk) {
        // 16 keys = two 8-row groups of 1024 bytes; column blocks T::kKeys * 128 bytes apart.
        const uint64_t dv = desc_sw128(v_addr + kk * 2048, T::kKeys * 128);
        if constexpr (T::kHeadDim == 128) {
          wgmma_m64n128k16_rs_tn(o, p[kk], dv, 1);
        } else {
          wgmma_m64n64k16_rs_tn(o, p[kk], dv, 1);
        }
      }
      ptx::wgmma_commit();
      fence_p();
      fence_o();
    };
    // Masks the scores of block `blk` (-inf where hidden), then P = 2^(S scale - new max) in s,
    // the max kept in log2 units (the scale folded into one FFMA per score, as FA3 does); returns
    // the factor on the old state and this block's lane-partial row sums.
    auto softmax = [&](int32_t blk, float (&scale_old)[2], float (&row_sum)[2]) {
      const int32_t k0 = blk * T::kKeys;
      const int32_t p0 = ti.key_base + k0;  // the block's first slot (its position, in range A)
      // Mask per element only where some (row, key) pair of the block may be hidden.
      const bool whole = p0 >= ti.a_begin && p0 + T::kKeys <= ti.a_end &&
                         (!masked || (p0 + T::kKeys - 1 <= ti.pos_lo && (window == 0 || p0 > ti.pos_hi - window)));
      if (!whole && !tree) {
        // One range of local key indices per row (key_lo / key_hi): two compares a score.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int32_t lo = key_lo[h] - k0, hi = key_hi[h] - k0;
#pragma unroll
          for (int j = 0; j < T::kKeys / 8; ++j)
#pragma unroll
            for (int c2 = 0; c2 < 2; ++c2) {
              float& v = s[4 * j + 2 * h + c2];
              v = 8 * j + c2 >= lo && 8 * j + c2 < hi ? v : -INFINITY;
            }
        }
      } else if (!whole) {
#pragma unroll
        for (int j = 0; j < T::kKeys / 8; ++j) {
#pragma unroll
          for (int c2 = 0; c2 < 2; ++c2) {  // this lane's keys 8j + 2tq + c2
            const int32_t kk = k0 + 8 * j + 2 * tq + c2;
            const int32_t slot = ti.key_base + kk;
            bool present;
            int32_t kp = slot, kt = -1;  // position; tree row (-1: a key by position)
            if (kk >= ti.num_keys) {
              present = false;
            } else if (slot >= ti.num_computed) {
              kt = slot - ti.num_computed;
              kp = __ldg(a.positions + ti.req_first_row + kt);
              present = kp >= ti.kv_begin && kp < ti.kv_end;
            } else {
              present = slot >= ti.a_begin && slot < ti.a_end;
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              bool visible = present && row_live[h] && kp <= row_pos[h];
              if (window > 0) visible = visible && kp > row_pos[h] - window;
              if (kt >= 0) visible = visible && attn::tree_visible(parents, kt, row_new[h]);
              float& v = s[4 * j + 2 * h + c2];
              v = visible ? v : -INFINITY;
            }
          }
        }
      }
      // Online softmax: the row max over the 4 lanes of a row, then P = 2^(s scale - max).
      float m_use[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < T::kKeys / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[h], mx * scale_log2);  // scale > 0: the max commutes with it
        m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row that saw nothing keeps p = 0
        scale_old[h] = ex2(m[h] - m_use[h]);
        m[h] = m_new;
      }
      // Row sums in two chains per row (independent adds: no 32-long dependency).
      float sum[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
      for (int i = 0; i < T::kScoreRegs; ++i) {
        const int h = (i / 2) % 2;
        s[i] = ex2(fmaf(s[i], scale_log2, -m_use[h]));
        sum[h][(i / 4) % 2] += s[i];
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) row_sum[h] = sum[h][0] + sum[h][1];
    };
    auto pack_p = [&] {
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk) {
        p[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        p[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
      }
    };

    float scale_old[2], row_sum[2];
    if (split) {
      // A tile of at most 64 rows: the blocks of this consumer's parity, each finished (P V
      // retired, both stages released) before the next is started. No overlap inside the
      // warpgroup: the other consumer's block fills the tensor cores meanwhile, and the V stage
      // goes back as soon as its own block is done, so the producer's next V load never waits
      // for a K load it has just issued (it did when P V trailed the next block's Q K^T: then
      // every block paid a full load latency, and the KV read rate of decodes fell to 3 TB/s).
      // The other consumer's blocks are released in ring order (release_other).
      for (int32_t b = c; b < num_blocks; b += 2) {
        if (b >= 1) release_other(b - 1);
        ptx::mbarrier_wait(&sh.k_full[stage_of(b)], phase_of(b));
        if constexpr (kTimeline) if (b == c) stamps[kFirstKeysIn] = clock64();
        issue_qk(stage_of(b));
        ptx::wgmma_wait<0>();
        fence_s();
        release(&sh.k_empty[stage_of(b)]);
        softmax(b, scale_old, row_sum);  // on the first block m was -inf: scale_old is 0, o and l are 0
#pragma unroll
        for (int i = 0; i < T::kOutRegs; ++i) o[i] *= scale_old[(i / 2) % 2];
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * scale_old[h] + row_sum[h];  // lane-partial sums
        pack_p();
        ptx::mbarrier_wait(&sh.v_full[stage_of(b)], phase_of(b));
        issue_pv(stage_of(b));
        ptx::wgmma_wait<0>();
        fence_o();
        fence_p();
        release(&sh.v_empty[stage_of(b)]);
      }
      if (num_blocks > 0 && (num_blocks - 1) % 2 != c) release_other(num_blocks - 1);  // the other's last
    } else if (num_blocks > 0) {
      // Both consumers take every block, in turns (pingpong): each issues its wgmmas only after
      // the other has issued its own for the same step, so the tensor cores run one warpgroup's
      // Q K^T and P V while the other masks and exponentiates (FA3's inter-warpgroup overlap,
      // on top of the overlap inside the warpgroup below). The K and V waits come before the
      // turn: a consumer holding the turn waits for nothing but its own wgmma issue.
      // First block: S only (O is zero, so there is no P V to overlap yet).
      int32_t b = 0;
      ptx::mbarrier_wait(&sh.k_full[stage_of(b)], phase_of(b));
      if constexpr (kTimeline) stamps[kFirstKeysIn] = clock64();
      take_turn();
      issue_qk(stage_of(b));
      pass_turn();
      ptx::wgmma_wait<0>();
      fence_s();
      release(&sh.k_empty[stage_of(b)]);
      softmax(b, scale_old, row_sum);
#pragma unroll
      for (int h = 0; h < 2; ++h) l[h] = row_sum[h];
      pack_p();
      int32_t prev = b;  // the block whose P V is pending
      for (b = 1; b < num_blocks; ++b) {
        // S = Q K^T of this block, then O += P V of the previous one behind it: the tensor cores
        // run the P V while this warpgroup masks and exponentiates the new scores.
        ptx::mbarrier_wait(&sh.v_full[stage_of(prev)], phase_of(prev));
        ptx::mbarrier_wait(&sh.k_full[stage_of(b)], phase_of(b));
        take_turn();
        issue_qk(stage_of(b));
        issue_pv(stage_of(prev));
        pass_turn();
        ptx::wgmma_wait<1>();  // S is in
        fence_s();
        release(&sh.k_empty[stage_of(b)]);
        softmax(b, scale_old, row_sum);
        ptx::wgmma_wait<0>();  // P V is in
        fence_o();
        fence_p();
        release(&sh.v_empty[stage_of(prev)]);
#pragma unroll
        for (int i = 0; i < T::kOutRegs; ++i) o[i] *= scale_old[(i / 2) % 2];
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * scale_old[h] + row_sum[h];  // lane-partial sums
        pack_p();
        prev = b;
      }
      // The last P V, outside the turns (as FA3's): both consumers take exactly num_blocks turns
      // per tile, so the turn comes back to consumer 0 at every tile's end.
      ptx::mbarrier_wait(&sh.v_full[stage_of(prev)], phase_of(prev));
      issue_pv(stage_of(prev));
      ptx::wgmma_wait<0>();
      fence_o();
      release(&sh.v_empty[stage_of(prev)]);
    }
    g += num_blocks;
    if constexpr (kTimeline) stamps[kBlocksDone] = clock64();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    if (split && num_blocks >= 2) {
      // Consumer 1 hands its (o, m, l) to consumer 0, which folds it in by log-sum-exp. Layout
      // of o [value][thread]: each warp access is 32 consecutive words; m and l by tile row.
      if (c == 1) {
        if (merge_written) ptx::named_barrier_sync(kMergeEmptyBarrier, 256);
#pragma unroll
        for (int i = 0; i < T::kOutRegs; ++i) merge_s[i * 128 + ctid] = o[i];
        if (tq == 0) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            merge_rows[warp * 16 + gq + 8 * h] = m[h];
            merge_rows[64 + warp * 16 + gq + 8 * h] = l[h];
          }
        }
        ptx::named_barrier_arrive(kMergeFullBarrier, 256);
        merge_written = true;
        ptx::mbarrier_arrive(&sh.q_empty[slot]);
        continue;
      }
      ptx::named_barrier_sync(kMergeFullBarrier, 256);
      float fa[2], fb[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float mw = merge_rows[warp * 16 + gq + 8 * h];
        const float lw = merge_rows[64 + warp * 16 + gq + 8 * h];
        const float m_new = fmaxf(m[h], mw);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        fa[h] = ex2(m[h] - m_use);
        fb[h] = ex2(mw - m_use);
        l[h] = l[h] * fa[h] + lw * fb[h];
        m[h] = m_new;
      }
#pragma unroll
      for (int i = 0; i < T::kOutRegs; ++i) o[i] = o[i] * fa[(i / 2) % 2] + merge_s[i * 128 + ctid] * fb[(i / 2) % 2];
      ptx::named_barrier_arrive(kMergeEmptyBarrier, 256);
    } else if (split && c == 1) {
      ptx::mbarrier_arrive(&sh.q_empty[slot]);
      continue;  // consumer 0 holds the whole state of a one-block tile
    }

    // Write out: normalised rows, or the partial (o, max, sum) of a split task. The Q loader may
    // refill the Q buffer (task t + 2) by TMA (the async proxy) after the epilogue's plain
    // accesses to it: a proxy fence precedes its release. (The fence itself costs ~0.07 us: the
    // timeline with and without it.)
    const int64_t first_row = ti.req_first_row + ti.q_begin;
    if (ti.partial < 0 && o_map != nullptr && !split && row_base + 64 <= rows) {
      // This consumer's 64 rows are all the task's: through its rows of the Q buffer (no wgmma
      // reads them any more) by stmatrix, then one TMA store per 64-column block, issued by one
      // thread, which releases the buffer once the store has read it; the consumer goes on to
      // its next task while the rows travel to memory (FA3's epilogue). Stores of 16-byte pieces
      // kept the consumer 1.9 us a tile; this takes ~0.5 (attention_bench's timeline, H200).
      float inv[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) inv[h] = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
      const uint32_t tile_addr = ptx::smem_addr(q_tile);
      const int mat = lane / 8;  // the 8x8 matrix whose row this lane addresses: rows + 8 (mat % 2), columns + 8 (mat / 2)
      const int addr_row = row_base + warp * 16 + 8 * (mat % 2) + lane % 8;
#pragma unroll
      for (int jj = 0; jj < T::kHeadDim / 16; ++jj)
        stmatrix_x4(tile_addr + sw128_offset(addr_row, 2 * jj + mat / 2, T::kRows),
                    pack_bf16(o[8 * jj + 0] * inv[0], o[8 * jj + 1] * inv[0]),
                    pack_bf16(o[8 * jj + 2] * inv[1], o[8 * jj + 3] * inv[1]),
                    pack_bf16(o[8 * jj + 4] * inv[0], o[8 * jj + 5] * inv[0]),
                    pack_bf16(o[8 * jj + 6] * inv[1], o[8 * jj + 7] * inv[1]));
      if constexpr (kTimeline) stamps[kStaged] = clock64();
      fence_proxy_async_shared();  // every writer, before the barrier: the TMA store reads via the async proxy
      if (c == 0) ptx::named_barrier_sync(kOutBarrier + 0, 128);
      else ptx::named_barrier_sync(kOutBarrier + 1, 128);
      if (ctid == 0) {
#pragma unroll
        for (int p = 0; p < T::kPanels; ++p)
          tma_store_4d(o_map, tile_addr + p * T::kRows * 128 + row_base * 128, p * 64, 0, ti.kv_head,
                       int(first_row + row_base / a.group));
        ptx::bulk_commit_group();
        pending_release = slot;
      } else {
        ptx::mbarrier_arrive(&sh.q_empty[slot]);
      }
      if constexpr (kTimeline) stamps[kReleased] = clock64();
    } else if (ti.partial < 0) {
      // Through this consumer's rows of the Q buffer (no wgmma reads them any more: this
      // consumer's are retired, and in a split tile consumer 1 has handed over or had no block):
      // each warp writes its 16 rows in the tile's swizzled layout (conflict-free: the 8 rows of
      // a lane group hit 8 distinct 16-byte slots), reads them back as 16-byte row pieces,
      // releases the buffer, then stores the pieces.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row_base + warp * 16 + gq + 8 * h;
        const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
#pragma unroll
        for (int j = 0; j < T::kHeadDim / 8; ++j)
          *reinterpret_cast<uint32_t*>(q_tile + sw128_offset(r, j, T::kRows) + 4 * tq) =
              pack_bf16(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      __syncwarp();
      constexpr int kPieces = 16 * T::kChunks / 32;  // 16-byte pieces of the warp's rows, per lane
      uint4 piece[kPieces];
#pragma unroll
      for (int k = 0; k < kPieces; ++k) {
        const int i = lane + 32 * k, r = row_base + warp * 16 + i / T::kChunks, ch = i % T::kChunks;
        piece[k] = *reinterpret_cast<const uint4*>(q_tile + sw128_offset(r, ch, T::kRows));
      }
      if constexpr (kTimeline) stamps[kStaged] = clock64();
      fence_proxy_async_shared();
      ptx::mbarrier_arrive(&sh.q_empty[slot]);
      if constexpr (kTimeline) stamps[kReleased] = clock64();
      const int64_t out_row_stride = int64_t(a.group) * a.num_kv_heads * T::kHeadDim;
#pragma unroll
      for (int k = 0; k < kPieces; ++k) {
        const int i = lane + 32 * k, r = row_base + warp * 16 + i / T::kChunks, ch = i % T::kChunks;
        if (r < rows) {
          bf16* out = a.out + (first_row + r / a.group) * out_row_stride +
                      int64_t(ti.kv_head * a.group + r % a.group) * T::kHeadDim + ch * 8;
          *reinterpret_cast<uint4*>(out) = piece[k];
        }
      }
    } else {
      // No plain access to the Q buffer in this task: released at once.
      fence_proxy_async_shared();
      ptx::mbarrier_arrive(&sh.q_empty[slot]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row_base + warp * 16 + gq + 8 * h;
        if (!row_live[h]) continue;
        const int64_t prow = int64_t(ti.partial) * a.partial_rows + r;
        float* out = a.partial_out + prow * T::kHeadDim;
#pragma unroll
        for (int j = 0; j < T::kHeadDim / 8; ++j)
          *reinterpret_cast<float2*>(out + 8 * j + 2 * tq) = make_float2(o[4 * j + 2 * h], o[4 * j + 2 * h + 1]);
        if (tq == 0) {
          a.partial_max[prow] = m[h];
          a.partial_sum[prow] = l[h];
        }
      }
    }
#if XY_ATTENTION_TIMELINE
    if (c == 0 && ctid == 0 && blockIdx.x < kTimelineCtas && t < kTimelineTasks) {
      stamps[kWrittenOut] = clock64();
      stamps[kTaskIndex] = ti.index;
      stamps[kNumBlocks] = num_blocks;
      for (int i = 0; i < kTimelineFields; ++i) g_timeline[blockIdx.x][t][i] = stamps[i];
    }
#endif
  }
  release_stored();  // no shared memory may still be read by a store when the CTA exits
  // Balance consumer 0's last arrive on the merge buffer and consumer 1's last pass of the turn,
  // so no barrier is left half-arrived.
  if (c == 1 && merge_written) ptx::named_barrier_sync(kMergeEmptyBarrier, 256);
  if (T::kPingpong && c == 0) ptx::named_barrier_sync(kTurnBarrier + 0, 256);
}

template <int kHeadDim>
__global__ void __launch_bounds__(WgmmaAttentionTraits<kHeadDim>::kThreads, 1)
    wgmma_attention_kernel(const __grid_constant__ AttentionArgs a, const __grid_constant__ CUtensorMap k_map,
                           const __grid_constant__ CUtensorMap v_map, const __grid_constant__ CUtensorMap q_map,
                           const __grid_constant__ CUtensorMap o_map, bool use_q_map, bool use_o_map,
                           uint32_t* counters) {
  using T = WgmmaAttentionTraits<kHeadDim>;
  using Shared = SharedState<T::kStages, T::kRows>;
  static_assert(T::kSmemBytes + sizeof(Shared) <= 227 * 1024, "shared memory of one CTA");
  ptx::griddep_launch_dependents();
  extern __shared__ uint8_t smem_raw[];
  __shared__ Shared sh;
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* q_s = smem;                            // [2][kRows] head vectors, swizzled
  uint8_t* k_s = q_s + 2 * T::kQBytes;            // [kStages][kKeys] head vectors
  uint8_t* v_s = k_s + T::kStages * T::kKvBytes;  // [kStages][kKeys] head vectors
  float* merge_s = reinterpret_cast<float*>(v_s + T::kStages * T::kKvBytes);

  if (threadIdx.x == 0) {
    ptx::prefetch_tensor_map(&k_map);
    ptx::prefetch_tensor_map(&v_map);
    if (use_q_map) ptx::prefetch_tensor_map(&q_map);
    if (use_o_map) ptx::prefetch_tensor_map(&o_map);
    for (int i = 0; i < 2; ++i) {
      ptx::mbarrier_init(&sh.q_full[i], 32);
      ptx::mbarrier_init(&sh.q_empty[i], 256);
      ptx::mbarrier_init(&sh.task_full[i], 1);
      ptx::mbarrier_init(&sh.task_empty[i], kTaskReaders);
    }
    for (int s = 0; s < T::kStages; ++s) {
      ptx::mbarrier_init(&sh.k_full[s], 1);
      ptx::mbarrier_init(&sh.v_full[s], 1);
      ptx::mbarrier_init(&sh.k_empty[s], T::kConsumerWarps);
      ptx::mbarrier_init(&sh.v_empty[s], T::kConsumerWarps);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();

  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);  // warp-uniform, visibly
  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<T::kProducerRegs>();
    const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0);
    if (warp == 0) {
      produce_kv<T>(a, counters, &k_map, &v_map, k_s, v_s, sh);
    } else if (warp == 1) {
      produce_q<T>(a, use_q_map ? &q_map : nullptr, q_s, sh);
    }
  } else {
    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    consume<T>(a, warpgroup - 1, q_s, k_s, v_s, merge_s, use_o_map ? &o_map : nullptr, sh);
  }
}

// The greedy deal's counter pair of `stream` on the current device, zeroed when made (on the
// stream, ahead of the launch that first uses it). Kept for the process (8 bytes per stream).
uint32_t* deal_counters(cudaStream_t stream) {
  int device = 0;
  XY_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, uint32_t*> counters;
  std::lock_guard<std::mutex> lock(mutex);
  uint32_t*& c = counters[{device, stream}];
  if (c == nullptr) {
    XY_CUDA_CHECK(cudaMalloc(&c, 2 * sizeof(uint32_t)));
    XY_CUDA_CHECK(cudaMemsetAsync(c, 0, 2 * sizeof(uint32_t), stream));
  }
  return c;
}

template <int kHeadDim>
void run_wgmma_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = WgmmaAttentionTraits<kHeadDim>;
  const int blocks_per_sm = resident_ctas_per_sm(
      reinterpret_cast<const void*>(wgmma_attention_kernel<kHeadDim>), T::kThreads, T::kSmemBytes,
      "attention: the wgmma kernel");  // 1
  const int32_t box_rows = std::min(a.block_size, int32_t{128});
  const CUtensorMap k_map = kv_tensor_map(a.k_cache, a.num_kv_heads, kHeadDim, box_rows);
  const CUtensorMap v_map = kv_tensor_map(a.v_cache, a.num_kv_heads, kHeadDim, box_rows);
  // Query tiles by TMA where the rows are known (AttentionArgs::num_q_rows) and the map can be
  // made (16-byte aligned q and row stride); else by cp.async. Made per launch: q and m change.
  CUtensorMap q_map{};
  const bool use_q_map =
      a.num_q_rows > 0 && reinterpret_cast<uintptr_t>(a.q) % 16 == 0 && a.q_row_stride % 8 == 0 &&
      encode_q_tensor_map(&q_map, a.q, a.num_q_rows, a.q_row_stride, a.num_kv_heads, a.group, kHeadDim,
                          T::kRows / a.group);
  // Output rows by TMA store where a consumer's 64 rows are whole tokens (64 % group == 0) and
  // the map can be made; else (and for partial tiles) by plain stores.
  CUtensorMap o_map{};
  const int64_t out_row_stride = int64_t(a.group) * a.num_kv_heads * kHeadDim;
  const bool use_o_map = a.num_q_rows > 0 && 64 % a.group == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0 &&
                         encode_q_tensor_map(&o_map, a.out, a.num_q_rows, out_row_stride, a.num_kv_heads, a.group,
                                             kHeadDim, 64 / a.group);
  uint32_t* counters = a.task_count == nullptr ? deal_counters(stream) : nullptr;  // null: round-robin
  const int32_t grid = persistent_grid(a.num_tasks, blocks_per_sm);
  wgmma_attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a, k_map, v_map, q_map, o_map,
                                                                                 use_q_map, use_o_map, counters);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace

#if XY_ATTENTION_TIMELINE
std::vector<long long> take_attention_timeline() {
  std::vector<long long> v(size_t(kTimelineCtas) * kTimelineTasks * kTimelineFields);
  XY_CUDA_CHECK(cudaDeviceSynchronize());
  XY_CUDA_CHECK(cudaMemcpyFromSymbol(v.data(), g_timeline, v.size() * sizeof(long long)));
  std::vector<long long> zero(v.size(), -1);
  XY_CUDA_CHECK(cudaMemcpyToSymbol(g_timeline, zero.data(), zero.size() * sizeof(long long)));
  return v;
}
#endif

void launch_attention_wgmma(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tasks == 0) return;
  if (a.head_dim != 64 && a.head_dim != 128)
    throw InvalidArgument(cat("attention: the wgmma kernel has no head_dim ", a.head_dim, " (64, 128)"));
  if (a.block_size < 8 || (a.block_size & (a.block_size - 1)) != 0)
    throw InvalidArgument(cat("attention: the wgmma kernel needs a power-of-two block size >= 8, not ", a.block_size));
  if (a.group < 1 || a.group > 128)
    throw InvalidArgument(cat("attention: GQA group ", a.group, " outside [1, 128]"));
  if (a.partial_rows < a.group || a.partial_rows > 128)
    throw InvalidArgument(cat("attention: the wgmma kernel serves tiles of up to 128 rows; partial_rows (the work "
                              "list's tile_rows) is ", a.partial_rows));
  if (a.batch_invariant)
    throw InvalidArgument("attention: the wgmma kernel is not batch invariant; deterministic mode runs kTensorCore");
  if (a.num_kv_heads < 1 || reinterpret_cast<uintptr_t>(a.k_cache) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.v_cache) % 16 != 0)
    throw InvalidArgument(cat("attention: the wgmma kernel reads the KV cache by TMA: it needs at least one KV head "
                              "(got ", a.num_kv_heads, ") and 16-byte aligned caches"));
  if (a.head_dim == 64) return run_wgmma_attention<64>(a, stream);
  run_wgmma_attention<128>(a, stream);
}

}  // namespace xy::cuda
