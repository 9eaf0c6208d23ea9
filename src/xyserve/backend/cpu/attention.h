// Paged attention on the CPU as a task primitive: the shape the meta-kernel work list of
// DESIGN.md ("Plan") hands to every backend. A task is one request, one KV head, a tile of that
// request's query rows (with every query head that shares the KV head: GQA) and a span of KV
// positions read through the block table. A task returns an un-normalized output with each
// row's softmax (max, sum), so that a long span can be split over tasks and the partials merged
// by log-sum-exp (merge_partial).
//
// Determinism: for one query row, keys are visited in ascending position in block-aligned chunks
// and every reduction runs in a fixed order, so a row's result depends only on its own position
// and KV, never on the other rows of the tile or the batch.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xyserve/backend/cpu/kv_cache.h"
#include "xyserve/meta/attention_work_list.h"
#include "xyserve/meta/step_plan.h"

namespace xy::backend::cpu {

class ThreadPool;

// kNone: every key of the span is visible; kCausal: key k visible from the query at position p
// iff k <= p; kWindow: causal and k > p - window; kTree: causal over positions where keys of the
// step's rows are the row's ancestors (see tree_parents), and the window when window > 0.
using MaskKind = meta::MaskKind;

struct AttentionTaskArgs {
  // q of (row i, group head g) is at q + i * q_row_stride + g * head_dim: the first of the
  // group_size query heads that share kv_head.
  const float* q = nullptr;
  int64_t q_row_stride = 0;
  int32_t num_rows = 0;
  int32_t group_size = 1;
  // Tile row i is the request's new row j = row_begin + i, whose K and V sit in KV slot
  // num_computed + j. In a chain (tree_parents empty) it is at position num_computed + j and
  // slot = position for every key. In a draft tree (StepPlan's tree_parents of the request's new
  // rows) it is at position num_computed + depth(j) and sees the computed keys and its own
  // ancestors: the key at position num_computed + d lives in the slot of its depth-d ancestor.
  // Keys are always visited in position order, so a tree row equals, bit for bit, the same
  // row decoded as a chain.
  int32_t num_computed = 0;
  int32_t row_begin = 0;
  std::span<const int32_t> tree_parents;
  int32_t* path_scratch = nullptr;  // tree only: [tree_parents.size()]
  MaskKind mask = MaskKind::kCausal;
  int32_t window = 0;  // kWindow only: > 0

  PagedKvView kv;
  std::span<const int32_t> block_table;
  int64_t kv_head = 0;
  int32_t kv_begin = 0;  // KV positions [kv_begin, kv_end) (positions, not slots)
  int32_t kv_end = 0;
  float scale = 1.0f;  // on q·k, usually 1/sqrt(head_dim)

  // Outputs, for (row i, head g): out + i * out_row_stride + g * head_dim holds
  // sum_k exp(s_k - max) v_k, and stats[(i * group_size + g)] its (max, sum); a row that sees no
  // key gets (-inf, 0) and a zero output.
  float* out = nullptr;
  int64_t out_row_stride = 0;
  float* row_max = nullptr;  // [num_rows * group_size]
  float* row_sum = nullptr;  // [num_rows * group_size]
  float* scratch = nullptr;  // [kv.block_size] scores
};

// Runs one task. Thread-safe for tasks with disjoint outputs and scratch.
void attend_partial(const AttentionTaskArgs& args);

// Folds partial (o_b, max_b, sum_b) into (o_a, max_a, sum_a), both un-normalized over disjoint
// KV spans: the result is the partial of the union. o_*: [head_dim].
void merge_partial(float* o_a, float& max_a, float& sum_a, const float* o_b, float max_b,
                   float sum_b, int64_t head_dim);

// o /= sum (a row that saw no key stays 0).
void normalize_partial(float* o, float sum, int64_t head_dim);

struct AttentionLayerArgs {
  const meta::StepPlan* plan = nullptr;
  const float* q = nullptr;  // [M, num_heads, head_dim], rows q_row_stride floats apart
  int64_t q_row_stride = 0;
  PagedKvView kv;  // the layer's cache, this step's rows already written
  int64_t num_heads = 0;
  int32_t window = 0;  // 0: full causal attention
  float scale = 1.0f;
  float* out = nullptr;  // [M, num_heads, head_dim], normalized
};

// Runs the attention of one layer: every task of the step's work list (meta/), then the
// log-sum-exp merge of split spans in split order. The work list is built once per step and
// shared by the layers with the same window. Holds the partial buffers and per-task scratch,
// grown once and reused (no allocation per step after warm-up).
class AttentionRunner {
 public:
  void run(const AttentionLayerArgs& args, const meta::AttentionWorkList& work, ThreadPool* pool);

 private:
  std::vector<float> partial_out_;    // [num_partials, tile rows, head_dim]
  std::vector<float> partial_stats_;  // [num_partials, 2, tile rows]: max then sum
  std::vector<float> stats_;          // per task: max and sum of its rows
  std::vector<float> scratch_;        // per task: block_size scores
  std::vector<int32_t> paths_;        // per task: a tree row's ancestors
};

}  // namespace xy::backend::cpu
