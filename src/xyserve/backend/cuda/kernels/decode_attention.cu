// Decode-specialised attention over the meta work list (issue 6, the decode path): tasks of at
// most kDecodeMaxRows (16) GQA-packed rows, i.e. decodes and verifies of a few tokens, reading
// paged KV at close to copy bandwidth.
//
// A decode task reads 512 bytes of K and V per key (head_dim 128) and does ~8 KFLOP of mma.sync per
// key on its 16-row slab: the bytes in flight bound it, not math. The first version (2 stages of
// 16 keys a warp, refilled after computing, two CTA barriers per task) streamed 3.72-4.07 TB/s
// where cuDNN reads 3.89-4.44 on contiguous KV, and its cp.async.bulk variant (one bulk copy per
// 256-byte key row, on the TMA unit) was slower at 3 of 4 points (bench/cuda/attention_bench,
// H200). It also streamed the same 3.71-3.72 TB/s on 8 x 32k with one CTA per SM as with two: twice
// its ring bought nothing there, so the SM's own limit on loads in flight, not only the ring, may
// cap it. This version attacks both:
//   - CTA of 4 warps, 2 CTAs per SM (kDecodeCtasPerSm): 112 KB of shared memory each at d = 128.
//   - Each warp streams its own keys through its own ring of kEntries entries; an entry is the K
//     rows or the V rows of a 16-key chunk (4 KB at d = 128, 6 entries a warp), loaded by 16-byte
//     cp.async from every lane, one commit group per entry, evict-first in L2. A warp waits for
//     entry n, issues entry n + kEntries - 1 into the slot it read last, then computes on entry n:
//     kEntries - 1 entries (20 KB a warp, 160 KB an SM) stay in flight while it computes. K and V
//     are separate entries so that a slot is refilled as soon as Q K^T (or P V) has read it.
//     Rows are stored with their 16-byte units XOR-swizzled by row % 8 (no padding: the shared
//     memory goes to the ring), so ldmatrix reads are conflict-free. A key the task does not see
//     (before the span or the window, past the span, a tree row of another span) is zero-filled
//     without a read and masked.
//   - An L2 prefetch of the warp's next chunk (prefetch.global.L2, kPrefetchChunks ahead) is
//     there to measure and off: on the H200 it cost 7-14% (the ring alone keeps enough in
//     flight; the extra requests compete with it).
//   - A task's keys are dealt to the warps in 16-key chunks, chunk j to warp (j + 1) % 4, the same
//     for every task (so a task's result does not depend on the grid): warp 0, which folds the
//     states at the end, takes the last chunk of every 4 and never one of the remainder. Each warp
//     keeps an online-softmax state (m, l, O) of the task's 16-row slab in registers.
//   - End of a slab: no CTA barrier. Warps 1 and 3 write their states to two merge slots and go on
//     with their next task; warp 2 folds warp 3's state into its own and writes it back; warp 0
//     folds warp 1's, then warp 2's, and writes the rows (or the partial). Named barriers pair the
//     writers and readers of each slot (finish_slab).
//   - The rings run across tasks: a warp issues the first chunks of its next task while it
//     finishes the current one, so the pipe does not drain between tasks.
//   - Persistent grid; the cost-sorted tasks are dealt to CTAs in XY-Serve's symmetric round robin
//     (decode_split.cpp simulates the same deal to choose kv_split).
//
// Math per chunk, as in meta_attention.cu: S = Q K^T (m16n8k16, the slab's Q fragments held in
// registers for the whole slab), mask only on chunks the slab does not see whole, online softmax in
// base 2, O += P V with P re-packed from the S accumulators. A task of more than 16 rows (which
// check_decode_work_list rejects on the host) is run correctly, slab by slab, each reading the
// span again.
//
// Reduction order: fixed by the task alone (chunk-to-warp deal, fold order (w0 + w1) + (w2 + w3)),
// so runs are bitwise repeatable and a graph replay equals an eager launch. It differs from the
// tensor-core kernel's, so the batch-invariant mode does not use this kernel (the launcher throws).
//
// Programmatic dependent launch: the kernel's first statement lets the next kernel in the stream
// (the o-projection GEMM, when launched with PDL) start; that kernel waits for this grid's
// completion (griddepcontrol.wait) before it reads the output.
#include <cmath>
#include <cstdint>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/decode_split.h"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/attention_mask.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_ptx.cuh"
#include "xyserve/backend/cuda/kernels/mma_softmax.cuh"
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
  static constexpr int kRows = kDecodeMaxRows;    // one m16 slab
  static constexpr int kChunkKeys = 16;           // keys of one k16 step of P V
  static constexpr int kRowBytes = kHeadDim * 2;  // one key's K (or V) in one KV head
  static constexpr int kRowUnits = kRowBytes / 16;
  static constexpr int kEntryBytes = kChunkKeys * kRowBytes;  // the K rows or the V rows of a chunk
  static constexpr int kRingBytesPerWarp = 24 * 1024;
  static constexpr int kEntries = kRingBytesPerWarp / kEntryBytes;  // 6 at d = 128, 12 at d = 64
  static constexpr int kCopiesPerLane = kEntryBytes / 16 / 32;      // 16-byte cp.async per entry
  // With a chunk's K rows, the warp can ask L2 for its chunk kPrefetchChunks further in the task
  // (0: off). Off: measured on the H200 (2026-11-25, attention_bench decode cases), prefetching
  // one chunk ahead cost 7-14% (64 x 1k: 3.40 against 3.95 TB/s; 256 x 2k: 3.87 against 4.37);
  // the 6-entry ring alone keeps enough in flight.
  static constexpr int kPrefetchChunks = 0;
  static constexpr int kRingBytes = kWarps * kRingBytesPerWarp;
  static constexpr int kKSteps = kHeadDim / 16;   // k16 steps of Q K^T
  static constexpr int kOutTiles = kHeadDim / 8;  // n8 tiles of O
  // A merge slot: one warp's O in accumulator-fragment order (the float2 (dt, h) of lane l at
  // (2 dt + h) * 32 + l: each lane reads back what the same lane of another warp wrote), then the
  // m and l of the 16 rows.
  static constexpr int kSlotOFloats = kOutTiles * 2 * 32 * 2;
  static constexpr int kSlotFloats = kSlotOFloats + 2 * kRows;
  static constexpr int kMergeBytes = 2 * kSlotFloats * 4;
  static constexpr size_t kSmemBytes = size_t(kRingBytes) + size_t(kMergeBytes);

  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(kRows == 16, "a task's rows are one m16 slab at a time");
  static_assert(kChunkKeys == 16, "a chunk is one k16 step of P V; lane l and l + 16 address key l");
  static_assert(kRowUnits >= 8 && (kRowUnits & (kRowUnits - 1)) == 0, "the swizzle permutes units by row % 8");
  static_assert(kEntryBytes % (16 * 32) == 0 && kRingBytesPerWarp % kEntryBytes == 0);
  static_assert(kEntries >= 4 && kEntries % 2 == 0, "K and V entries alternate; at least two chunks in flight");
  static_assert(kKSteps % 2 == 0, "Q K^T runs two accumulator chains per key tile");
  static_assert(kRingBytesPerWarp % 128 == 0 && kRingBytes % 16 == 0);
  // Two CTAs must fit an SM's 228 KB, 1 KB of it reserved per CTA.
  static_assert(kDecodeCtasPerSm * (kSmemBytes + 1024) <= 228 * 1024);
};

// Byte offset of 16-byte unit `unit` of row `row` of an entry. Units are XOR-permuted by row % 8:
// the 8 rows that one ldmatrix phase reads at one logical unit land in 8 different bank groups,
// and so do a cp.async instruction's 32 units.
template <int kRowBytes>
__device__ __forceinline__ uint32_t entry_offset(int row, int unit) {
  return uint32_t(row * kRowBytes + ((unit ^ (row & 7)) << 4));
}

// cp.async.cg (PTX 9.7.9.25.3): 16 bytes with an L2 cache policy, or 16 zero bytes without a read
// (src-size 0) when `valid` is false.
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, bool valid, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0), "l"(policy)
               : "memory");
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
  const attn::PositionRange positions =
      attn::tile_positions(a.positions + g.req.first_row + g.task.q_begin, g.task.q_count, int(threadIdx.x % 32));
  g.pos_lo = positions.lo;
  g.pos_hi = positions.hi;
  const bool tree = g.task.mask == meta::MaskKind::kTree;
  const bool masked = g.task.mask != meta::MaskKind::kNone;
  g.window = masked ? a.window : 0;
  // Range A clipped to what the mask can show; its list starts at an absolute multiple of 16.
  int32_t a_begin = g.task.kv_begin;
  int32_t a_end = tree ? min(g.task.kv_end, g.req.num_computed) : g.task.kv_end;
  if (masked) a_end = min(a_end, g.pos_hi + 1);
  if (g.window > 0) a_begin = max(a_begin, g.pos_lo - g.window + 1);
  g.a_begin = a_begin;
  g.a_base = a_begin / T::kChunkKeys * T::kChunkKeys;
  g.num_a = a_end > a_begin ? a_end - g.a_base : 0;
  g.num_keys = g.num_a + (tree ? g.req.num_new : 0);
  g.num_chunks = (g.num_keys + T::kChunkKeys - 1) / T::kChunkKeys;
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

// The first of a slab's chunks that `warp` takes (then every kWarps-th): chunk j goes to warp
// (j + 1) % kWarps, so warp 0, which folds at the end of the slab, gets no chunk of the remainder.
template <int kWarps>
__device__ __forceinline__ int32_t first_chunk(int warp) {
  return (warp + kWarps - 1) % kWarps;
}

template <int kEntries>
__device__ __forceinline__ int next_slot(int slot) {
  return slot + 1 == kEntries ? 0 : slot + 1;
}

// One warp's loads: walks the same (lap, slab, chunk) sequence as the warp's consumer loop and
// issues, per chunk, its K rows then its V rows, each into the next slot of the warp's ring.
template <int kHeadDim>
struct EntryProducer {
  using T = DecodeTraits<kHeadDim>;
  int32_t lap = 0, slab = 0, chunk = 0;
  int slot = 0;           // ring slot of the next entry
  bool v_rows = false;    // the next entry is the V rows of `chunk` (its K rows are issued)
  int64_t key_elem = -1;  // cache element of key lane % 16 of `chunk`; -1: the task does not have it
  TaskGeometry g;         // g.index < 0: nothing left to issue

  __device__ void start(const AttentionArgs& a, int32_t count, int warp) {
    const int32_t t = dealt_task(0, count);
    if (t >= 0) g = task_geometry<kHeadDim>(a, t);
    chunk = first_chunk<T::kWarps>(warp);
  }

  // Moves on to the warp's next chunk (in this slab, the next slab or the next task), if any.
  __device__ void find_chunk(const AttentionArgs& a, int32_t count, int warp) {
    while (g.index >= 0 && chunk >= g.num_chunks) {
      chunk = first_chunk<T::kWarps>(warp);
      if (++slab < g.num_slabs) continue;
      slab = 0;
      const int32_t t = dealt_task(++lap, count);
      if (t < 0) {
        g.index = -1;
        break;
      }
      g = task_geometry<kHeadDim>(a, t);
    }
  }

  // The cache element of key lane % 16 of chunk c (the same in lanes l and l + 16), -1 if absent.
  __device__ int64_t chunk_key_elem(const AttentionArgs& a, int32_t c) const {
    const KeyInfo key = key_info(a, g, c * T::kChunkKeys + threadIdx.x % T::kChunkKeys);
    if (!key.present) return -1;
    const int32_t kv_slot = key.tree_row >= 0 ? g.req.num_computed + key.tree_row : key.pos;
    const int log2_block = __ffs(a.block_size) - 1;  // a power of two (the launcher checks)
    const int32_t block = __ldg(a.block_tables + g.req.block_table + (kv_slot >> log2_block));
    return ((int64_t(block) * a.block_size + (kv_slot & (a.block_size - 1))) * a.num_kv_heads + g.task.kv_head) *
           kHeadDim;
  }

  // Asks L2 for chunk c of the task (if it has one): lane l < 16 the K row of key l, lane l + 16
  // its V row. No shared memory and no register waits on it; the chunk's cp.async later finds the
  // lines in L2 (or on their way there).
  __device__ void prefetch_chunk(const AttentionArgs& a, int32_t c) const {
    if (c >= g.num_chunks) return;
    const int64_t elem = chunk_key_elem(a, c);
    if (elem < 0) return;
    const bf16* const row = (threadIdx.x % 32 < T::kChunkKeys ? a.k_cache : a.v_cache) + elem;
#pragma unroll
    for (int line = 0; line < T::kRowBytes / 128; ++line) ptx::prefetch_l2(row + line * 64);
  }

  // Issues the warp's next entry, one commit group (an empty one once the CTA's tasks are done:
  // the consumer's waits count groups).
  __device__ void issue_next(const AttentionArgs& a, int32_t count, int warp, const uint8_t* ring, uint64_t policy) {
    if (!v_rows) {
      find_chunk(a, count, warp);
      if (g.index >= 0) {
        key_elem = chunk_key_elem(a, chunk);
        if constexpr (T::kPrefetchChunks > 0) prefetch_chunk(a, chunk + T::kPrefetchChunks * T::kWarps);
      }
    }
    if (g.index >= 0) {
      const bf16* const cache = v_rows ? a.v_cache : a.k_cache;
      const uint32_t entry = smem_u32(ring) + uint32_t(slot * T::kEntryBytes);
      const int lane = threadIdx.x % 32;
      // Copy i of the lane: 16-byte unit c % kRowUnits of key row c / kRowUnits, c = lane + 32 i.
#pragma unroll
      for (int i = 0; i < T::kCopiesPerLane; ++i) {
        const int c = lane + 32 * i;
        const int row = c / T::kRowUnits, unit = c % T::kRowUnits;
        const int64_t elem = __shfl_sync(0xffffffffu, key_elem, row);
        cp_async_16_zfill(entry + entry_offset<T::kRowBytes>(row, unit), cache + (elem < 0 ? 0 : elem + unit * 8),
                          elem >= 0, policy);
      }
      slot = next_slot<T::kEntries>(slot);
      if (v_rows) chunk += T::kWarps;
      v_rows = !v_rows;
    }
    attn::cp_async_commit();
  }
};

// Waits until the warp's oldest pending entry has landed, for every lane: kEntries - 1 groups
// were committed ahead of it (the prologue's, then one per entry consumed since).
template <int kEntries>
__device__ __forceinline__ void wait_entry() {
  attn::cp_async_wait<kEntries - 2>();
  __syncwarp();
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

  // Chunk j of the task, its K rows landed in `k_entry`: S = Q K^T, masked, folded into (m, l)
  // with O rescaled; returns P (bf16, the A fragment of the 16 keys) for accumulate().
  __device__ void scores(const AttentionArgs& a, const TaskGeometry& g, int32_t j, const uint8_t* k_entry,
                         uint32_t (&pa)[4]) {
    const int lane = threadIdx.x % 32, t = lane % 4;
    // S = Q K^T over the 16 keys: n8 tile 0 keys 0-7, tile 1 keys 8-15; even and odd k-steps in
    // separate accumulators (two independent mma chains a tile), added at the end.
    float s[2][4], s_odd[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = s_odd[i][e] = 0.0f;
    // ldmatrix x4: matrix lane / 8 = (keys 0-7 | 8-15) x (dims +0 | +8 of the k-step), i.e. row
    // lane % 8 + 8 (lane / 16), logical unit 2 kd + (lane / 8) % 2, stored at unit ^ (lane % 8).
    const uint32_t k_row = smem_u32(k_entry) + uint32_t((lane % 8 + (lane / 16) * 8) * T::kRowBytes);
    const uint32_t k_swz = uint32_t(((lane / 8) & 1) ^ (lane % 8)) << 4;
#pragma unroll
    for (int kd = 0; kd < T::kKSteps; kd += 2) {
      uint32_t kb[4], kb_odd[4];
      ldmatrix_x4(k_row + ((uint32_t(kd) << 5) ^ k_swz), kb);
      ldmatrix_x4(k_row + ((uint32_t(kd + 1) << 5) ^ k_swz), kb_odd);
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
              if (key.tree_row >= 0) visible = visible && attn::tree_visible(parents, key.tree_row, row_new[h]);
            }
            const int e = 2 * h + c;
            s[nt][e] = visible ? (s[nt][e] + s_odd[nt][e]) * scale_log2 : -INFINITY;
          }
        }
      }
    }
    attn::online_softmax_step(s, m, l, o);  // p = exp2(s - max), O and l rescaled (mma_softmax.cuh)
    // The S accumulators of the two key tiles are the A fragment of the 16 keys.
    pa[0] = pack_bf16(s[0][0], s[0][1]);
    pa[1] = pack_bf16(s[0][2], s[0][3]);
    pa[2] = pack_bf16(s[1][0], s[1][1]);
    pa[3] = pack_bf16(s[1][2], s[1][3]);
  }

  // O += P V, the chunk's V rows landed in `v_entry`.
  __device__ void accumulate(const uint32_t (&pa)[4], const uint8_t* v_entry) {
    const int lane = threadIdx.x % 32;
    // ldmatrix x4 trans: matrix lane / 8 = (keys 0-7 | 8-15) x (dims of tile dt | dt + 1), i.e.
    // row lane % 8 + 8 ((lane / 8) % 2), logical unit dt + lane / 16, stored at unit ^ (lane % 8).
    const uint32_t v_row = smem_u32(v_entry) + uint32_t((lane % 8 + ((lane / 8) & 1) * 8) * T::kRowBytes);
    const uint32_t v_swz = uint32_t((lane / 16) ^ (lane % 8)) << 4;
#pragma unroll
    for (int dt = 0; dt < T::kOutTiles; dt += 2) {
      uint32_t vb[4];
      ldmatrix_x4_trans(v_row + ((uint32_t(dt) << 4) ^ v_swz), vb);
      mma_16816(o[dt], pa, vb[0], vb[1]);
      mma_16816(o[dt + 1], pa, vb[2], vb[3]);
    }
  }

  // Sums l over the 4 lanes of each row (before the state leaves the warp).
  __device__ void reduce_row_sums() {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
  }

  // The state into a merge slot (reduce_row_sums first).
  __device__ void write(float* slot) const {
    const int lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
    float2* const slot_o = reinterpret_cast<float2*>(slot);
#pragma unroll
    for (int dt = 0; dt < T::kOutTiles; ++dt)
#pragma unroll
      for (int h = 0; h < 2; ++h) slot_o[(2 * dt + h) * 32 + lane] = make_float2(o[dt][2 * h], o[dt][2 * h + 1]);
    if (t == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        slot[T::kSlotOFloats + gr + 8 * h] = m[h];
        slot[T::kSlotOFloats + T::kRows + gr + 8 * h] = l[h];
      }
    }
  }

  // state = state (+) the slot's state, by log-sum-exp (reduce_row_sums first). A row that saw
  // nothing in either (m = -inf) keeps O = 0, l = 0.
  __device__ void fold(const float* slot) {
    const int lane = threadIdx.x % 32, gr = lane / 4;
    const float2* const slot_o = reinterpret_cast<const float2*>(slot);
    float f_self[2], f_other[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_other = slot[T::kSlotOFloats + gr + 8 * h];
      const float l_other = slot[T::kSlotOFloats + T::kRows + gr + 8 * h];
      const float m_new = fmaxf(m[h], m_other);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      f_self[h] = exp2f(m[h] - m_use);
      f_other[h] = exp2f(m_other - m_use);
      l[h] = l[h] * f_self[h] + l_other * f_other[h];
      m[h] = m_new;
    }
#pragma unroll
    for (int dt = 0; dt < T::kOutTiles; ++dt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 v = slot_o[(2 * dt + h) * 32 + lane];
        o[dt][2 * h] = o[dt][2 * h] * f_self[h] + v.x * f_other[h];
        o[dt][2 * h + 1] = o[dt][2 * h + 1] * f_self[h] + v.y * f_other[h];
      }
  }

  // The slab's rows of the task (this warp's state is the fold of all 4): normalised bf16 rows,
  // or the (o, max, sum) partial that launch_attention_merge folds.
  __device__ void write_rows(const AttentionArgs& a, const TaskGeometry& g, int32_t slab) const {
    const int lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
    const int32_t rows = min(T::kRows, g.rows - slab * T::kRows);
    const int32_t tile_first_row = g.req.first_row + g.task.q_begin;
    const int64_t out_row_stride = int64_t(a.group) * a.num_kv_heads * kHeadDim;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = gr + 8 * h;
      if (r >= rows) continue;
      const int32_t row = slab * T::kRows + r;  // tile row
      if (g.task.partial < 0) {
        const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
        bf16* const out = a.out + int64_t(tile_first_row + row / a.group) * out_row_stride +
                          int64_t(g.task.kv_head * a.group + row % a.group) * kHeadDim + 2 * t;
#pragma unroll
        for (int dt = 0; dt < T::kOutTiles; ++dt)
          *reinterpret_cast<uint32_t*>(out + dt * 8) = pack_bf16(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
      } else {
        const int64_t prow = int64_t(g.task.partial) * a.partial_rows + row;
        float* const out = a.partial_out + prow * kHeadDim + 2 * t;
#pragma unroll
        for (int dt = 0; dt < T::kOutTiles; ++dt)
          *reinterpret_cast<float2*>(out + dt * 8) = make_float2(o[dt][2 * h], o[dt][2 * h + 1]);
        if (t == 0) {
          a.partial_max[prow] = m[h];
          a.partial_sum[prow] = l[h];
        }
      }
    }
  }
};

// Named barriers of the end-of-slab fold (0 is __syncthreads, unused here), each between one
// writing warp (bar.arrive) and one reading warp (bar.sync), 64 threads:
//   kSlot0Full    warp 1 wrote slot 0            -> warp 0 reads it
//   kSlot1Full    warp 3 wrote slot 1            -> warp 2 reads it
//   kSlot1Folded  warp 2 wrote w2 (+) w3 to slot 1 -> warp 0 reads it
//   kSlot0Free    warp 0 has read slot 0         -> warp 1 may write it (next slab)
//   kSlot1Free    warp 0 has read slot 1         -> warp 3 may write it (next slab)
// Every phase of a barrier pairs the same two warps, and a writer's next arrival waits for the
// reader's previous read, so no phase can take an arrival of the next. The Free barriers are
// arrived at only when a next slab follows, and waited on only from the CTA's second slab.
enum FoldBarrier : int { kSlot0Full = 1, kSlot1Full, kSlot1Folded, kSlot0Free, kSlot1Free };
constexpr int kPairThreads = 64;

// End of a slab, by each warp for its part (see the file comment): the rows are written by warp 0.
template <int kHeadDim>
__device__ void finish_slab(const AttentionArgs& a, const TaskGeometry& g, int32_t slab, SlabState<kHeadDim>& st,
                            float* merge, bool first_slab, bool last_slab) {
  using T = DecodeTraits<kHeadDim>;
  float* const slot0 = merge;
  float* const slot1 = merge + T::kSlotFloats;
  st.reduce_row_sums();
  switch (threadIdx.x / 32) {
    case 1:
      if (!first_slab) ptx::named_barrier_sync(kSlot0Free, kPairThreads);
      st.write(slot0);
      ptx::named_barrier_arrive(kSlot0Full, kPairThreads);
      break;
    case 3:
      if (!first_slab) ptx::named_barrier_sync(kSlot1Free, kPairThreads);
      st.write(slot1);
      ptx::named_barrier_arrive(kSlot1Full, kPairThreads);
      break;
    case 2:
      ptx::named_barrier_sync(kSlot1Full, kPairThreads);
      st.fold(slot1);
      __syncwarp();  // every lane has read slot 1's m and l before lanes t == 0 overwrite them
      st.write(slot1);
      ptx::named_barrier_arrive(kSlot1Folded, kPairThreads);
      break;
    default:
      ptx::named_barrier_sync(kSlot0Full, kPairThreads);
      st.fold(slot0);
      if (!last_slab) ptx::named_barrier_arrive(kSlot0Free, kPairThreads);
      ptx::named_barrier_sync(kSlot1Folded, kPairThreads);
      st.fold(slot1);
      if (!last_slab) ptx::named_barrier_arrive(kSlot1Free, kPairThreads);
      st.write_rows(a, g, slab);
      break;
  }
}

// Persistent: every CTA walks its dealt tasks (count read on the device when task_count is set).
// Shared memory: the 4 warps' rings, then the 2 merge slots.
template <int kHeadDim>
__global__ void __launch_bounds__(DecodeTraits<kHeadDim>::kThreads, kDecodeCtasPerSm)
    decode_attention_kernel(AttentionArgs a) {
  ptx::griddep_launch_dependents();
  using T = DecodeTraits<kHeadDim>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int warp = threadIdx.x / 32;
  const uint8_t* const ring = smem + warp * T::kRingBytesPerWarp;
  float* const merge = reinterpret_cast<float*>(smem + T::kRingBytes);
  const int32_t count = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  const uint64_t policy = ptx::evict_first_policy();

  EntryProducer<kHeadDim> producer;
  producer.start(a, count, warp);
#pragma unroll 1
  for (int e = 0; e + 1 < T::kEntries; ++e) producer.issue_next(a, count, warp, ring, policy);

  int slot = 0;  // ring slot of the next entry to consume
  bool first_slab = true;
#pragma unroll 1
  for (int32_t lap = 0;; ++lap) {
    const int32_t task = dealt_task(lap, count);
    if (task < 0) break;
    const bool last_task = dealt_task(lap + 1, count) < 0;
    // The producer has usually loaded this task's geometry already.
    const TaskGeometry g = producer.g.index == task ? producer.g : task_geometry<kHeadDim>(a, task);
#pragma unroll 1
    for (int32_t slab = 0; slab < g.num_slabs; ++slab) {
      SlabState<kHeadDim> st;
      st.start(a, g, slab);
#pragma unroll 1
      for (int32_t j = first_chunk<T::kWarps>(warp); j < g.num_chunks; j += T::kWarps) {
        uint32_t pa[4];
        wait_entry<T::kEntries>();  // K rows of chunk j
        producer.issue_next(a, count, warp, ring, policy);
        st.scores(a, g, j, ring + slot * T::kEntryBytes, pa);
        slot = next_slot<T::kEntries>(slot);
        wait_entry<T::kEntries>();  // V rows of chunk j
        producer.issue_next(a, count, warp, ring, policy);
        st.accumulate(pa, ring + slot * T::kEntryBytes);
        slot = next_slot<T::kEntries>(slot);
      }
      finish_slab<kHeadDim>(a, g, slab, st, merge, first_slab, last_task && slab + 1 == g.num_slabs);
      first_slab = false;
    }
  }
}

template <int kHeadDim>
void run_decode_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = DecodeTraits<kHeadDim>;
  // Resident CTAs per SM (kDecodeCtasPerSm unless the device has less shared memory): the
  // persistent grid's width.
  const void* kernel = reinterpret_cast<const void*>(decode_attention_kernel<kHeadDim>);
  // The carveout (a hint) once per process; the shared-memory allowance per device inside.
  static const bool carveout = [&] {
    XY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       int(cudaSharedmemCarveoutMaxShared)));
    return true;
  }();
  (void)carveout;
  const int blocks_per_sm = resident_ctas_per_sm(kernel, T::kThreads, T::kSmemBytes, "attention: the decode kernel");
  const int32_t grid = persistent_grid(a.num_tasks, blocks_per_sm);
  decode_attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
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
