// Launchers of the CUDA backend's kernels (one small .cu each, named for what it does). Every
// launcher checks the launch (XY_CUDA_CHECK_LAUNCH) and runs on the caller's stream. Shapes are
// in the comments; "rows" are the step's M token rows. Pointers are device pointers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "xyserve/meta/attention_work_list.h"
#include "xyserve/meta/step_plan.h"

namespace xy::cuda {

using bf16 = __nv_bfloat16;

// One request of the uploaded plan: what the attention kernel needs to find its rows and KV.
struct PlanRequest {
  int32_t first_row = 0;
  int32_t num_new = 0;
  int32_t num_computed = 0;
  int32_t block_table = 0;   // offset of its block ids in the plan's block-table array
  int32_t tree_parents = -1;  // offset of its tree_parents in the plan's parent array; -1: chain
};

// out[i, :] = float(table[ids[i], :]).  table: [vocab, hidden] bf16; out: [m, hidden] fp32.
// Precondition (checked on the host by the caller): every id is in [0, vocab).
void launch_embedding(const bf16* table, int64_t hidden, const int32_t* ids, int32_t m,
                      float* out, cudaStream_t stream);

// For each output row i, with r = rows ? rows[i] : i:
//   residual[r, :] += float(delta[r, :])            (when delta is not null)
//   out[i, :] = bf16(residual[r, :] / sqrt(mean(residual[r, :]^2) + eps) * weight)
// fp32 math. residual: [*, hidden] fp32; delta: [*, hidden] bf16; weight: [hidden]; out:
// [num_rows, hidden]. The gathered form (rows) serves the final norm on the logits rows only.
void launch_add_rms_norm(float* residual, const bf16* delta, const bf16* weight,
                         const int32_t* rows, int32_t num_rows, int64_t hidden, float eps,
                         bf16* out, cudaStream_t stream);

// The attention prologue of one layer, per row: q/k/v bias (Qwen2), RMSNorm over each head of q
// and k (Qwen3), RoPE on q and k (rotate_half layout, cos/sin of position * inv_freq computed in
// double as the CPU backend does), q written back in place, k and v written into KV slot
// kv_slots[row] (= block * block_size + offset) of the layer's paged cache.
struct QkvPrologueArgs {
  bf16* qkv = nullptr;          // [m, q_dim + 2 * kv_dim], row stride qkv_dim
  int32_t m = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  const bf16* bias = nullptr;    // [qkv_dim] or null
  const bf16* q_norm = nullptr;  // [head_dim] or null (then k_norm is null too)
  const bf16* k_norm = nullptr;
  float eps = 1e-6f;
  const double* inv_freq = nullptr;  // [head_dim / 2]
  const int32_t* positions = nullptr;  // [m]
  const int32_t* kv_slots = nullptr;   // [m]
  bf16* k_cache = nullptr;  // [num_blocks * block_size, num_kv_heads, head_dim]
  bf16* v_cache = nullptr;
};
void launch_qkv_prologue(const QkvPrologueArgs& args, cudaStream_t stream);

// out[i, j] = silu(gate_up[i, j]) * gate_up[i, inter + j].  gate_up: [m, 2 * inter]; out: [m, inter].
void launch_silu_mul(const bf16* gate_up, int32_t m, int64_t inter, bf16* out, cudaStream_t stream);

// The plan's KV housekeeping in every layer: block copies, then slot moves, each in plan order
// (a later move may read what an earlier one wrote). cache: num_planes planes (K and V of every
// layer) of [num_blocks, block_size, slot_elems] bf16.
void launch_kv_copies_and_moves(bf16* cache, int32_t num_planes, int64_t plane_elems,
                                int32_t block_size, int64_t slot_elems,
                                const meta::KvBlockCopy* copies, int32_t num_copies,
                                const meta::KvSlotMove* moves, int32_t num_moves,
                                cudaStream_t stream);

// Attention of one layer over the step's work list (meta/attention_work_list.h): one CTA per
// task, a GQA-packed query tile of up to kAttentionTileRows rows against a KV span read through
// the block table, masks none/causal/window/tree, online softmax in fp32. A task with
// partial < 0 writes its normalised rows to `out`; a split task writes (o, max, sum) to its
// partial slot, and launch_attention_merge folds them in split order.
//
// With batch_invariant, a row's result depends on its query, its visible keys and its position
// only, never on the other rows of its tile or step: keys are consumed in blocks that start at
// absolute multiples of the kernel's key block (whatever the span or the window start), a
// direct write and a merge of one non-empty partial both compute o * (1 / sum) (empty partials
// are skipped), and every tile is reduced in one order (the tensor-core kernel's key split of
// small tiles is off; the CUDA-core kernel has none). Draft-tree rows are the exception: a
// branching tree's keys follow the computed keys in tree-row order, so the offsets at which a
// row meets its ancestors depend on the tree's shape.
inline constexpr int32_t kAttentionTileRows = 64;
struct AttentionArgs {
  const bf16* q = nullptr;  // [m, num_heads, head_dim] with row stride q_row_stride
  int64_t q_row_stride = 0;
  // m, where known: the wgmma kernel then loads query tiles of more than 64 rows by TMA (a box
  // may reach past the step's rows, which must read as zeros); 0: by cp.async.
  int32_t num_q_rows = 0;
  const bf16* k_cache = nullptr;  // this layer's [num_blocks * block_size, num_kv_heads, head_dim]
  const bf16* v_cache = nullptr;
  int32_t block_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t group = 0;   // query heads per KV head
  int32_t window = 0;  // sliding window of this layer; 0: none
  float scale = 1.0f;  // on q·k
  const int32_t* positions = nullptr;     // [m]
  const PlanRequest* requests = nullptr;  // [num requests]
  const int32_t* block_tables = nullptr;
  const int32_t* tree_parents = nullptr;
  const meta::AttentionTask* tasks = nullptr;
  int32_t num_tasks = 0;
  // CUDA graphs: when not null, the number of tasks is read on the device from *task_count
  // (at most num_tasks, which is then only the capacity of `tasks`) and the launch is a
  // persistent grid striding over the tasks, so one launch configuration serves every step.
  const int32_t* task_count = nullptr;
  // Deterministic mode: every tile is reduced in the same order whatever its number of rows
  // (the tensor-core kernel does not split a small tile's keys across warps).
  bool batch_invariant = false;
  bf16* out = nullptr;  // [m, num_heads * head_dim]
  // Partials: [num_partials, partial_rows, head_dim] and [num_partials, partial_rows] twice; max
  // in log2 units (the kernels' softmax is base 2). partial_rows is the work list's tile_rows.
  int32_t partial_rows = kAttentionTileRows;
  float* partial_out = nullptr;
  float* partial_max = nullptr;
  float* partial_sum = nullptr;
};
// Which kernel runs the work list: kAuto takes the tensor-core kernel (meta_attention.cu) for
// head_dim 64 and 128 and the CUDA-core one (attention.cu) otherwise; the others force one
// (each throws InvalidArgument on a head_dim or task it does not serve). All write the same
// outputs.
//   kTensorCore  mma.sync, 64-row tiles (meta_attention.cu); the deterministic mode's kernel
//   kCudaCore    the first kernel (attention.cu), any head_dim
//   kWgmma       Hopper wgmma with producer/consumer warpgroups (meta_attention_wgmma.cu)
//   kDecode      decode-specialised: tasks of at most kDecodeMaxRows rows (decode_attention.cu)
enum class AttentionKernel { kAuto, kTensorCore, kCudaCore, kWgmma, kDecode };
void launch_attention(const AttentionArgs& args, cudaStream_t stream,
                      AttentionKernel kernel = AttentionKernel::kAuto);
void launch_attention_wgmma(const AttentionArgs& args, cudaStream_t stream);

// The wgmma kernel's timeline instrument, compiled in only with the CMake option
// XY_ATTENTION_TIMELINE (a bench build): per CTA (the first kTimelineCtas) and task in its order
// (the first kTimelineTasks), kTimelineFields values of consumer 0, clock64() stamps of the
// phases below and the task's index and key blocks. take_attention_timeline() waits for the
// device, returns [cta][task][field] and clears it (-1: no task).
enum TimelineField : int {
  kTaskIndex, kNumBlocks, kTaskIn, kQueryIn, kFirstKeysIn, kBlocksDone, kStaged, kReleased, kWrittenOut
};
inline constexpr int kTimelineFields = 9;
inline constexpr int kTimelineCtas = 132;
inline constexpr int kTimelineTasks = 256;
#if XY_ATTENTION_TIMELINE
std::vector<long long> take_attention_timeline();
#endif
inline constexpr int32_t kDecodeMaxRows = 16;
// meta::WorkListOptions::l2_section_positions for a device with `l2_bytes` of L2: the KV (K and
// V rows of one head, bf16) of a section takes half of it, leaving the rest to the queries,
// outputs and the other SMs' traffic. (FlashAttention-3 bands heads into 32 MB on a 50 MB H100.)
inline int64_t attention_l2_section_positions(int64_t l2_bytes, int32_t head_dim) {
  return l2_bytes / 2 / (int64_t(head_dim) * 2 * 2);
}
void launch_attention_decode(const AttentionArgs& args, cudaStream_t stream);
// The first, CUDA-core kernel (any head_dim multiple of 8 up to 256), kept for comparison.
void launch_attention_cuda_core(const AttentionArgs& args, cudaStream_t stream);

// Folds each merge group's partials in split order and writes the normalised rows to args.out.
// merge_count: as AttentionArgs::task_count, for the merges (null: num_merges of them).
void launch_attention_merge(const AttentionArgs& args, const meta::MergeGroup* merges,
                            int32_t num_merges, cudaStream_t stream,
                            const int32_t* merge_count = nullptr);

// Grid of a persistent launch on the current device: enough CTAs to fill every SM at
// `blocks_per_sm`, never more than `max_items` (and at least one).
int32_t persistent_grid(int32_t max_items, int blocks_per_sm);

// CTAs of `kernel` (a __global__ function) resident per SM on the current device with `threads`
// threads and `smem_bytes` of dynamic shared memory, after allowing it that much (the persistent
// grid's width). Throws CudaError naming `what` when not one CTA fits an SM. The allowance is a
// per-device setting (cudaFuncSetAttribute), so this is worked out once per (kernel, device) and
// kept: call it before every launch (a lookup after the first), so that a process driving
// several GPUs (tensor parallelism) has the limit raised on each.
int resident_ctas_per_sm(const void* kernel, int threads, size_t smem_bytes, const char* what);

}  // namespace xy::cuda
