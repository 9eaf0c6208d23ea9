// What one engine step runs: a batch of M token rows that every GEMM sees, and for each
// request its slice of those rows, where its KV lives, and which rows need logits. Plain data,
// printable, built and checked without any backend (STYLE.md habit 3).
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

namespace xy::meta {

// One request's share of a step. Its query rows are at positions
// [num_computed_tokens, num_computed_tokens + num_new_tokens) and see the KV of every earlier
// position of the same request (the causal mask with the offset that chunking and prefix hits
// create).
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
};

struct StepPlan {
  int32_t block_size = 16;
  std::vector<int32_t> token_ids;  // [M]
  std::vector<int32_t> positions;  // [M]
  std::vector<ScheduledRequest> requests;

  int32_t num_rows() const { return int32_t(token_ids.size()); }
  int32_t num_logits_rows() const {
    int32_t n = 0;
    for (const auto& r : requests) n += r.num_logits_rows;
    return n;
  }
};

std::ostream& operator<<(std::ostream& out, const StepPlan& plan);

}  // namespace xy::meta
