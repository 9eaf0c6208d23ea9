// Hopper attention over the meta work list (issue 6, second version): wgmma (sm_90a) issued by
// warpgroups, with a producer warpgroup feeding two consumer warpgroups through shared-memory
// rings that complete on mbarriers (the FlashAttention-3 design, written here from its ideas).
//
// A persistent CTA of 3 warpgroups walks the tasks (one CTA per SM: 195 KB of shared memory at
// head_dim 128). Per task, a GQA-packed query tile of up to 128 rows against a KV span read
// through the block table, in blocks of 128 keys:
//   producer (warpgroup 0, 72 registers): publishes the task, then gathers K and V blocks with
//     cp.async into two rings (K and V, kStages each, 128B-swizzled as wgmma reads them) and the
//     query tile into its buffer; each buffer completes on a "full" mbarrier and is refilled
//     once its "empty" mbarrier says both consumers are done with it.
//   consumers (warpgroups 1 and 2, 216 registers), each 64 query rows:
//     S = Q K^T            wgmma m64n128k16, Q and K from shared memory
//     mask, online softmax fp32 registers, base 2, the masking rules of meta_attention.cu
//     O += P V             wgmma m64nDk16, P (bf16) from the S registers, V MN-major
//   The next block's Q K^T is issued before this block's P V, so the softmax of one block runs
//   while the tensor cores work on the other (FA3's intra-warpgroup overlap); K is released
//   after its scores are masked, V after its P V.
// A tile of at most 64 rows (a decode, a verify, a short chunk, any tile of a 64-row list) fills
// one consumer's rows: both consumers then take the same 64 rows and alternate key blocks, and
// consumer 1 hands its softmax state to consumer 0 through shared memory, which merges the two
// by log-sum-exp and writes the rows.
//
// Outputs are those of launch_attention(kTensorCore) (kernels.h): normalised bf16 rows, or the
// (o, max in log2 units, sum) partial of a split task at row partial * partial_rows + r. Key
// blocks start at multiples of 128 positions below the span's first visible key (keys before it
// and past the span read as zeros and are masked), then a tree task's step rows follow by slot.
//
// Dealing: eager launches (task_count null) take tasks greedily from a device counter in list
// order (largest first), as the hardware scheduler deals one-CTA-per-task grids; graph launches
// (task_count set) deal the list in XY-Serve's symmetric round-robin over a grid sized by the
// list's capacity, so the launch never depends on the step. Not batch invariant (a row's reduction order depends on its tile's size: split or not);
// deterministic mode runs the tensor-core kernel. Deterministic run to run: no atomics touch
// the arithmetic.
#include <climits>
#include <cmath>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_wgmma_ptx.cuh"

namespace xy::cuda {
namespace {

using namespace wgmma;

template <int kHeadDim_>
struct WgmmaAttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kRows = 64 * kConsumers;  // query rows of the CTA's tile
  static constexpr int kKeys = 128;              // keys per block: one per producer thread
  // Ring depth per K and V: head_dim 128 fills 195 KB of the 227 KB with 2; head_dim 64 takes 4.
  // Chosen by the shared-memory budget, not yet by a measurement.
  static constexpr int kStages = kHeadDim == 128 ? 2 : 4;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per head vector
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kKvBytes = kKeys * kHeadDim * 2;  // one block of K (or of V)
  static constexpr int kScoreRegs = kKeys / 2;           // S: 64 x kKeys fp32 over 128 threads
  static constexpr int kOutRegs = kHeadDim / 2;          // O: 64 x kHeadDim
  static constexpr int kMergeValues = kOutRegs + 4;      // o, then m and l of two rows
  static constexpr int kMergeBytes = 128 * kMergeValues * 4;
  // +1024: dynamic shared memory is only 16-byte aligned; swizzled tiles need 1024.
  static constexpr size_t kSmemBytes = 1024 + size_t(kQBytes) + 2 * size_t(kStages) * kKvBytes + kMergeBytes;
  // ptxas -v: no spills at 72 / 216; the producer spills at 56, the consumers need under 192.
  static constexpr int kProducerRegs = 72;
  static constexpr int kConsumerRegs = 216;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "P V wrappers exist for n = 64 and 128");
  static_assert(kKeys == 128, "one key per producer thread; S = Q K^T is one m64n128 wgmma chain");
  static_assert(kQBytes % 1024 == 0 && kKvBytes % 1024 == 0 && kMergeBytes % 16 == 0);
  static_assert(kSmemBytes <= 227 * 1024 - 8 * 1024, "room for the static shared state");
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= 65536, "register file");
};

constexpr int32_t kNoKey = -2;  // key_tree of a slot that holds no key (zero-filled, masked)

// Named barriers (0 is __syncthreads).
constexpr int kProducerBarrier = 1;     // the producer's 128 threads: the task slot is written
constexpr int kMergeFullBarrier = 2;    // consumer 1's state is in the merge buffer
constexpr int kMergeEmptyBarrier = 3;   // consumer 0 has read it

// One task as every role needs it, written by the producer into a slot of a 2-deep ring.
struct TaskInfo {
  int32_t index;  // in the work list; -1: no more tasks
  int32_t kv_head, q_begin, q_count, partial, mask;
  int32_t req_first_row, num_new, num_computed, block_table, tree_parents;
  int32_t kv_begin, kv_end;
  // Keys: a_base + [0, num_a) by position (those below a_begin absent), then for a tree task
  // the step's num_new rows by slot; num_blocks blocks of kKeys.
  int32_t a_base, a_begin, num_a, num_keys, num_blocks;
  int32_t pos_lo, pos_hi;  // positions of the tile's tokens
};

template <int kStages, int kKeys>
struct SharedState {
  uint64_t q_full, q_empty;
  uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];
  uint64_t task_full[2], task_empty[2];
  TaskInfo task[2];
  int32_t key_pos[kStages][kKeys];   // per K stage: each key's position
  int32_t key_tree[kStages][kKeys];  // its tree row, -1 for a computed key, or kNoKey
};

// Greedy dealing of eager launches: the next task index, and the CTAs done with the counter
// (the last resets both, so the next launch on the stream starts from zero). One per device,
// so eager launches of this kernel on one device must not overlap (the engine runs one stream).
__device__ uint32_t g_next_task = 0;
__device__ uint32_t g_ctas_done = 0;

// Row j (request-local new-row index) sees tree row i iff i is j or one of its ancestors.
__device__ __forceinline__ bool tree_visible(const int32_t* parents, int32_t i, int32_t j) {
  while (j > i) j = parents[j];
  return j == i;
}

// The producer's warp 0 (all lanes) describes task `index`; lane 0's copy is the one published.
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
  int32_t pos_lo = INT_MAX, pos_hi = INT_MIN;
  for (int j = lane; j < task.q_count; j += 32) {
    const int32_t p = a.positions[req.first_row + task.q_begin + j];
    pos_lo = min(pos_lo, p);
    pos_hi = max(pos_hi, p);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    pos_lo = min(pos_lo, __shfl_xor_sync(0xffffffffu, pos_lo, o));
    pos_hi = max(pos_hi, __shfl_xor_sync(0xffffffffu, pos_hi, o));
  }
  ti.pos_lo = pos_lo;
  ti.pos_hi = pos_hi;
  // Range A by position, clipped to what the mask can show; listed from a_base, the multiple of
  // kKeys at or below a_begin, so blocks do not move with the window start (meta_attention.cu).
  const bool tree = task.mask == meta::MaskKind::kTree;
  const bool masked = task.mask != meta::MaskKind::kNone;
  const int32_t window = masked ? a.window : 0;
  int32_t a_begin = task.kv_begin;
  int32_t a_end = tree ? min(task.kv_end, req.num_computed) : task.kv_end;
  if (masked) a_end = min(a_end, pos_hi + 1);
  if (window > 0) a_begin = max(a_begin, pos_lo - window + 1);
  ti.a_begin = a_begin;
  ti.a_base = a_begin / kKeys * kKeys;
  ti.num_a = a_end > a_begin ? a_end - ti.a_base : 0;
  ti.num_keys = ti.num_a + (tree ? req.num_new : 0);
  ti.num_blocks = (ti.num_keys + kKeys - 1) / kKeys;
  return ti;
}

// ---------------------------------------------------------------------------------------------
// Producer: one key per thread per block (address, position, tree row), then the block's K and V
// 16-byte chunks, a warp's 32 keys at a time, into the swizzled ring stages.
template <class T, class Shared>
__device__ void produce(const AttentionArgs& a, bool dynamic, uint8_t* q_s, uint8_t* k_s, uint8_t* v_s,
                        Shared& sh) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int32_t num_tasks = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  const int log2_bs = __ffs(a.block_size) - 1;
  const int32_t bs_mask = a.block_size - 1;
  // The CTA's t-th task. Lane 0 of warp 0 fetches one task ahead, so the counter's latency
  // hides behind a task. The static deal is XY-Serve's symmetric round-robin over the sorted
  // list (meta::DealPolicy::kSymmetricRoundRobin): lap t runs CTAs 0..G-1, then G-1..0.
  auto fetch = [&](uint32_t t) -> int32_t {
    const uint32_t i = dynamic ? atomicAdd(&g_next_task, 1u)
                               : t * gridDim.x + (t % 2 == 0 ? blockIdx.x : gridDim.x - 1 - blockIdx.x);
    return i < uint32_t(num_tasks) ? int32_t(i) : -1;
  };
  int32_t next = warp == 0 && lane == 0 ? fetch(0) : 0;

  uint32_t g = 0;  // blocks loaded so far: ring slot g % kStages, phase (g / kStages) & 1
  for (uint32_t t = 0;; ++t) {
    const int slot = t % 2;
    if (warp == 0) {
      const int32_t index = __shfl_sync(0xffffffffu, next, 0);
      if (lane == 0 && index >= 0) next = fetch(t + 1);
      const TaskInfo ti = describe_task<T::kKeys>(a, index, lane);
      if (t >= 2) ptx::mbarrier_wait(&sh.task_empty[slot], ((t / 2) - 1) & 1);
      if (lane == 0) {
        sh.task[slot] = ti;
        ptx::mbarrier_arrive(&sh.task_full[slot]);
      }
    }
    ptx::named_barrier_sync(kProducerBarrier, 128);
    const TaskInfo& ti = sh.task[slot];
    if (ti.index < 0) break;

    const int32_t* table = a.block_tables + ti.block_table;
    const int32_t num_a = ti.num_a, num_keys = ti.num_keys;
    // Cache element offset of key kk of the list (-1: none), with its position and tree row.
    auto locate = [&](int32_t kk, int32_t& pos, int32_t& tree_row) -> int64_t {
      int32_t slot_of_key;
      if (kk < num_a) {
        pos = ti.a_base + kk;
        slot_of_key = pos;
        tree_row = pos < ti.a_begin ? kNoKey : -1;
      } else if (kk < num_keys) {
        tree_row = kk - num_a;
        pos = a.positions[ti.req_first_row + tree_row];
        slot_of_key = ti.num_computed + tree_row;
        if (pos < ti.kv_begin || pos >= ti.kv_end) tree_row = kNoKey;
      } else {
        pos = 0;
        tree_row = kNoKey;
      }
      if (tree_row == kNoKey) return -1;
      const int64_t block = table[slot_of_key >> log2_bs];
      return (((block << log2_bs) + (slot_of_key & bs_mask)) * a.num_kv_heads + ti.kv_head) * T::kHeadDim;
    };
    // One ring stage of K or V: this warp's 32 keys, kKeysPerStep keys per instruction.
    auto copy_block = [&](const bf16* cache, uint8_t* dst, int64_t my_addr) {
      constexpr int kKeysPerStep = 32 / T::kChunks;
      const int ch = lane % T::kChunks;
      const uint32_t dst_base = ptx::smem_addr(dst);
#pragma unroll
      for (int i = 0; i < 32 / kKeysPerStep; ++i) {
        const int kw = i * kKeysPerStep + lane / T::kChunks;
        const int64_t addr = __shfl_sync(0xffffffffu, my_addr, kw);
        const bool valid = addr >= 0;
        ptx::cp_async_16(dst_base + sw128_offset(warp * 32 + kw, ch, T::kKeys), cache + (valid ? addr + ch * 8 : 0),
                         valid);
      }
    };
    auto load_q = [&] {
      if (t >= 1) ptx::mbarrier_wait(&sh.q_empty, (t - 1) & 1);
      const int rows = ti.q_count * a.group;
      const int rows_read = rows > 64 ? T::kRows : 64;  // a small tile feeds both consumers rows 0-63
      const int64_t first_row = ti.req_first_row + ti.q_begin;
      const uint32_t q_base = ptx::smem_addr(q_s);
      for (int c = tid; c < rows_read * T::kChunks; c += 128) {
        const int r = c / T::kChunks, ch = c % T::kChunks;
        const bool valid = r < rows;
        const bf16* src = valid ? a.q + (first_row + r / a.group) * a.q_row_stride +
                                      int64_t(ti.kv_head * a.group + r % a.group) * T::kHeadDim + ch * 8
                                : a.q;
        ptx::cp_async_16(q_base + sw128_offset(r, ch, T::kRows), src, valid);
      }
      cp_async_mbarrier_arrive(&sh.q_full);
      ptx::mbarrier_arrive(&sh.q_full);
    };

    // Block 0 first (its ring slot is usually free), then Q once the consumers are done with the
    // previous tile's, then the rest.
    for (int32_t b = 0; b < ti.num_blocks; ++b, ++g) {
      const int s = g % T::kStages;
      int32_t pos, tree_row;
      const int64_t my_addr = locate(b * T::kKeys + tid, pos, tree_row);
      if (g >= T::kStages) ptx::mbarrier_wait(&sh.k_empty[s], ((g / T::kStages) - 1) & 1);
      sh.key_pos[s][tid] = pos;
      sh.key_tree[s][tid] = tree_row;
      copy_block(a.k_cache, k_s + s * T::kKvBytes, my_addr);
      cp_async_mbarrier_arrive(&sh.k_full[s]);
      ptx::mbarrier_arrive(&sh.k_full[s]);
      if (g >= T::kStages) ptx::mbarrier_wait(&sh.v_empty[s], ((g / T::kStages) - 1) & 1);
      copy_block(a.v_cache, v_s + s * T::kKvBytes, my_addr);
      cp_async_mbarrier_arrive(&sh.v_full[s]);
      ptx::mbarrier_arrive(&sh.v_full[s]);
      if (b == 0) load_q();
    }
    if (ti.num_blocks == 0) load_q();
  }
  cp_async_wait_all();  // nothing in flight when the producer leaves
  if (dynamic && tid == 0) {
    __threadfence();
    if (atomicAdd(&g_ctas_done, 1u) == gridDim.x - 1) {
      atomicExch(&g_next_task, 0u);
      atomicExch(&g_ctas_done, 0u);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Consumer `c` (0 or 1): its 64 rows of the tile, or (tile of at most 64 rows) the tile's rows
// against every other key block.
template <class T, class Shared>
__device__ void consume(const AttentionArgs& a, int c, const uint8_t* q_s, const uint8_t* k_s, const uint8_t* v_s,
                        float* merge_s, Shared& sh) {
  const int ctid = threadIdx.x - 128 * (1 + c);
  const int warp = ctid / 32, lane = ctid % 32;
  const int gq = lane / 4, tq = lane % 4;  // accumulator fragment coordinates
  const float scale_log2 = a.scale * 1.4426950408889634f;
  bool merge_written = false;  // consumer 1 has handed a state over (the buffer may be in use)

  uint32_t g = 0;  // blocks consumed so far, as the producer counts them
  for (uint32_t t = 0;; ++t) {
    const int slot = t % 2;
    ptx::mbarrier_wait(&sh.task_full[slot], (t / 2) & 1);
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
    const int32_t window = masked ? a.window : 0;
    const int32_t* parents = ti.tree_parents >= 0 ? a.tree_parents + ti.tree_parents : nullptr;
    // This thread's two rows (gq and gq + 8 of its warp's 16): live, position, new-row index.
    int32_t row_pos[2], row_new[2];
    bool row_live[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row_base + warp * 16 + gq + 8 * h;
      row_live[h] = r < rows;
      row_new[h] = ti.q_begin + r / a.group;
      row_pos[h] = row_live[h] ? a.positions[ti.req_first_row + row_new[h]] : 0;
    }

    float o[T::kOutRegs];
#pragma unroll
    for (int i = 0; i < T::kOutRegs; ++i) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float s[T::kScoreRegs];        // S of the block in hand, then its P in fp32
    uint32_t p[T::kKeys / 16][4];  // P of the previous block: the A fragments of its 8 k-steps
#pragma unroll
    for (int i = 0; i < T::kScoreRegs; ++i) s[i] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < T::kKeys / 16; ++kk) p[kk][0] = p[kk][1] = p[kk][2] = p[kk][3] = 0u;

    ptx::mbarrier_wait(&sh.q_full, t & 1);
    fence_proxy_async_shared();
    const uint32_t q_addr = ptx::smem_addr(q_s) + row_base * 128;
    const int step = split ? 2 : 1;  // this consumer's blocks: all, or those of its parity
    int32_t prev = -1;  // the block whose P V is pending
    bool q_released = false;

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
    // S = Q K^T over the block in K stage `st` (committed as one group).
    auto issue_qk = [&](int st) {
      const uint32_t k_addr = ptx::smem_addr(k_s + st * T::kKvBytes);
      fence_s();
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
    // O += P V over block `blk` (its V stage waited for here; committed as one group).
    auto issue_pv = [&](int32_t blk) {
      const uint32_t gp = g + blk;
      const int sp = gp % T::kStages;
      ptx::mbarrier_wait(&sh.v_full[sp], (gp / T::kStages) & 1);
      fence_proxy_async_shared();
      const uint32_t v_addr = ptx::smem_addr(v_s + sp * T::kKvBytes);
      fence_p();
      fence_o();
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

    for (int32_t b = 0; b < num_blocks; ++b) {
      const uint32_t gb = g + b;
      const int st = gb % T::kStages;
      const uint32_t phase = (gb / T::kStages) & 1;
      if (split && (b & 1) != c) {
        // The other consumer's block: release it in ring order (after it filled, so that this
        // arrival cannot count towards the stage's previous use).
        ptx::mbarrier_wait(&sh.k_full[st], phase);
        ptx::mbarrier_arrive(&sh.k_empty[st]);
        ptx::mbarrier_wait(&sh.v_full[st], phase);
        ptx::mbarrier_arrive(&sh.v_empty[st]);
        continue;
      }
      // S = Q K^T of this block, then O += P V of the previous one behind it: the tensor cores
      // run the P V while this warpgroup masks and exponentiates the new scores.
      ptx::mbarrier_wait(&sh.k_full[st], phase);
      fence_proxy_async_shared();
      ptx::wgmma_fence();  // P and O were last written by plain instructions
      issue_qk(st);
      if (prev >= 0) {
        issue_pv(prev);
        ptx::wgmma_wait<1>();
      } else {
        ptx::wgmma_wait<0>();
      }
      fence_s();
      if (b + step >= num_blocks) {  // this consumer's last Q K^T of the tile is done
        ptx::mbarrier_arrive(&sh.q_empty);
        q_released = true;
      }

      // Mask per element only where some (row, key) pair of the block may be hidden.
      const int32_t k0 = b * T::kKeys;
      const bool whole = ti.a_base + k0 >= ti.a_begin && k0 + T::kKeys <= ti.num_a &&
                         (!masked || (ti.a_base + k0 + T::kKeys - 1 <= ti.pos_lo &&
                                      (window == 0 || ti.a_base + k0 > ti.pos_hi - window)));
#pragma unroll
      for (int j = 0; j < T::kKeys / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[4 * j + e] * scale_log2;
          if (!whole) {
            const int key = 8 * j + 2 * tq + (e & 1), h = e / 2;
            const int32_t kt = sh.key_tree[st][key], kp = sh.key_pos[st][key];
            bool visible = kt != kNoKey && row_live[h];
            if (masked) {
              visible = visible && kp <= row_pos[h];
              if (window > 0) visible = visible && kp > row_pos[h] - window;
              if (kt >= 0) visible = visible && tree_visible(parents, kt, row_new[h]);
            }
            if (!visible) v = -INFINITY;
          }
          s[4 * j + e] = v;
        }
      }
      // Online softmax: the row max over the 4 lanes of a row, then P = 2^(s - max).
      float scale_old[2], m_use[2], row_sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < T::kKeys / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[h], mx);
        m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row that saw nothing keeps p = 0
        scale_old[h] = ex2(m[h] - m_use[h]);
        m[h] = m_new;
      }
#pragma unroll
      for (int i = 0; i < T::kScoreRegs; ++i) {
        s[i] = ex2(s[i] - m_use[(i / 2) % 2]);
        row_sum[(i / 2) % 2] += s[i];
      }
      ptx::mbarrier_arrive(&sh.k_empty[st]);  // scores and key metadata of this stage are used
      if (prev >= 0) {
        ptx::wgmma_wait<0>();
        fence_o();
        fence_p();
        ptx::mbarrier_arrive(&sh.v_empty[(g + prev) % T::kStages]);
      }
#pragma unroll
      for (int i = 0; i < T::kOutRegs; ++i) o[i] *= scale_old[(i / 2) % 2];
#pragma unroll
      for (int h = 0; h < 2; ++h) l[h] = l[h] * scale_old[h] + row_sum[h];  // lane-partial sums
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk) {
        p[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        p[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
      }
      prev = b;
    }
    if (prev >= 0) {  // the last block's P V
      ptx::wgmma_fence();
      issue_pv(prev);
      ptx::wgmma_wait<0>();
      fence_o();
      ptx::mbarrier_arrive(&sh.v_empty[(g + prev) % T::kStages]);
    }
    if (!q_released) ptx::mbarrier_arrive(&sh.q_empty);  // no block of the tile was this consumer's
    g += num_blocks;

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    if (split && num_blocks >= 2) {
      // Consumer 1 hands its (o, m, l) to consumer 0, which folds it in by log-sum-exp. Layout
      // [value][thread]: each warp access is 32 consecutive words.
      if (c == 1) {
        if (merge_written) ptx::named_barrier_sync(kMergeEmptyBarrier, 256);
#pragma unroll
        for (int i = 0; i < T::kOutRegs; ++i) merge_s[i * 128 + ctid] = o[i];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          merge_s[(T::kOutRegs + h) * 128 + ctid] = m[h];
          merge_s[(T::kOutRegs + 2 + h) * 128 + ctid] = l[h];
        }
        named_barrier_arrive(kMergeFullBarrier, 256);
        merge_written = true;
        continue;
      }
      ptx::named_barrier_sync(kMergeFullBarrier, 256);
      float fa[2], fb[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float mw = merge_s[(T::kOutRegs + h) * 128 + ctid];
        const float lw = merge_s[(T::kOutRegs + 2 + h) * 128 + ctid];
        const float m_new = fmaxf(m[h], mw);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        fa[h] = ex2(m[h] - m_use);
        fb[h] = ex2(mw - m_use);
        l[h] = l[h] * fa[h] + lw * fb[h];
        m[h] = m_new;
      }
#pragma unroll
      for (int i = 0; i < T::kOutRegs; ++i) o[i] = o[i] * fa[(i / 2) % 2] + merge_s[i * 128 + ctid] * fb[(i / 2) % 2];
      named_barrier_arrive(kMergeEmptyBarrier, 256);
    } else if (split && c == 1) {
      continue;  // consumer 0 holds the whole state of a one-block tile
    }

    // Write out: normalised rows, or the partial (o, max, sum) of a split task.
    const int64_t first_row = ti.req_first_row + ti.q_begin;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row_base + warp * 16 + gq + 8 * h;
      if (!row_live[h]) continue;
      if (ti.partial < 0) {
        const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
        bf16* out = a.out + (first_row + r / a.group) * (int64_t(a.group) * a.num_kv_heads * T::kHeadDim) +
                    int64_t(ti.kv_head * a.group + r % a.group) * T::kHeadDim;
#pragma unroll
        for (int j = 0; j < T::kHeadDim / 8; ++j)
          *reinterpret_cast<uint32_t*>(out + 8 * j + 2 * tq) =
              pack_bf16(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      } else {
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
  }
  // Balance consumer 0's last arrive on the merge buffer, so no barrier is left half-arrived.
  if (c == 1 && merge_written) ptx::named_barrier_sync(kMergeEmptyBarrier, 256);
}

template <int kHeadDim>
__global__ void __launch_bounds__(WgmmaAttentionTraits<kHeadDim>::kThreads, 1)
    wgmma_attention_kernel(AttentionArgs a, bool dynamic) {
  using T = WgmmaAttentionTraits<kHeadDim>;
  extern __shared__ uint8_t smem_raw[];
  __shared__ SharedState<T::kStages, T::kKeys> sh;
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* q_s = smem;                                  // [kRows] head vectors, swizzled
  uint8_t* k_s = q_s + T::kQBytes;                      // [kStages][kKeys] head vectors
  uint8_t* v_s = k_s + T::kStages * T::kKvBytes;        // [kStages][kKeys] head vectors
  float* merge_s = reinterpret_cast<float*>(v_s + T::kStages * T::kKvBytes);  // [kMergeValues][128]

  if (threadIdx.x == 0) {
    ptx::mbarrier_init(&sh.q_full, 128);
    ptx::mbarrier_init(&sh.q_empty, 256);
    for (int s = 0; s < T::kStages; ++s) {
      ptx::mbarrier_init(&sh.k_full[s], 128);
      ptx::mbarrier_init(&sh.v_full[s], 128);
      ptx::mbarrier_init(&sh.k_empty[s], 256);
      ptx::mbarrier_init(&sh.v_empty[s], 256);
    }
    for (int s = 0; s < 2; ++s) {
      ptx::mbarrier_init(&sh.task_full[s], 1);
      ptx::mbarrier_init(&sh.task_empty[s], 256);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();

  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);  // warp-uniform, visibly
  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<T::kProducerRegs>();
    produce<T>(a, dynamic, q_s, k_s, v_s, sh);
  } else {
    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    consume<T>(a, warpgroup - 1, q_s, k_s, v_s, merge_s, sh);
  }
}

template <int kHeadDim>
void run_wgmma_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = WgmmaAttentionTraits<kHeadDim>;
  // Resident CTAs per SM at this shared memory size (1): the persistent grid's width.
  static const int blocks_per_sm = [] {
    XY_CUDA_CHECK(cudaFuncSetAttribute(wgmma_attention_kernel<kHeadDim>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(T::kSmemBytes)));
    int n = 0;
    XY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, wgmma_attention_kernel<kHeadDim>,
                                                                T::kThreads, T::kSmemBytes));
    return n;
  }();
  if (blocks_per_sm < 1)
    throw CudaError(cat("attention: the wgmma kernel (head_dim ", kHeadDim, ", ", T::kSmemBytes,
                        " bytes of shared memory) does not fit an SM of this device"));
  const bool dynamic = a.task_count == nullptr;
  const int32_t grid = persistent_grid(a.num_tasks, blocks_per_sm);
  wgmma_attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a, dynamic);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace

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
  if (a.head_dim == 64) return run_wgmma_attention<64>(a, stream);
  run_wgmma_attention<128>(a, stream);
}

}  // namespace xy::cuda
