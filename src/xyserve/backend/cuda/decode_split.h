// The KV split of decode-only steps for the decode attention kernel (kernels/decode_attention.cu):
// which kv_split to build the step's work list with so that the kernel keeps every SM streaming
// KV without needless partials. Pure host functions; the backend and the attention bench call them
// when they plan a decode-only step for AttentionKernel::kDecode.
#pragma once

#include <cstdint>
#include <span>

#include "xyserve/meta/attention_work_list.h"
#include "xyserve/meta/step_plan.h"

namespace xy::cuda {

// CTAs of the decode kernel resident on one SM. Its shared memory (112 KB at head_dim 128, 104 KB at
// 64) and __launch_bounds__ are sized for two; the split rule counts its workers with this.
inline constexpr int32_t kDecodeCtasPerSm = 2;

struct DecodeSplitShape {
  int32_t num_kv_heads = 0;
  int32_t block_size = 16;
  int32_t window = 0;   // the layer's sliding window (0: none): a decode sees its last `window` keys
  int32_t num_sms = 0;  // of the device the kernel runs on
};

// The kv_split (a multiple of block_size) for a decode-only step whose query tiles see
// context_lengths[i] keys each (a decode at position p sees p + 1 keys). A request with several
// query tiles (a verify longer than one tile) appears once per tile. See decode_split.cpp for the
// rule and its arithmetic. Preconditions: num_kv_heads, block_size and num_sms > 0.
int32_t decode_kv_split(std::span<const int32_t> context_lengths, const DecodeSplitShape& shape);

// The same for a decode-only plan whose work list is built with `tile_tokens` query tokens per
// tile (tile_rows / group): each request counts num_computed + num_new keys, once per tile.
int32_t decode_kv_split(const meta::StepPlan& plan, int32_t tile_tokens, const DecodeSplitShape& shape);

// What the rule weighs for one candidate split, in units of keys that one CTA streams at its fair
// share of the device's bandwidth (exposed for the tests and the bench).
struct DecodeSplitEstimate {
  int64_t num_tasks = 0;
  int64_t num_partials = 0;
  int64_t total = 0;     // keys of every task, plus the per-task overhead
  int64_t makespan = 0;  // the most any CTA gets under the kernel's deal
  double cost = 0;       // what the rule minimises
};
DecodeSplitEstimate estimate_decode_split(std::span<const int32_t> context_lengths, const DecodeSplitShape& shape,
                                          int32_t kv_split);

// Throws InvalidArgument naming the first task of `list` with more than kDecodeMaxRows rows
// (q_count * group): the decode kernel runs such a task correctly, in slabs of 16 rows that each
// read the span again, but it is the tensor-core kernel's work. The launcher cannot check this
// itself: the tasks are in device memory.
void check_decode_work_list(const meta::AttentionWorkList& list, int32_t group);

}  // namespace xy::cuda
