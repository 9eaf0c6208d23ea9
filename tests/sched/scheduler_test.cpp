// The token-budget scheduler on plans alone (no backend): budgets, order, chunking, admission,
// preemption, FCFS and the prefill-first reserve. Results are fed back as data.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "xyserve/sched/scheduler.h"

namespace xy::sched {
namespace {

cache::KvCacheConfig kv_config(int32_t num_blocks, int32_t block_size = 16, bool caching = true) {
  cache::KvCacheConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.enable_prefix_caching = caching;
  return c;
}

std::unique_ptr<Request> make_request(int64_t id, int32_t prompt_len, int32_t max_tokens,
                                      uint64_t seed = 0) {
  auto r = std::make_unique<Request>();
  r->id = id;
  std::mt19937_64 rng(seed + uint64_t(id) * 7919);
  for (int32_t i = 0; i < prompt_len; ++i) r->token_ids.push_back(int32_t(rng() % 1000));
  r->stop.max_tokens = max_tokens;
  r->stop.ignore_eos = true;
  return r;
}

// Feeds back one sampled token per request with logits rows (accepting drafts whose token is
// even, as a stand-in for a verifier), and checks the plan's shape against the scheduler.
std::vector<RequestUpdate> run_step(Scheduler& s, const meta::StepPlan& plan, uint64_t token = 1) {
  std::vector<SampledTokens> outputs;
  for (const auto& r : plan.requests) {
    if (r.num_logits_rows == 0) continue;
    const Request* q = s.find(r.request_id);
    SampledTokens out;
    out.request_id = r.request_id;
    int32_t node = -1;
    for (int32_t i = 0; i < int32_t(q->draft_tokens.size()); ++i) {
      const int32_t parent = q->draft_parents.empty() ? i - 1 : q->draft_parents[size_t(i)];
      if (parent == node && q->draft_tokens[size_t(i)] % 2 == 0) {
        out.accepted.push_back(i);
        out.tokens.push_back(q->draft_tokens[size_t(i)]);
        node = i;
      }
    }
    out.tokens.push_back(int32_t(token));
    outputs.push_back(out);
  }
  return s.update(plan, outputs);
}

void check_plan_shape(const Scheduler& s, const meta::StepPlan& plan) {
  const auto& c = s.config();
  ASSERT_LE(plan.num_rows(), c.max_num_batched_tokens);
  ASSERT_LE(int32_t(plan.requests.size()), c.max_num_seqs);
  ASSERT_EQ(plan.positions.size(), plan.token_ids.size());
  int32_t row = 0;
  for (const auto& r : plan.requests) {
    ASSERT_EQ(r.first_row, row);
    ASSERT_GT(r.num_new_tokens, 0);
    ASSERT_GE(int64_t(r.block_table.size()) * plan.block_size, r.num_computed_tokens + r.num_new_tokens);
    row += r.num_new_tokens;
  }
  ASSERT_EQ(row, plan.num_rows());
}

TEST(SchedulerTest, RandomWorkloadRespectsBudgetsAndDrainsThePool) {
  for (const auto policy : {SchedulingPolicy::kDecodeFirst, SchedulingPolicy::kPrefillFirst}) {
    SchedulerConfig config;
    config.max_num_batched_tokens = 48;
    config.max_num_seqs = 5;
    config.long_prefill_token_threshold = 20;
    config.policy = policy;
    Scheduler s(config, kv_config(24, 8));
    std::mt19937_64 rng(3);
    for (int64_t id = 0; id < 60; ++id)
      s.add_request(make_request(id, 1 + int32_t(rng() % 60), 1 + int32_t(rng() % 30)));
    int steps = 0;
    while (s.has_unfinished()) {
      const meta::StepPlan plan = s.schedule();
      check_plan_shape(s, plan);
      ASSERT_FALSE(plan.requests.empty()) << "stalled with work left";
      run_step(s, plan);
      s.kv_cache().check_invariants();
      ASSERT_LT(++steps, 10000);
    }
    auto finished = s.take_finished();
    EXPECT_EQ(finished.size(), 60u);
    for (const auto& r : finished) EXPECT_EQ(r->finish_reason, FinishReason::kLength);
    EXPECT_GT(s.stats().num_preemptions, 0);  // 24 blocks of 8 cannot hold 5 long requests
    s.kv_cache().reset_prefix_cache();
    EXPECT_EQ(s.kv_cache().num_free_blocks(), 24);
  }
}

TEST(SchedulerTest, DecodesComeBeforePrefillsAndAdmissions) {
  SchedulerConfig config;
  config.max_num_batched_tokens = 8;
  Scheduler s(config, kv_config(64));
  s.add_request(make_request(0, 3, 10));
  s.add_request(make_request(1, 3, 10));
  run_step(s, s.schedule());  // both prefilled, one token each
  s.add_request(make_request(2, 40, 10));
  const meta::StepPlan plan = s.schedule();
  ASSERT_EQ(plan.requests.size(), 3u);
  EXPECT_EQ(plan.requests[0].request_id, 0);
  EXPECT_EQ(plan.requests[0].num_new_tokens, 1);
  EXPECT_EQ(plan.requests[1].request_id, 1);
  EXPECT_EQ(plan.requests[1].num_new_tokens, 1);
  EXPECT_EQ(plan.requests[2].request_id, 2);
  EXPECT_EQ(plan.requests[2].num_new_tokens, 6);  // the rest of the budget
  EXPECT_EQ(plan.requests[2].num_logits_rows, 0);  // the chunk does not reach the prompt's end
}

TEST(SchedulerTest, LongPromptIsChunkedWithLogitsOnlyOnTheLastChunk) {
  SchedulerConfig config;
  config.max_num_batched_tokens = 64;
  config.long_prefill_token_threshold = 16;
  Scheduler s(config, kv_config(64));
  s.add_request(make_request(0, 50, 1));
  std::vector<int32_t> chunks, logits;
  while (s.has_unfinished()) {
    const meta::StepPlan plan = s.schedule();
    ASSERT_EQ(plan.requests.size(), 1u);
    chunks.push_back(plan.requests[0].num_new_tokens);
    logits.push_back(plan.requests[0].num_logits_rows);
    for (int32_t j = 0; j < plan.num_rows(); ++j)
      EXPECT_EQ(plan.positions[size_t(j)], plan.requests[0].num_computed_tokens + j);
    run_step(s, plan);
  }
  EXPECT_EQ(chunks, (std::vector<int32_t>{16, 16, 16, 2}));
  EXPECT_EQ(logits, (std::vector<int32_t>{0, 0, 0, 1}));
}

TEST(SchedulerTest, AdmissionStopsWhenBlocksRunOutAndKeepsFcfsOrder) {
  SchedulerConfig config;
  config.max_num_batched_tokens = 1000;
  Scheduler s(config, kv_config(5, 16, false));
  s.add_request(make_request(0, 30, 4));  // 2 blocks
  s.add_request(make_request(1, 30, 4));  // 2 blocks
  s.add_request(make_request(2, 40, 4));  // 3 blocks: does not fit
  s.add_request(make_request(3, 5, 4));   // 1 block: would fit, but must not jump the queue
  const meta::StepPlan plan = s.schedule();
  ASSERT_EQ(plan.requests.size(), 2u);
  EXPECT_EQ(plan.requests[0].request_id, 0);
  EXPECT_EQ(plan.requests[1].request_id, 1);
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{2, 3}));
  // Run to the end: 2 is admitted before 3 is.
  std::vector<int64_t> admitted = {0, 1};
  run_step(s, plan);
  while (s.has_unfinished()) {
    const meta::StepPlan p = s.schedule();
    for (const auto& r : p.requests)
      if (std::find(admitted.begin(), admitted.end(), r.request_id) == admitted.end())
        admitted.push_back(r.request_id);
    run_step(s, p);
  }
  EXPECT_EQ(admitted, (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(SchedulerTest, PreemptionTakesTheNewestAndRequeuesItAtTheFront) {
  SchedulerConfig config;
  config.max_num_batched_tokens = 1000;
  Scheduler s(config, kv_config(6, 4, false));
  s.add_request(make_request(0, 8, 12));  // 2 blocks each, exactly full
  s.add_request(make_request(1, 8, 12));
  s.add_request(make_request(2, 8, 12));
  s.add_request(make_request(3, 2, 12));  // waits: no blocks
  run_step(s, s.schedule());
  EXPECT_EQ(s.running_ids(), (std::vector<int64_t>{0, 1, 2}));
  // Each needs a third block for its 9th position: request 2 (newest) is preempted, and then
  // request 1 for request 0... until the survivors fit.
  const meta::StepPlan plan = s.schedule();
  EXPECT_EQ(s.stats().num_preemptions, 1);
  EXPECT_EQ(s.running_ids(), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(s.find(2)->num_computed_tokens, 0);
  EXPECT_EQ(s.find(2)->num_output_tokens(), 1);  // the generated token is kept
  ASSERT_EQ(plan.requests.size(), 2u);
  run_step(s, plan);
  // Everyone finishes, and the preempted request recomputes prompt + output.
  while (s.has_unfinished()) run_step(s, s.schedule());
  for (const auto& r : s.take_finished()) EXPECT_EQ(r->num_output_tokens(), 12) << r->id;
}

TEST(SchedulerTest, PrefillFirstReservesTheDecodeShare) {
  SchedulerConfig config;
  config.max_num_batched_tokens = 40;
  config.max_num_seqs = 64;
  config.policy = SchedulingPolicy::kPrefillFirst;
  config.decode_reserve_fraction = 0.25;  // 10 rows
  Scheduler s(config, kv_config(400));
  for (int64_t id = 0; id < 20; ++id) s.add_request(make_request(id, 1, 50));
  run_step(s, s.schedule());  // 20 one-token prompts: all decoding now
  for (int64_t id = 20; id < 30; ++id) s.add_request(make_request(id, 200, 5));
  const meta::StepPlan plan = s.schedule();
  int32_t decode_rows = 0, prefill_rows = 0;
  for (const auto& r : plan.requests) (r.request_id < 20 ? decode_rows : prefill_rows) += r.num_new_tokens;
  EXPECT_EQ(prefill_rows, 30);  // prefill takes everything but the reserve first
  EXPECT_EQ(decode_rows, 10);   // the reserve goes to decodes
  EXPECT_EQ(plan.num_rows(), 40);
  // With no decodes waiting, prefill may take the whole budget.
  Scheduler t(config, kv_config(400));
  t.add_request(make_request(0, 200, 5));
  EXPECT_EQ(t.schedule().num_rows(), 40);
}

class FixedDrafter : public Drafter {
 public:
  explicit FixedDrafter(DraftProposal p) : p_(std::move(p)) {}
  DraftProposal propose(std::span<const int32_t>, int32_t max_tokens) override {
    DraftProposal p = p_;
    if (int32_t(p.tokens.size()) > max_tokens) {
      p.tokens.resize(size_t(max_tokens));
      if (!p.parents.empty()) p.parents.resize(size_t(max_tokens));
    }
    return p;
  }

 private:
  DraftProposal p_;
};

TEST(SchedulerTest, VerifyRowsCarryDraftsAndRejectedSlotsAreRolledBack) {
  // A tree: 0 (odd) and 1 (even) under the root; 2 (even) under 1, 3 (odd) under 0.
  FixedDrafter drafter({{5, 6, 8, 9}, {-1, -1, 1, 0}});
  SchedulerConfig config;
  config.num_speculative_tokens = 4;
  Scheduler s(config, kv_config(32, 4), &drafter);
  s.add_request(make_request(0, 6, 30));
  run_step(s, s.schedule());  // prefill: 6 computed, 7 tokens
  const meta::StepPlan plan = s.schedule();
  ASSERT_EQ(plan.requests.size(), 1u);
  const auto& r = plan.requests[0];
  EXPECT_EQ(r.num_new_tokens, 5);
  EXPECT_EQ(r.num_logits_rows, 5);
  EXPECT_EQ(r.tree_parents, (std::vector<int32_t>{-1, 0, 0, 2, 1}));
  EXPECT_EQ(plan.positions, (std::vector<int32_t>{6, 7, 7, 8, 8}));
  EXPECT_EQ(std::vector<int32_t>(plan.token_ids.begin() + 1, plan.token_ids.end()),
            (std::vector<int32_t>{5, 6, 8, 9}));
  run_step(s, plan);  // accepts drafts 1 and 2 (tokens 6, 8), then samples 1
  const Request* q = s.find(0);
  EXPECT_EQ(q->num_computed_tokens, 9);  // the fed token and two accepted drafts
  EXPECT_EQ(std::vector<int32_t>(q->token_ids.end() - 4, q->token_ids.end()),
            (std::vector<int32_t>{1, 6, 8, 1}));
  EXPECT_EQ(s.stats().num_draft_tokens, 4);
  EXPECT_EQ(s.stats().num_accepted_tokens, 2);
  // The accepted path (rows 2 and 3) is compacted into slots 7 and 8 by the next plan.
  const meta::StepPlan next = s.schedule();
  ASSERT_EQ(next.kv_moves.size(), 2u);
  EXPECT_EQ(next.kv_moves[0].src_slot, 8 % 4);  // position 6 + 2
  EXPECT_EQ(next.kv_moves[0].dst_slot, 7 % 4);
  EXPECT_EQ(next.kv_moves[1].src_slot, 9 % 4);
  EXPECT_EQ(next.kv_moves[1].dst_slot, 8 % 4);
  run_step(s, next);
  s.kv_cache().check_invariants();
  // The cache manager counts a token computed once its KV is in its final slot: all of them
  // but those that wait for this step's new moves.
  const Request* after = s.find(0);
  int32_t in_place = after->num_computed_tokens;
  for (const auto& m : after->pending_moves) in_place = std::min(in_place, m.dst_position);
  EXPECT_EQ(s.kv_cache().num_computed_tokens(0), in_place);
}

TEST(SchedulerTest, DraftsNeverRunPastMaxTokens) {
  FixedDrafter drafter({{2, 4, 6, 8, 10, 12}, {}});
  SchedulerConfig config;
  config.num_speculative_tokens = 6;
  Scheduler s(config, kv_config(32, 4), &drafter);
  s.add_request(make_request(0, 3, 5));
  while (s.has_unfinished()) {
    const meta::StepPlan plan = s.schedule();
    const Request* q = s.find(0);
    EXPECT_LE(q->num_output_tokens() + int32_t(q->draft_tokens.size()), 4);
    run_step(s, plan);
  }
  auto done = s.take_finished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0]->num_output_tokens(), 5);
}

TEST(SchedulerTest, FinishRequestFreesBlocksAtOnce) {
  SchedulerConfig config;
  Scheduler s(config, kv_config(16, 4, false));
  s.add_request(make_request(0, 20, 10));
  run_step(s, s.schedule());
  EXPECT_LT(s.kv_cache().num_free_blocks(), 16);
  EXPECT_TRUE(s.finish_request(0, FinishReason::kAbort));
  EXPECT_EQ(s.kv_cache().num_free_blocks(), 16);
  EXPECT_FALSE(s.finish_request(0, FinishReason::kAbort));
  auto done = s.take_finished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0]->finish_reason, FinishReason::kAbort);
}

}  // namespace
}  // namespace xy::sched
