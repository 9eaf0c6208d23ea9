// Attention of one step as a flat work list of uniform tasks (DESIGN.md, "Plan"; XY-Serve's
// Meta-Attention). A task is one request, one KV head, one query tile and one KV span: the
// matmul-softmax-matmul pattern on tiles of fixed size. The query tile packs the query heads
// that share the KV head (GQA) with the request's query tokens, so a decode (one token) still
// fills `group` rows and a verify of k+1 tokens fills (k+1) * group rows.
//
// Long KV spans are split at fixed multiples of `kv_split` positions. Splitting by position,
// never by what else is in the batch, keeps every row's reduction order independent of the
// batch, of chunking and of prefix hits, which the exact invariances need. Split tasks write
// partial results (un-normalised output, row max, row sum) that a merge step combines by
// log-sum-exp in split order.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::meta {

enum class MaskKind : uint8_t {
  kNone,    // every key of the span is visible to every row of the tile
  kCausal,  // key k visible from query position p iff k <= p
  kWindow,  // causal, and also k > p - window
  kTree,    // draft-tree rows: keys before the step's rows as causal (and window); among the
            // step's rows, only the row's ancestors (ScheduledRequest::tree_parents)
};

const char* mask_kind_name(MaskKind kind);

struct AttentionShape {
  int32_t num_heads = 0;     // query heads
  int32_t num_kv_heads = 0;  // KV heads; num_heads % num_kv_heads == 0
  int32_t window = 0;        // sliding window in tokens for this layer; 0: none

  int32_t group() const { return num_heads / num_kv_heads; }
};

struct WorkListOptions {
  // Query rows per tile (query tokens x heads of a GQA group). 64 matches one Hopper wgmma M.
  int32_t tile_rows = 64;
  // KV spans are cut at multiples of this many positions (a multiple of the block size).
  int32_t kv_split = 1024;
  // L2 sections: the tiles of one request and KV head read the same keys, and tasks sorted by
  // cost alone run every head's tiles at once (a causal prefill's tiles of equal cost are those
  // at one query position in every head), so the SMs stream all of the step's KV through L2 at
  // the same time. When > 0, the (request, KV head) pairs are grouped in plan order into
  // sections whose KV spans sum to at most this many positions (one KV head's K and V row
  // each; a pair alone may exceed it); sections run largest task first, and each section's tasks
  // largest first. The backend sets it from the L2 size (FlashAttention-3's scheduler bands
  // heads the same way). 0: one list sorted by cost.
  int64_t l2_section_positions = 0;
  // Spread the small tiles (at most tile_rows / 2 rows: decodes, short verifies) evenly through
  // the list instead of after the large ones. A persistent kernel runs one task per SM at a time;
  // small tiles read their own KV once (memory-bound), large ones mostly compute, so when both
  // kinds run side by side the small tiles' SMs can draw more than an even share of the memory
  // bandwidth while the others compute (POD-Attention's point), where in cost order the step
  // computes first and then streams. Each kind keeps its order (sections, largest first).
  bool interleave_small_tiles = false;
};

struct AttentionTask {
  int32_t request = 0;   // index into StepPlan::requests
  int32_t kv_head = 0;
  int32_t q_begin = 0;   // request-local index of the first query token of the tile
  int32_t q_count = 0;   // query tokens in the tile; rows = q_count * group
  int32_t kv_begin = 0;  // KV positions [kv_begin, kv_end)
  int32_t kv_end = 0;
  MaskKind mask = MaskKind::kNone;
  int32_t partial = -1;  // partial-result slot, or -1 to write the normalised output directly
  int64_t cost = 0;      // (query row, visible key) pairs: the work the task does
};

// The split tasks of one (request, kv head, query tile), merged in split order into the output.
struct MergeGroup {
  int32_t request = 0;
  int32_t kv_head = 0;
  int32_t q_begin = 0;
  int32_t q_count = 0;
  int32_t first_partial = 0;  // its partial slots are [first_partial, first_partial + num_partials)
  int32_t num_partials = 0;
};

struct AttentionWorkList {
  // Sorted by cost, largest first (within L2 sections when WorkListOptions::l2_section_positions).
  std::vector<AttentionTask> tasks;
  std::vector<MergeGroup> merges;
  int32_t num_partials = 0;     // partial slots; each holds tile_rows rows
  int32_t max_tile_tokens = 0;  // query tokens per tile (tile_rows / group)
  int64_t total_cost() const;
};

// Builds the work list of a step. A row's position is plan.positions[first_row + j] (for a
// draft tree, num_computed_tokens + its depth), so a tree row sees keys at positions up to its
// own: the computed ones and one ancestor at each depth. Spans that no row of the tile can see
// get no task. Preconditions: shape valid, options.tile_rows >= group.
AttentionWorkList build_attention_work_list(const StepPlan& plan, const AttentionShape& shape,
                                            const WorkListOptions& options = {});

// Number of (query, key) pairs visible between query positions [q_pos_begin, q_pos_end) and
// keys [kv_begin, kv_end) under causal masking with an optional window (0: none).
int64_t visible_pairs(int32_t q_pos_begin, int32_t q_pos_end, int32_t kv_begin, int32_t kv_end,
                      int32_t window);

// How the tasks are dealt to a persistent grid of `num_workers` workers.
enum class DealPolicy {
  kSymmetricRoundRobin,  // XY-Serve: 0,1,..,n-1,n-1,..,1,0,0,1,.. over tasks sorted by cost
  kGreedy,               // each task to the least-loaded worker so far (LPT)
};
// Returns, for each worker, the indices of its tasks in execution order.
std::vector<std::vector<int32_t>> deal_tasks(const AttentionWorkList& list, int32_t num_workers,
                                             DealPolicy policy);

std::ostream& operator<<(std::ostream& out, const AttentionWorkList& list);

}  // namespace xy::meta
