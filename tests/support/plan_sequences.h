// Sequences whose KV blocks come from a shuffled pool, and the StepPlans that advance them:
// prefill chunks, decodes and draft-tree verifies, with random token ids. For backend tests that
// run the same steps on two backends (CPU and GPU, eager and graphs) and compare their logits.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::testing {

struct PlanSequence {
  std::vector<int32_t> tokens;  // every token the sequence has, computed or not
  int32_t computed = 0;
  std::vector<int32_t> table;
};

class PlanSequences {
 public:
  PlanSequences(int64_t vocab, uint64_t seed, int32_t num_blocks, int32_t block_size)
      : rng_(seed), vocab_(vocab), block_size_(block_size) {
    free_.resize(size_t(num_blocks));
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng_);
  }
  // A sequence of `num_tokens` random tokens, none computed; returns its index.
  int32_t add_seq(int32_t num_tokens) {
    PlanSequence s;
    for (int32_t i = 0; i < num_tokens; ++i) s.tokens.push_back(token());
    seqs_.push_back(std::move(s));
    return int32_t(seqs_.size() - 1);
  }
  int32_t size() const { return int32_t(seqs_.size()); }
  int32_t block_size() const { return block_size_; }
  PlanSequence& seq(int32_t i) { return seqs_[size_t(i)]; }
  int32_t token() { return int32_t(rng_() % uint64_t(vocab_)); }
  std::mt19937_64& rng() { return rng_; }
  int32_t take_block() {
    EXPECT_FALSE(free_.empty()) << "test block pool exhausted";
    const int32_t b = free_.back();
    free_.pop_back();
    return b;
  }
  // Rows for tokens [computed, computed + n) of sequence i; the last `logits_rows` get logits.
  void add_rows(meta::StepPlan& plan, int32_t i, int32_t n, int32_t logits_rows) {
    PlanSequence& s = seq(i);
    append(plan, i, n, logits_rows);
    for (int32_t j = 0; j < n; ++j) {
      plan.token_ids.push_back(s.tokens[size_t(s.computed + j)]);
      plan.positions.push_back(s.computed + j);
    }
    s.computed += n;
  }
  // One decode row of sequence i (a new token is drawn when it has none left to compute).
  void add_decode(meta::StepPlan& plan, int32_t i) {
    PlanSequence& s = seq(i);
    if (s.computed == int32_t(s.tokens.size())) s.tokens.push_back(token());
    add_rows(plan, i, 1, 1);
  }
  // A draft tree of parents.size() rows after sequence i's computed tokens (not computed by
  // this call); `drafts` receives the random draft tokens, a row's position is its depth.
  void add_tree(meta::StepPlan& plan, int32_t i, const std::vector<int32_t>& parents,
                std::vector<int32_t>& drafts) {
    const int32_t n = int32_t(parents.size());
    const int32_t computed = seq(i).computed;
    append(plan, i, n, n).tree_parents = parents;
    drafts.clear();
    for (int32_t j = 0; j < n; ++j) {
      int32_t depth = 0;
      for (int32_t a = j; a > 0; a = parents[size_t(a)]) ++depth;
      drafts.push_back(token());
      plan.token_ids.push_back(drafts.back());
      plan.positions.push_back(computed + depth);
    }
  }

 private:
  // A request of n rows of sequence i, its table grown to cover them; rows are the caller's.
  meta::ScheduledRequest& append(meta::StepPlan& plan, int32_t i, int32_t n, int32_t logits_rows) {
    PlanSequence& s = seq(i);
    while (int32_t(s.table.size()) * block_size_ < s.computed + n) s.table.push_back(take_block());
    meta::ScheduledRequest r;
    r.request_id = i;
    r.num_computed_tokens = s.computed;
    r.num_new_tokens = n;
    r.first_row = plan.num_rows();
    r.num_logits_rows = logits_rows;
    r.block_table = s.table;
    plan.requests.push_back(std::move(r));
    return plan.requests.back();
  }

  std::mt19937_64 rng_;
  int64_t vocab_;
  int32_t block_size_;
  std::vector<int32_t> free_;
  std::vector<PlanSequence> seqs_;
};

}  // namespace xy::testing
