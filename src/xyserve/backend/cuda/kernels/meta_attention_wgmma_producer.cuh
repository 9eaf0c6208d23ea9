// The producer side of the Hopper attention kernel (meta_attention_wgmma.cu, whose header comment
// describes the whole design): the task as every role reads it (TaskInfo), the CTA's shared
// barriers and task ring (SharedState), and the two producer warps: produce_kv deals the tasks,
// publishes them and loads their K and V blocks by TMA; produce_q loads each task's query tile.
// Included by meta_attention_wgmma.cu only.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "xyserve/backend/cuda/kernels/attention_mask.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_wgmma_ptx.cuh"

namespace xy::cuda::wgmma_attention {

// One task as every role needs it, written by the producer into a slot of a 2-deep ring.
struct TaskInfo {
  int32_t index;  // in the work list; -1: no more tasks
  int32_t kv_head, q_begin, q_count, partial, mask;
  int32_t req_first_row, num_new, num_computed, block_table, tree_parents;
  int32_t kv_begin, kv_end;
  // Keys: slots [key_base, key_base + num_keys) in num_blocks blocks of kKeys (file comment);
  // range A [a_begin, a_end) by position; fill_slot: a slot the task holds (its first visible).
  int32_t key_base, num_keys, num_blocks, a_begin, a_end, fill_slot;
  int32_t pos_lo, pos_hi;  // positions of the tile's tokens
};

template <int kStages, int kRows>
struct SharedState {
  uint64_t q_full[2], q_empty[2];  // Q buffer t % 2: loaded (Q warp's 32 lanes), free (256 consumer threads)
  int32_t q_pos[2][kRows];         // positions of Q buffer t % 2's tokens (staged with the tile)
  uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];  // TMA bytes / 8 warps
  uint64_t task_full[2], task_empty[2];  // task slot t % 2: written (1), read (256 consumers + 32 Q lanes)
  TaskInfo task[2];
};
constexpr uint32_t kTaskReaders = 256 + 32;

// Greedy dealing of eager launches: counters[0] the next task index, counters[1] the CTAs done
// with it (the last resets both, so the next launch on the stream starts from zero). One pair
// per (device, stream): launches on one stream never overlap, on two they may (tensor-parallel
// ranks sharing a GPU in the tests did, and dealt each other's tasks through one global pair).

// A warp (all lanes) describes task `index`; every lane ends with the same TaskInfo.
template <int kKeys>
__device__ TaskInfo describe_task(const AttentionArgs& a, int32_t index, int lane) {
  TaskInfo ti{};
  ti.index = index;
  if (index < 0) return ti;
  const meta::AttentionTask task = a.tasks[index];
  const PlanRequest req = a.requests[task.request];
  ti.kv_head = task.kv_head;
  ti.q_begin = task.q_begin;
  ti.q_count = task.q_count;
  ti.partial = task.partial;
  ti.mask = int32_t(task.mask);
  ti.req_first_row = req.first_row;
  ti.num_new = req.num_new;
  ti.num_computed = req.num_computed;
  ti.block_table = req.block_table;
  ti.tree_parents = req.tree_parents;
  ti.kv_begin = task.kv_begin;
  ti.kv_end = task.kv_end;
  const auto [pos_lo, pos_hi] = attn::tile_positions(a.positions + req.first_row + task.q_begin, task.q_count, lane);
  ti.pos_lo = pos_lo;
  ti.pos_hi = pos_hi;
  // Range A by position, clipped to what the mask can show (meta_attention.cu's rules).
  const bool tree = task.mask == meta::MaskKind::kTree;
  const bool masked = task.mask != meta::MaskKind::kNone;
  const int32_t window = masked ? a.window : 0;
  int32_t a_begin = task.kv_begin;
  int32_t a_end = tree ? min(task.kv_end, req.num_computed) : task.kv_end;
  if (masked) a_end = min(a_end, pos_hi + 1);
  if (window > 0) a_begin = max(a_begin, pos_lo - window + 1);
  ti.a_begin = a_begin;
  ti.a_end = a_end;
  // A tree task's step rows (slots num_computed on, positions >= num_computed) can be in the span
  // only when it reaches past num_computed; then range A, clipped at num_computed, ends there
  // (pos_hi >= num_computed), and the list runs on through the rows' slots without a gap.
  const bool tree_rows = tree && task.kv_end > req.num_computed && req.num_new > 0;
  const bool has_a = a_end > a_begin;
  const int32_t first = has_a ? a_begin : req.num_computed;
  const int32_t end = tree_rows ? req.num_computed + req.num_new : a_end;
  ti.key_base = first / kKeys * kKeys;
  ti.num_keys = has_a || tree_rows ? end - ti.key_base : 0;
  ti.num_blocks = (ti.num_keys + kKeys - 1) / kKeys;
  ti.fill_slot = first;
  return ti;
}

// ---------------------------------------------------------------------------------------------
// Producer warp 0: deals the tasks, publishes them, and loads their K and V blocks by TMA.
template <class T, class Shared>
__device__ void produce_kv(const AttentionArgs& a, uint32_t* counters, const CUtensorMap* k_map, const CUtensorMap* v_map,
                           uint8_t* k_s, uint8_t* v_s, Shared& sh) {
  const int lane = threadIdx.x % 32;
  const bool dynamic = counters != nullptr;
  const int32_t num_tasks = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  const int log2_bs = __ffs(a.block_size) - 1;
  const int32_t bs_mask = a.block_size - 1;
  // A block is num_boxes boxes of box_rows slots: whole pages, or 128-slot parts of a page.
  const int32_t box_rows = min(a.block_size, T::kKeys);
  const int32_t num_boxes = T::kKeys / box_rows;
  // The CTA's t-th task (lane 0 asks; -1: none left). The static deal is XY-Serve's symmetric
  // round-robin over the sorted list (meta::DealPolicy::kSymmetricRoundRobin): lap t runs CTAs
  // 0..G-1, then G-1..0.
  auto fetch = [&](uint32_t t) -> int32_t {
    int32_t index = -1;
    if (lane == 0) {
      const uint32_t i = dynamic ? atomicAdd(&counters[0], 1u)
                                 : t * gridDim.x + (t % 2 == 0 ? blockIdx.x : gridDim.x - 1 - blockIdx.x);
      index = i < uint32_t(num_tasks) ? int32_t(i) : -1;
    }
    return __shfl_sync(0xffffffffu, index, 0);
  };

  // Task t + 1 is taken, described and published once task t's first block is on its way (the
  // ring then full), so the latency of the counter and of the task's dependent loads (task,
  // request, positions) falls while the producer would wait for a stage anyway, and the Q warp
  // loads task t + 1's query tile while the consumers work on task t.
  auto publish = [&](uint32_t t, const TaskInfo& info) {
    const int slot = t % 2;
    if (t >= 2) ptx::mbarrier_wait(&sh.task_empty[slot], ((t / 2) - 1) & 1);
    if (lane == 0) {
      sh.task[slot] = info;
      ptx::mbarrier_arrive(&sh.task_full[slot]);
    }
  };
  TaskInfo ti = describe_task<T::kKeys>(a, fetch(0), lane);
  publish(0, ti);
  uint32_t g = 0;  // blocks loaded so far: ring stage g % kStages, use g / kStages
  for (uint32_t t = 0; ti.index >= 0; ++t) {
    TaskInfo next;
    if (ti.num_blocks == 0) {
      next = describe_task<T::kKeys>(a, fetch(t + 1), lane);
      publish(t + 1, next);
    }

    const int32_t* table = a.block_tables + ti.block_table;
    for (int32_t b = 0; b < ti.num_blocks; ++b, ++g) {
      const int s = g % T::kStages;
      // Lane i < num_boxes: the box of rows [i * box_rows, +box_rows) of the block, as the cache
      // row (slot coordinate) where it starts; a box past the list reads the fill slot's page.
      int32_t row = 0;
      if (lane < num_boxes) {
        const int32_t kk = b * T::kKeys + lane * box_rows;
        const int32_t slot_of_box = kk < ti.num_keys ? ti.key_base + kk : ti.fill_slot;
        const int32_t page = __ldg(table + (slot_of_box >> log2_bs));
        row = page * a.block_size + (slot_of_box & bs_mask & ~(box_rows - 1));
      }
      const uint32_t box_offset = uint32_t(lane * box_rows * 128);
      // K's block, then V's: each into stage s of its ring once that stage is free.
      auto load_block = [&](uint8_t* ring, const CUtensorMap* map, uint64_t* full, uint64_t* empty) {
        const uint32_t dst = ptx::smem_addr(ring + s * T::kKvBytes) + box_offset;
        if (g >= T::kStages) ptx::mbarrier_wait(&empty[s], ((g / T::kStages) - 1) & 1);
        if (lane == 0) ptx::mbarrier_arrive_expect_tx(&full[s], T::kKvBytes);
        if (lane < num_boxes) {
#pragma unroll
          for (int p = 0; p < T::kPanels; ++p)
            wgmma::tma_load_3d(dst + p * T::kKeys * 128, map, ptx::smem_addr(&full[s]), p * 64, ti.kv_head, row);
        }
      };
      load_block(k_s, k_map, sh.k_full, sh.k_empty);
      load_block(v_s, v_map, sh.v_full, sh.v_empty);
      if (b == 0) {
        next = describe_task<T::kKeys>(a, fetch(t + 1), lane);
        publish(t + 1, next);
      }
    }
    ti = next;
  }
  if (dynamic && lane == 0) {
    __threadfence();
    if (atomicAdd(&counters[1], 1u) == gridDim.x - 1) {
      atomicExch(&counters[0], 0u);
      atomicExch(&counters[1], 0u);
    }
  }
}

// Producer warp 1: each task's query tile into Q buffer t % 2, once the consumers have written
// out task t - 2 (whose rows they stage in that buffer). A tile of more than 64 rows comes by TMA
// when q_map is set (two boxes; one warp's cp.async of 32 KB, ~2k copies with their address
// arithmetic, took longer than a short task's compute, and the consumers waited for it), the
// others by cp.async.
template <class T, class Shared>
__device__ void produce_q(const AttentionArgs& a, const CUtensorMap* q_map, uint8_t* q_s, Shared& sh) {
  const int lane = threadIdx.x % 32;
  for (uint32_t t = 0;; ++t) {
    const int slot = t % 2;
    ptx::mbarrier_wait(&sh.task_full[slot], (t / 2) & 1);
    const TaskInfo ti = sh.task[slot];
    ptx::mbarrier_arrive(&sh.task_empty[slot]);
    if (ti.index < 0) break;
    if (t >= 2) ptx::mbarrier_wait(&sh.q_empty[slot], ((t / 2) - 1) & 1);
    // Tile row r: query token r / group of the tile, head kv_head * group + r % group; rows past
    // the tile are zeros. A tile of at most 64 rows feeds both consumers rows 0-63.
    const int rows = ti.q_count * a.group;
    const int rows_read = rows > 64 ? T::kRows : 64;
    const int64_t first_row = ti.req_first_row + ti.q_begin;
    const uint32_t q_base = ptx::smem_addr(q_s + slot * T::kQBytes);
    // The tile's positions, for the consumers' masks (plain stores, released by the arrive).
    for (int i = lane; i < ti.q_count; i += 32) sh.q_pos[slot][i] = __ldg(a.positions + first_row + i);
    if (q_map != nullptr && rows > 64) {
      // Boxes of kRows / group tokens (all group heads of the KV head): rows past the tile hold
      // other tokens' queries or zeros (past the step); they are not live rows, and a row's
      // scores and output depend on its own query only.
      if (lane == 0) {
        const uint32_t bar = ptx::smem_addr(&sh.q_full[slot]);
        ptx::mbarrier_arrive_expect_tx(&sh.q_full[slot], T::kPanels * (T::kRows / a.group) * a.group * 128);
#pragma unroll
        for (int p = 0; p < T::kPanels; ++p)
          wgmma::tma_load_4d(q_base + p * T::kRows * 128, q_map, bar, p * 64, 0, ti.kv_head, int(first_row));
      } else {
        ptx::mbarrier_arrive(&sh.q_full[slot]);
      }
      continue;
    }
    // Lane: chunk lane % kChunks of rows lane / kChunks, + kRowsPerStep, ...; its row's token and
    // head are stepped along (no division per copy: one warp issues the whole tile).
    constexpr int kRowsPerStep = 32 / T::kChunks;
    const int ch = lane % T::kChunks;
    int r = lane / T::kChunks;
    int token = r / a.group, head = r % a.group;
    for (; r < rows_read; r += kRowsPerStep) {
      const bool valid = r < rows;
      const bf16* src = valid ? a.q + (first_row + token) * a.q_row_stride +
                                    int64_t(ti.kv_head * a.group + head) * T::kHeadDim + ch * 8
                              : a.q;
      ptx::cp_async_16(q_base + wgmma::sw128_offset(r, ch, T::kRows), src, valid);
      head += kRowsPerStep;
      while (head >= a.group) {
        head -= a.group;
        ++token;
      }
    }
    wgmma::cp_async_mbarrier_arrive(&sh.q_full[slot]);
    ptx::mbarrier_arrive(&sh.q_full[slot]);
  }
  wgmma::cp_async_wait_all();  // nothing in flight when the warp leaves
}

}  // namespace xy::cuda::wgmma_attention
