// What one engine step runs: a batch of M token rows that every GEMM sees, and for each
// request its slice of those rows, where its KV lives, and which rows need logits. Plain data,
// printable, built and checked without any backend (STYLE.md habit 3).
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

namespace xy::meta {

// One request's share of a step. Its j-th new row writes its K and V into KV slot
// num_computed_tokens + j and is rotated by RoPE at StepPlan::positions[first_row + j] (the
// same number, except for draft-tree rows, whose position is their depth in the tree). A row
// sees the KV of every computed slot of the same request and of the new rows before it (the
// causal mask with the offset that chunking and prefix hits create), or, for a draft tree,
// only of its ancestors in the tree.
struct ScheduledRequest {
  int64_t request_id = 0;
  int32_t num_computed_tokens = 0;  // positions already in the KV cache
  int32_t num_new_tokens = 0;       // query rows this step
  int32_t first_row = 0;            // index of the first of them in StepPlan::token_ids
  // KV block ids covering positions [0, num_computed_tokens + num_new_tokens): position p lives
  // in block block_table[p / block_size], slot p % block_size.
  std::vector<int32_t> block_table;
  // How many of this request's last rows need logits: 1 to sample the next token, 0 for a
  // prefill chunk that does not reach the end of the prompt.
  int32_t num_logits_rows = 0;
  // Speculative verify with a draft tree: tree_parents[j] is the index of new row j's parent
  // among this step's new rows, -1 for row 0 (whose parent is the last computed token), and
  // parents come before children. Empty: a chain, which is plain causal.
  std::vector<int32_t> tree_parents;
};

// Copy KV slots [0, num_tokens) of block src_block into dst_block, in every layer: the
// copy-on-write of a shared, partly filled block. Runs before the step's forward pass.
struct KvBlockCopy {
  int32_t src_block = 0;
  int32_t dst_block = 0;
  int32_t num_tokens = 0;
};

// Move one KV slot to another, in every layer: compaction of an accepted draft-tree path into
// consecutive slots. Runs before the step's forward pass, after the block copies, in order.
struct KvSlotMove {
  int32_t src_block = 0, src_slot = 0;
  int32_t dst_block = 0, dst_slot = 0;
};

struct StepPlan {
  int32_t block_size = 16;
  std::vector<int32_t> token_ids;  // [M]
  std::vector<int32_t> positions;  // [M]
  std::vector<ScheduledRequest> requests;
  std::vector<KvBlockCopy> kv_copies;
  std::vector<KvSlotMove> kv_moves;

  int32_t num_rows() const { return int32_t(token_ids.size()); }
  int32_t num_logits_rows() const {
    int32_t n = 0;
    for (const auto& r : requests) n += r.num_logits_rows;
    return n;
  }
};

std::ostream& operator<<(std::ostream& out, const StepPlan& plan);

// Checks what every backend relies on (XY_CHECK: a broken plan is a bug in the scheduler): rows
// of a request contiguous and in plan order; logits rows within the new rows; block tables
// covering the new positions with ids below num_kv_blocks; draft trees well formed; row j's
// position num_computed_tokens + j, or + its depth in a draft tree.
void check_step_plan(const StepPlan& plan, int32_t block_size, int32_t num_kv_blocks);

}  // namespace xy::meta
