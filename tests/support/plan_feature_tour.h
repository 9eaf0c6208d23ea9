// Steps that exercise every StepPlan feature, for backend tests that run the same steps on two
// backends and compare what they give: a prefill with logits on every row beside a chunk that
// gets none, a mixed batch with the first 600 rows of an 1100-token prompt (its attention split
// and merged), the rest of it, a draft-tree verify, slot moves that compact the accepted path
// beside a copy-on-write block copy, then decodes at batch 1, 2 and 4, each `repeats` times (so
// that a graph backend captures each bucket, then replays it).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "support/plan_sequences.h"
#include "xyserve/meta/step_plan.h"

namespace xy::testing {

using StepRunner = std::function<void(const meta::StepPlan& plan, const char* what)>;

// Adds its sequences to `sc` (which needs ~60 free blocks of 16 tokens) and runs each step.
inline void run_plan_feature_tour(PlanSequences& sc, int repeats, const StepRunner& run) {
  const int32_t bs = sc.block_size();
  const int32_t a = sc.add_seq(40), b = sc.add_seq(50), c = sc.add_seq(12), e = sc.add_seq(1100);
  auto plan = [bs] {
    meta::StepPlan p;
    p.block_size = bs;
    return p;
  };
  auto append_token = [&](int32_t i) { sc.seq(i).tokens.push_back(sc.token()); };
  {
    meta::StepPlan p = plan();
    sc.add_rows(p, a, 40, 40);
    sc.add_rows(p, b, 20, 0);
    run(p, "prefill + chunk");
  }
  {
    append_token(a);
    meta::StepPlan p = plan();
    sc.add_rows(p, a, 1, 1);
    sc.add_rows(p, b, 30, 3);
    sc.add_rows(p, c, 12, 1);
    sc.add_rows(p, e, 600, 2);
    run(p, "mixed batch");
  }
  {
    append_token(c);
    meta::StepPlan p = plan();
    sc.add_rows(p, c, 1, 1);
    sc.add_rows(p, e, 500, 5);
    run(p, "long prompt, split and merged");
  }
  std::vector<int32_t> tree_tokens;
  {
    append_token(a);
    append_token(e);
    meta::StepPlan p = plan();
    sc.add_rows(p, a, 1, 1);
    sc.add_tree(p, b, {-1, 0, 0, 1, 1, 2, 3}, tree_tokens);
    sc.add_rows(p, e, 1, 1);
    run(p, "draft tree verify");
  }
  {  // accept B's path 0 -> 1 -> 4 (row 4's KV moves next to row 1's); D shares A's first block
     // and copies A's partial second one
    PlanSequence& sb = sc.seq(b);
    const int32_t nc = sb.computed;
    for (int32_t r : {0, 1, 4}) sb.tokens.push_back(tree_tokens[size_t(r)]);
    meta::StepPlan p = plan();
    const int32_t src = nc + 4, dst = nc + 2;
    p.kv_moves.push_back({sb.table[size_t(src / bs)], src % bs, sb.table[size_t(dst / bs)], dst % bs});
    sb.computed = nc + 3;
    sb.tokens.push_back(sc.token());
    sc.add_rows(p, b, 1, 1);
    const int32_t d = sc.add_seq(0);
    PlanSequence& sd = sc.seq(d);
    const PlanSequence& sa = sc.seq(a);
    sd.tokens.assign(sa.tokens.begin(), sa.tokens.begin() + 20);
    for (int k = 0; k < 6; ++k) sd.tokens.push_back(sc.token());
    sd.table = {sa.table[0], sc.take_block()};
    p.kv_copies.push_back({sa.table[1], sd.table[1], 4});
    sd.computed = 20;
    sc.add_rows(p, d, 6, 6);
    run(p, "slot move + block copy");
  }
  for (const std::vector<int32_t>& batch : {std::vector<int32_t>{a}, {a, b}, {a, b, c, e}}) {
    for (int i = 0; i < repeats; ++i) {
      meta::StepPlan p = plan();
      for (int32_t s : batch) sc.add_decode(p, s);
      run(p, "decode");
    }
  }
}

}  // namespace xy::testing
