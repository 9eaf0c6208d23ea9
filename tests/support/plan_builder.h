// Builds StepPlans by hand for backend and kernel tests: one request's rows, positions (a
// draft-tree row sits at its depth) and block table taken from a pool of free block ids.
#pragma once

#include <cstdint>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::testing {

// Appends a request with `num_new` rows after `num_computed` cached tokens (token ids 0) to
// `plan`, taking its blocks from the back of `pool`. `tree_parents` empty: a chain.
inline meta::ScheduledRequest& append_request(meta::StepPlan& plan, int64_t id, int32_t num_computed,
                                              int32_t num_new, std::vector<int32_t> tree_parents,
                                              std::vector<int32_t>& pool) {
  meta::ScheduledRequest req;
  req.request_id = id;
  req.num_computed_tokens = num_computed;
  req.num_new_tokens = num_new;
  req.first_row = plan.num_rows();
  req.tree_parents = std::move(tree_parents);
  for (int32_t j = 0; j < num_new; ++j) {
    int32_t depth = j;
    if (!req.tree_parents.empty()) {
      depth = 0;
      for (int32_t x = j; x > 0; x = req.tree_parents[size_t(x)]) ++depth;
    }
    plan.positions.push_back(num_computed + depth);
    plan.token_ids.push_back(0);
  }
  const int32_t need = (num_computed + num_new + plan.block_size - 1) / plan.block_size;
  for (int32_t b = 0; b < need; ++b) {
    req.block_table.push_back(pool.back());
    pool.pop_back();
  }
  plan.requests.push_back(std::move(req));
  return plan.requests.back();
}

// A random draft tree of n rows: row 0 the root, each later row's parent an earlier row.
template <class Rng>
std::vector<int32_t> random_tree(int32_t n, Rng& rng) {
  std::vector<int32_t> parents{-1};
  for (int32_t j = 1; j < n; ++j) parents.push_back(int32_t(rng() % uint32_t(j)));
  return parents;
}

}  // namespace xy::testing
