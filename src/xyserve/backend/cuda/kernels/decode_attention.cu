// Decode-specialised attention over the meta work list (issue 6, the decode path): tasks of at
// most kDecodeMaxRows (16) GQA-packed rows, i.e. decodes and verifies of a few tokens, reading
// paged KV at close to copy bandwidth.
//
// A decode task reads 512 bytes of K and V per key (head_dim 128) and does ~8 KFLOP of mma.sync per
// key on its 16-row slab, so bytes in flight bound it, not math. The tensor-core kernel
// (meta_attention.cu) loads a 64-row Q tile, has one 64-key stage in flight per CTA and syncs its 4
// warps on every stage: 2.3-2.5 TB/s (bench/cuda/attention_bench.md). Here:
//   - CTA of 4 warps, 2 CTAs per SM (kDecodeCtasPerSm; 105 KB of shared memory and 207 registers
//     a thread at d = 128, no spills).
//   - Each warp streams its own keys through its own ring of kStages stages of 16 keys: K rows
//     then V rows, one cp.async.bulk per 256-byte key row (lane l < 16: K row l, else V row l - 16),
//     completing on the stage's mbarrier by byte count. (In the cache, [slot, kv_head, head_dim], a
//     key of one KV head is one 256-byte run; the next slot's is num_kv_heads x 256 bytes further.) The copies run on the TMA unit, not the
//     LSU, and no CTA barrier sits in the key loop: a warp refills a stage as soon as it has read it.
//     A key the task does not see (before the span or the window, past the span, a tree row of
//     another span) is read from the task's first visible slot instead, so every stage row holds
//     finite values (p = 0 times a finite v) and every stage receives the same byte count.
//     XY_DECODE_ATTENTION_LOADS=lsu swaps the bulk copies for 16-byte cp.async from every lane (the
//     LSU path of the other kernels), all else equal: a switch for the bench to measure which keeps
//     more bytes in flight, to be removed with the path that loses.
//   - A task's keys are dealt to the warps in 16-key chunks (chunk j to warp (j + task) % 4, from
//     the task index alone, so a task's result does not depend on the grid). Each warp keeps an
//     online-softmax state (m, l, O) of the task's 16-row slab; at the end of the slab the 4 states
//     are folded in warp order through shared memory by all 128 threads, which write the rows.
//   - The rings run across tasks: a warp issues the first chunks of its next task while it
//     finishes the current one, so the pipe does not drain between tasks.
//   - Persistent grid; the cost-sorted tasks are dealt to CTAs in XY-Serve's symmetric round robin
//     (decode_split.cpp simulates the same deal to choose kv_split).
// Bytes in flight per SM: 2 CTAs x 4 warps x 2 stages x 8 KB = up to 128 KB at d = 128 (d = 64: 4
// stages of 4 KB, the same), against the ~50 KB Little's law asks at 4.3 TB/s / 132 SMs and
// ~1.5 us of loaded latency.
//
// Math per chunk, as in meta_attention.cu: S = Q K^T (m16n8k16, the slab's Q fragments held in
// registers for the whole task), mask only on chunks the slab does not see whole, online softmax in
// base 2, O += P V with P re-packed from the S accumulators. A task of more than 16 rows (which
// check_decode_work_list rejects on the host) is run correctly, slab by slab, each reading the
// span again.
//
// Reduction order: fixed by the task alone (chunk-to-warp deal, warp order of the fold), so runs
// are bitwise repeatable and a graph replay equals an eager launch. It differs from the
// tensor-core kernel's, so the batch-invariant mode does not use this kernel (the launcher throws).
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/decode_split.h"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_ptx.cuh"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using attn::ldmatrix_x4;
using attn::ldmatrix_x4_trans;
using attn::mma_16816;
using attn::pack_bf16;
using attn::smem_u32;

template <int kHeadDim>
struct DecodeTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kDecodeMaxRows;     // one m16 slab
  static constexpr int kChunkKeys = 16;            // keys a stage: one k16 step of P V
  static constexpr int kStages = 256 / kHeadDim;   // per warp: 2 at d = 128, 4 at d = 64 (same bytes)
  static constexpr int kRowBytes = kHeadDim * 2;   // a key's K (or V) in one KV head: one bulk copy
  static constexpr int kSmemRowBytes = kRowBytes + 16;  // padded: an odd number of 16-byte units
  static constexpr int kStageBytes = 2 * kChunkKeys * kSmemRowBytes;  // K rows, then V rows
  static constexpr uint32_t kStageTxBytes = 2 * kChunkKeys * kRowBytes;  // what the copies deliver
  static constexpr int kRingBytes = kWarps * kStages * kStageBytes;
  static constexpr int kStateStride = kHeadDim + 8;  // floats a row of a merge slot (padded)
  static constexpr int kSlotFloats = kRows * kStateStride + 2 * kRows;  // O [16][D], then m, l
  static constexpr int kMergeBytes = kWarps * kSlotFloats * 4;
  static constexpr int kBarrierBytes = kWarps * kStages * 8;
  static constexpr size_t kSmemBytes = size_t(kRingBytes) + size_t(kMergeBytes) + size_t(kBarrierBytes);
  static constexpr int kKSteps = kHeadDim / 16;   // k16 steps of Q K^T
  static constexpr int kOutTiles = kHeadDim / 8;  // n8 tiles of O
  static constexpr int kVecsPerRow = kHeadDim / 4;

  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(2 * kChunkKeys == 32, "one bulk copy per lane per stage");
  static_assert(kRows == 16, "a task's rows are one m16 slab at a time");
  // ldmatrix reads 8 rows of 16 bytes: rows an odd number of 16-byte units apart hit 8 bank groups.
  static_assert(kSmemRowBytes % 16 == 0 && (kSmemRowBytes / 16) % 2 == 1);
  static_assert(kRingBytes % 16 == 0 && (kSlotFloats * 4) % 16 == 0 && (kStateStride * 4) % 16 == 0);
  static_assert(kKSteps % 2 == 0, "Q K^T runs two accumulator chains per key tile");
  // Two CTAs must fit an SM's 228 KB, 1 KB of it reserved per CTA.
  static_assert(kDecodeCtasPerSm * (kSmemBytes + 1024) <= 228 * 1024);
};

// cp.async.bulk (PTX 9.7.9.25.4.1): `bytes` from global to shared memory, completing on the
// mbarrier at `bar` by byte count; the L2 policy marks the KV evict-first (read once a step).
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar,
                                              uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
      "%4;\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}

// Row j (request-local new-row index) sees tree row i iff i is j or one of its ancestors.
__device__ __forceinline__ bool tree_visible(const int32_t* parents, int32_t i, int32_t j) {
  while (j > i) j = parents[j];
  return j == i;
}

// What a warp needs of one task, the same in every lane. Keys of the task, in list order: range A
// by position (slot = position) from a_base, the multiple of 16 at or below a_begin (keys before
// a_begin absent), then for a tree task range B, the step's rows by slot, kept when their position
// is in the span (as meta_attention.cu lists them).
struct TaskGeometry {
  int32_t index = -1;  // into a.tasks; -1: none
  meta::AttentionTask task;
  PlanRequest req;
  int32_t rows = 0, num_slabs = 0;
  int32_t pos_lo = 0, pos_hi = 0;  // positions of the tile's tokens
  int32_t window = 0;              // the layer's window if the task is masked, else 0
  int32_t a_begin = 0, a_base = 0, num_a = 0, num_keys = 0, num_chunks = 0;
  int32_t fill_slot = 0;  // a slot the task sees, read in place of the keys it does not
};

template <int kHeadDim>
__device__ TaskGeometry task_geometry(const AttentionArgs& a, int32_t index) {
  using T = DecodeTraits<kHeadDim>;
  TaskGeometry g;
  g.index = index;
  g.task = a.tasks[index];
  g.req = a.requests[g.task.request];
  g.rows = g.task.q_count * a.group;
  g.num_slabs = (g.rows + T::kRows - 1) / T::kRows;
  int32_t lo = INT_MAX, hi = INT_MIN;
  for (int j = threadIdx.x % 32; j < g.task.q_count; j += 32) {
    const int32_t p = a.positions[g.req.first_row + g.task.q_begin + j];
    lo = min(lo, p);
    hi = max(hi, p);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  g.pos_lo = lo;
  g.pos_hi = hi;
  const bool tree = g.task.mask == meta::MaskKind::kTree;
  const bool masked = g.task.mask != meta::MaskKind::kNone;
  g.window = masked ? a.window : 0;
  // Range A clipped to what the mask can show; its list starts at an absolute multiple of 16.
  int32_t a_begin = g.task.kv_begin;
  int32_t a_end = tree ? min(g.task.kv_end, g.req.num_computed) : g.task.kv_end;
  if (masked) a_end = min(a_end, hi + 1);
  if (g.window > 0) a_begin = max(a_begin, lo - g.window + 1);
  g.a_begin = a_begin;
  g.a_base = a_begin / T::kChunkKeys * T::kChunkKeys;
  g.num_a = a_end > a_begin ? a_end - g.a_base : 0;
  g.num_keys = g.num_a + (tree ? g.req.num_new : 0);
  g.num_chunks = (g.num_keys + T::kChunkKeys - 1) / T::kChunkKeys;
  // Written before this kernel runs: a_begin < a_end <= the tile's last position + 1, or (a tree
  // task with no range A) the slot of the step's first row.
  g.fill_slot = g.num_a > 0 ? a_begin : g.req.num_computed;
  return g;
}

// Key kk of a task's list: whether the task has it, its position and its tree row (-1: a key
// before the step's rows).
struct KeyInfo {
  bool present;
  int32_t pos;
  int32_t tree_row;
};
__device__ __forceinline__ KeyInfo key_info(const AttentionArgs& a, const TaskGeometry& g, int32_t kk) {
  if (kk < g.num_a) {
    const int32_t pos = g.a_base + kk;
    return {pos >= g.a_begin, pos, -1};
  }
  if (kk < g.num_keys) {
    const int32_t row = kk - g.num_a;
    const int32_t pos = a.positions[g.req.first_row + row];
    return {pos >= g.task.kv_begin && pos < g.task.kv_end, pos, row};
  }
  return {false, 0, -1};
}

// The task of lap `lap` for this CTA: symmetric round robin over the cost-sorted list; -1 past
// the end. Monotone in lap, so the first -1 ends the CTA's work.
__device__ __forceinline__ int32_t dealt_task(int32_t lap, int32_t count) {
  const int64_t g = gridDim.x;
  const int64_t i = lap * g + ((lap & 1) ? g - 1 - blockIdx.x : blockIdx.x);
  return i < count ? int32_t(i) : -1;
}

// The first of a task's chunks that `warp` takes (then every kWarps-th).
template <int kWarps>
__device__ __forceinline__ int32_t first_chunk(int32_t task, int warp) {
  return (warp - task % kWarps + kWarps) % kWarps;
}

// How a stage is loaded (see the file comment; XY_DECODE_ATTENTION_LOADS picks one at launch
// until the bench has chosen between them):
//   kBulk  one cp.async.bulk per key row on the TMA unit, completing on the stage's mbarrier;
//   kLsu   16-byte cp.async from every lane (the LSU), one commit group per stage.
// Both mark the KV evict-first in L2: each key of a KV head is read once a step.
enum class StageLoads { kBulk, kLsu };

// One warp's loads: walks the same (lap, slab, chunk) sequence as the warp's consumer loop,
// kStages chunks ahead of it, and issues each chunk into the next stage of the warp's ring.
template <int kHeadDim, StageLoads kLoads>
struct ChunkProducer {
  using T = DecodeTraits<kHeadDim>;
  int32_t lap = 0, slab = 0, chunk = 0, issued = 0;
  TaskGeometry g;  // g.index < 0: nothing left to issue

  __device__ void start(const AttentionArgs& a, int32_t count, int warp) {
    const int32_t t = dealt_task(0, count);
    if (t >= 0) {
      g = task_geometry<kHeadDim>(a, t);
      chunk = first_chunk<T::kWarps>(t, warp);
    }
  }

  // Issues the warp's next chunk into stage issued % kStages (a no-op once the CTA's tasks are done).
  __device__ void issue_next(const AttentionArgs& a, int32_t count, int warp, uint8_t* ring, uint64_t* full,
                             uint64_t policy) {
    while (g.index >= 0 && chunk >= g.num_chunks) {
      if (++slab < g.num_slabs) {
        chunk = first_chunk<T::kWarps>(g.index, warp);
        continue;
      }
      slab = 0;
      const int32_t t = dealt_task(++lap, count);
      if (t < 0) {
        g.index = -1;
        break;
      }
      g = task_geometry<kHeadDim>(a, t);
      chunk = first_chunk<T::kWarps>(t, warp);
    }
    if (g.index < 0) {
      if constexpr (kLoads == StageLoads::kLsu) attn::cp_async_commit();  // an empty group: the waits count stages
      return;
    }
    const int lane = threadIdx.x % 32;
    const int stage = issued % T::kStages;
    // Key lane % 16 of the chunk: its element offset in the cache (the same in lanes l and l + 16).
    const KeyInfo key = key_info(a, g, chunk * T::kChunkKeys + lane % T::kChunkKeys);
    const int32_t slot = !key.present ? g.fill_slot : key.tree_row >= 0 ? g.req.num_computed + key.tree_row : key.pos;
    const int32_t block = __ldg(a.block_tables + g.req.block_table + slot / a.block_size);
    const int64_t elem =
        ((int64_t(block) * a.block_size + slot % a.block_size) * a.num_kv_heads + g.task.kv_head) * kHeadDim;
    uint8_t* const k_dst = ring + stage * T::kStageBytes;  // K rows, then V rows
    if constexpr (kLoads == StageLoads::kBulk) {
      // Lane l < 16 copies K row l, lane l >= 16 V row l - 16 (stage row l).
      const bf16* src = (lane < T::kChunkKeys ? a.k_cache : a.v_cache) + elem;
      uint64_t* bar = full + stage;
      if (lane == 0) ptx::mbarrier_arrive_expect_tx(bar, T::kStageTxBytes);
      __syncwarp();
      bulk_copy_g2s(smem_u32(k_dst) + lane * T::kSmemRowBytes, src, T::kRowBytes, smem_u32(bar), policy);
    } else {
      // Copy c of the lane: 16-byte unit c % kUnits of key row c / kUnits, K and V alike.
      constexpr int kUnits = T::kRowBytes / 16;
#pragma unroll
      for (int c = lane; c < T::kChunkKeys * kUnits; c += 32) {
        const int row = c / kUnits, unit = c % kUnits;
        const int64_t row_elem = __shfl_sync(0xffffffffu, elem, row) + unit * 8;
        const uint32_t dst = smem_u32(k_dst) + row * T::kSmemRowBytes + unit * 16;
        ptx::cp_async_16_evict_first(dst, a.k_cache + row_elem, policy);
        ptx::cp_async_16_evict_first(dst + T::kChunkKeys * T::kSmemRowBytes, a.v_cache + row_elem, policy);
      }
      attn::cp_async_commit();
    }
    chunk += T::kWarps;
    ++issued;
  }
};

// Waits until stage `stage` holds the warp's `consumed`-th chunk, for every lane.
template <int kStages, StageLoads kLoads>
__device__ __forceinline__ void wait_stage(uint64_t* full, int stage, int32_t consumed) {
  if constexpr (kLoads == StageLoads::kBulk) {
    ptx::mbarrier_wait(full + stage, uint32_t(consumed / kStages) & 1u);
  } else {
    // kStages + consumed groups are committed (the prologue's and one per chunk consumed since).
    attn::cp_async_wait<kStages - 1>();
    __syncwarp();
  }
}

// One warp's online-softmax state of a slab: this lane's two rows (g and g + 8 of the slab's 16),
// the slab's Q fragments, and O in mma accumulator layout.
template <int kHeadDim>
struct SlabState {
  using T = DecodeTraits<kHeadDim>;
  uint32_t qa[T::kKSteps][4];
  float o[T::kOutTiles][4];
  float m[2], l[2];
  int32_t row_pos[2], row_new[2];
  bool row_live[2];

  // Q tile row r of the slab is tile row R = 16 * slab + r: query token R / group of the tile,
  // head kv_head * group + R % group. Rows past the tile read as zeros.
  __device__ void start(const AttentionArgs& a, const TaskGeometry& g, int32_t slab) {
    const int lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
    const uint32_t* q_rows[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t r = slab * T::kRows + gr + 8 * h;
      row_live[h] = r < g.rows;
      row_new[h] = g.task.q_begin + r / a.group;
      row_pos[h] = row_live[h] ? a.positions[g.req.first_row + row_new[h]] : 0;
      q_rows[h] = reinterpret_cast<const uint32_t*>(
          a.q + int64_t(g.req.first_row + row_new[h]) * a.q_row_stride +
          int64_t(g.task.kv_head * a.group + r % a.group) * kHeadDim);
      m[h] = -INFINITY;
      l[h] = 0.0f;
    }
    // A fragment of k-step kd: a0 = Q[g][16kd + 2t..], a1 = Q[g + 8][..], a2, a3 the same + 8 dims.
#pragma unroll
    for (int kd = 0; kd < T::kKSteps; ++kd) {
      const int w = (16 * kd + 2 * t) / 2;  // 32-bit word of the row
      qa[kd][0] = row_live[0] ? __ldg(q_rows[0] + w) : 0u;
      qa[kd][1] = row_live[1] ? __ldg(q_rows[1] + w) : 0u;
      qa[kd][2] = row_live[0] ? __ldg(q_rows[0] + w + 4) : 0u;
      qa[kd][3] = row_live[1] ? __ldg(q_rows[1] + w + 4) : 0u;
    }
#pragma unroll
    for (int i = 0; i < T::kOutTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  }

  // Folds chunk j of the task (16 keys, landed in `stage`) into the state.
  __device__ void consume(const AttentionArgs& a, const TaskGeometry& g, int32_t j, const uint8_t* stage) {
    const int lane = threadIdx.x % 32, t = lane % 4;
    const uint32_t k_base = smem_u32(stage);
    const uint32_t v_base = k_base + T::kChunkKeys * T::kSmemRowBytes;
    // S = Q K^T over the 16 keys: n8 tile 0 keys 0-7, tile 1 keys 8-15; even and odd k-steps in
    // separate accumulators (two independent mma chains a tile), added at the end.
    float s[2][4], s_odd[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = s_odd[i][e] = 0.0f;
    // ldmatrix x4: matrix lane / 8 = (keys 0-7 | 8-15) x (dims +0 | +8 of the k-step).
    const uint32_t k_lane = k_base + (lane % 8 + (lane / 16) * 8) * T::kSmemRowBytes + ((lane / 8) & 1) * 16;
#pragma unroll
    for (int kd = 0; kd < T::kKSteps; kd += 2) {
      uint32_t kb[4], kb_odd[4];
      ldmatrix_x4(k_lane + kd * 32, kb);
      ldmatrix_x4(k_lane + (kd + 1) * 32, kb_odd);
      mma_16816(s[0], qa[kd], kb[0], kb[1]);
      mma_16816(s[1], qa[kd], kb[2], kb[3]);
      mma_16816(s_odd[0], qa[kd + 1], kb_odd[0], kb_odd[1]);
      mma_16816(s_odd[1], qa[kd + 1], kb_odd[2], kb_odd[3]);
    }
    const float scale_log2 = a.scale * 1.4426950408889634f;
    const int32_t k0 = j * T::kChunkKeys;  // list index of the chunk's first key
    const int32_t p0 = g.a_base + k0;      // its position, if in range A
    const bool masked = g.task.mask != meta::MaskKind::kNone;
    // Mask per element only where some (row, key) pair of the chunk may be hidden.
    const bool whole = p0 >= g.a_begin && k0 + T::kChunkKeys <= g.num_a &&
                       (!masked || (p0 + T::kChunkKeys - 1 <= g.pos_lo && (g.window == 0 || p0 > g.pos_hi - g.window)));
    if (whole) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = (s[nt][e] + s_odd[nt][e]) * scale_log2;
    } else {
      const int32_t* parents = g.req.tree_parents >= 0 ? a.tree_parents + g.req.tree_parents : nullptr;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {  // this lane's keys: 8 nt + 2 t + c
          const KeyInfo key = key_info(a, g, k0 + nt * 8 + 2 * t + c);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            bool visible = key.present && row_live[h];
            if (masked) {
              visible = visible && key.pos <= row_pos[h];
              if (g.window > 0) visible = visible && key.pos > row_pos[h] - g.window;
              if (key.tree_row >= 0) visible = visible && tree_visible(parents, key.tree_row, row_new[h]);
            }
            const int e = 2 * h + c;
            s[nt][e] = visible ? (s[nt][e] + s_odd[nt][e]) * scale_log2 : -INFINITY;
          }
        }
      }
    }
    // Online softmax: row max over the 4 lanes of the row, rescale O and l.
    float scale_old[2], m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = fmaxf(fmaxf(s[0][2 * h], s[0][2 * h + 1]), fmaxf(s[1][2 * h], s[1][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row that saw nothing keeps p = 0
      scale_old[h] = exp2f(m[h] - m_use[h]);
      m[h] = m_new;
    }
    float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m_use[e / 2]);
        row_sum[e / 2] += s[nt][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * scale_old[h] + row_sum[h];  // lane-partial sums
#pragma unroll
    for (int i = 0; i < T::kOutTiles; ++i) {
      o[i][0] *= scale_old[0];
      o[i][1] *= scale_old[0];
      o[i][2] *= scale_old[1];
      o[i][3] *= scale_old[1];
    }
    // O += P V: the S accumulators of the two key tiles are the A fragment of the 16 keys.
    const uint32_t pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]), pack_bf16(s[1][0], s[1][1]),
                            pack_bf16(s[1][2], s[1][3])};
    // ldmatrix x4 trans: matrix lane / 8 = (keys 0-7 | 8-15) x (dims of tile dt | dt + 1).
    const uint32_t v_lane = v_base + (lane % 8 + ((lane / 8) & 1) * 8) * T::kSmemRowBytes + (lane / 16) * 16;
#pragma unroll
    for (int dt = 0; dt < T::kOutTiles; dt += 2) {
      uint32_t vb[4];
      ldmatrix_x4_trans(v_lane + dt * 16, vb);
      mma_16816(o[dt], pa, vb[0], vb[1]);
      mma_16816(o[dt + 1], pa, vb[2], vb[3]);
    }
  }
};

// End of a slab, by the whole CTA: each warp's state into its merge slot, then the 4 states of
// every (row, 4 dims) folded in warp order and written: normalised bf16 rows, or the (o, max,
// sum) partial that launch_attention_merge folds.
template <int kHeadDim>
__device__ void finish_slab(const AttentionArgs& a, const TaskGeometry& g, int32_t slab, SlabState<kHeadDim>& st,
                            float* merge) {
  using T = DecodeTraits<kHeadDim>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gr = lane / 4, t = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
    st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
  }
  const int32_t rows = min(T::kRows, g.rows - slab * T::kRows);
  __syncthreads();  // the previous slab's fold has read every slot
  float* mine = merge + warp * T::kSlotFloats;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = gr + 8 * h;
    if (r >= rows) continue;
#pragma unroll
    for (int dt = 0; dt < T::kOutTiles; ++dt)
      *reinterpret_cast<float2*>(mine + r * T::kStateStride + dt * 8 + 2 * t) = make_float2(st.o[dt][2 * h], st.o[dt][2 * h + 1]);
    if (t == 0) {
      mine[T::kRows * T::kStateStride + r] = st.m[h];
      mine[T::kRows * T::kStateStride + T::kRows + r] = st.l[h];
    }
  }
  __syncthreads();
  const int32_t tile_first_row = g.req.first_row + g.task.q_begin;
  const int64_t out_row_stride = int64_t(a.group) * a.num_kv_heads * kHeadDim;
  for (int e = threadIdx.x; e < rows * T::kVecsPerRow; e += T::kThreads) {
    const int r = e / T::kVecsPerRow, d = (e % T::kVecsPerRow) * 4;
    float mw[T::kWarps], m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < T::kWarps; ++w) {
      mw[w] = merge[w * T::kSlotFloats + T::kRows * T::kStateStride + r];
      m_max = fmaxf(m_max, mw[w]);
    }
    const float m_use = m_max == -INFINITY ? 0.0f : m_max;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float l = 0.0f;
#pragma unroll
    for (int w = 0; w < T::kWarps; ++w) {
      const float* slot = merge + w * T::kSlotFloats;
      const float f = exp2f(mw[w] - m_use);  // 0 for a warp whose keys the row did not see
      const float4 ow = *reinterpret_cast<const float4*>(slot + r * T::kStateStride + d);
      l += slot[T::kRows * T::kStateStride + T::kRows + r] * f;
      acc.x += ow.x * f;
      acc.y += ow.y * f;
      acc.z += ow.z * f;
      acc.w += ow.w * f;
    }
    const int32_t row = slab * T::kRows + r;  // tile row
    if (g.task.partial < 0) {
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      bf16* out = a.out + int64_t(tile_first_row + row / a.group) * out_row_stride +
                  int64_t(g.task.kv_head * a.group + row % a.group) * kHeadDim + d;
      *reinterpret_cast<uint2*>(out) = make_uint2(pack_bf16(acc.x * inv, acc.y * inv), pack_bf16(acc.z * inv, acc.w * inv));
    } else {
      const int64_t prow = int64_t(g.task.partial) * a.partial_rows + row;
      *reinterpret_cast<float4*>(a.partial_out + prow * kHeadDim + d) = acc;
      if (d == 0) {
        a.partial_max[prow] = m_max;
        a.partial_sum[prow] = l;
      }
    }
  }
}

// Persistent: every CTA walks its dealt tasks (count read on the device when task_count is set).
// Shared memory: the 4 warps' rings, the 4 merge slots, the rings' mbarriers.
template <int kHeadDim, StageLoads kLoads>
__global__ void __launch_bounds__(DecodeTraits<kHeadDim>::kThreads, kDecodeCtasPerSm)
    decode_attention_kernel(AttentionArgs a) {
  using T = DecodeTraits<kHeadDim>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint8_t* const ring = smem + warp * T::kStages * T::kStageBytes;
  float* const merge = reinterpret_cast<float*>(smem + T::kRingBytes);
  uint64_t* const full = reinterpret_cast<uint64_t*>(smem + T::kRingBytes + T::kMergeBytes) + warp * T::kStages;
  const int32_t count = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  const uint64_t policy = ptx::evict_first_policy();

  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < T::kStages; ++s) ptx::mbarrier_init(full + s, 1);
    ptx::fence_mbarrier_init();
  }
  __syncwarp();

  ChunkProducer<kHeadDim, kLoads> producer;
  producer.start(a, count, warp);
#pragma unroll 1
  for (int s = 0; s < T::kStages; ++s) producer.issue_next(a, count, warp, ring, full, policy);

  int32_t consumed = 0;
#pragma unroll 1
  for (int32_t lap = 0;; ++lap) {
    const int32_t task = dealt_task(lap, count);
    if (task < 0) break;
    // The producer has usually loaded this task's geometry already.
    const TaskGeometry g = producer.g.index == task ? producer.g : task_geometry<kHeadDim>(a, task);
#pragma unroll 1
    for (int32_t slab = 0; slab < g.num_slabs; ++slab) {
      SlabState<kHeadDim> st;
      st.start(a, g, slab);
#pragma unroll 1
      for (int32_t j = first_chunk<T::kWarps>(task, warp); j < g.num_chunks; j += T::kWarps) {
        const int stage = consumed % T::kStages;
        wait_stage<T::kStages, kLoads>(full, stage, consumed);
        st.consume(a, g, j, ring + stage * T::kStageBytes);
        __syncwarp();  // every lane has read the stage before the next copy into it is issued
        producer.issue_next(a, count, warp, ring, full, policy);
        ++consumed;
      }
      finish_slab<kHeadDim>(a, g, slab, st, merge);
    }
  }
}

template <int kHeadDim, StageLoads kLoads>
void run_decode_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = DecodeTraits<kHeadDim>;
  // Resident CTAs per SM (kDecodeCtasPerSm unless the device has less shared memory): the
  // persistent grid's width.
  static const int blocks_per_sm = [] {
    XY_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<kHeadDim, kLoads>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(T::kSmemBytes)));
    XY_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<kHeadDim, kLoads>,
                                       cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared)));
    int n = 0;
    XY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_attention_kernel<kHeadDim, kLoads>,
                                                                T::kThreads, T::kSmemBytes));
    return n;
  }();
  const int32_t grid = persistent_grid(a.num_tasks, blocks_per_sm);
  decode_attention_kernel<kHeadDim, kLoads><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
}

// XY_DECODE_ATTENTION_LOADS=lsu runs the LSU loads instead of the bulk copies: a measurement
// switch for the bench and the tests, read at every launch (a CUDA graph keeps what it captured).
StageLoads stage_loads() {
  const char* v = std::getenv("XY_DECODE_ATTENTION_LOADS");
  if (v == nullptr || *v == 0 || std::strcmp(v, "tma") == 0) return StageLoads::kBulk;
  if (std::strcmp(v, "lsu") == 0) return StageLoads::kLsu;
  throw InvalidArgument(cat("XY_DECODE_ATTENTION_LOADS=", v, ": expected tma or lsu"));
}

template <int kHeadDim>
void run_decode_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (stage_loads() == StageLoads::kLsu) return run_decode_attention<kHeadDim, StageLoads::kLsu>(a, stream);
  run_decode_attention<kHeadDim, StageLoads::kBulk>(a, stream);
}

}  // namespace

void launch_attention_decode(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tasks == 0) return;
  if (a.batch_invariant)
    throw InvalidArgument(
        "attention: the decode kernel reduces in another order than the tensor-core kernel; the batch-invariant "
        "mode runs the tensor-core kernel for every step");
  if (a.group < 1 || a.group > kDecodeMaxRows)
    throw InvalidArgument(cat("attention: GQA group ", a.group, " gives every task at least ", a.group,
                              " rows; the decode kernel serves tasks of 1 to ", kDecodeMaxRows));
  if (a.block_size < 8 || (a.block_size & (a.block_size - 1)) != 0)
    throw InvalidArgument(cat("attention: the decode kernel needs a power-of-two KV block size of at least 8, got ",
                              a.block_size));
  if (a.head_dim == 64) return run_decode_attention<64>(a, stream);
  if (a.head_dim == 128) return run_decode_attention<128>(a, stream);
  throw InvalidArgument(cat("attention: the decode kernel has no head_dim ", a.head_dim, " (64, 128)"));
}

}  // namespace xy::cuda
