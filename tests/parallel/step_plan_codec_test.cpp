// The StepPlan's wire encoding (what node 0 sends the other nodes each step): every field of
// random plans survives the round trip, decoding into a used plan leaves nothing of the old one,
// and a plan of another version, cut short or with bytes after it is an error, never garbage.
#include <gtest/gtest.h>

#include <random>

#include "xyserve/common/error.h"
#include "xyserve/parallel/step_plan_codec.h"

namespace xy::parallel {
namespace {

// Every field set, none at its default, with values over the whole range of their types.
meta::StepPlan random_plan(std::mt19937_64& rng) {
  auto any32 = [&] { return int32_t(uint32_t(rng())); };
  auto small = [&](int n) { return int32_t(rng() % uint64_t(n)); };
  auto i32s = [&](int32_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = any32();
    return v;
  };
  meta::StepPlan p;
  p.block_size = any32();
  const int32_t rows = 1 + small(40);
  p.token_ids = i32s(rows);
  p.positions = i32s(rows);
  const int32_t num_requests = 1 + small(6);
  for (int32_t i = 0; i < num_requests; ++i) {
    meta::ScheduledRequest& r = p.requests.emplace_back();
    r.request_id = int64_t(rng());
    r.num_computed_tokens = any32();
    r.num_new_tokens = any32();
    r.first_row = any32();
    r.block_table = i32s(1 + small(20));
    r.num_logits_rows = any32();
    r.tree_parents = i32s(small(2) ? 1 + small(8) : 0);  // empty (a chain) or a tree
  }
  for (int32_t i = 0, n = 1 + small(4); i < n; ++i) p.kv_copies.push_back({any32(), any32(), any32()});
  for (int32_t i = 0, n = 1 + small(4); i < n; ++i) p.kv_moves.push_back({any32(), any32(), any32(), any32()});
  return p;
}

void expect_same(const meta::StepPlan& a, const meta::StepPlan& b) {
  EXPECT_EQ(a.block_size, b.block_size);
  EXPECT_EQ(a.token_ids, b.token_ids);
  EXPECT_EQ(a.positions, b.positions);
  ASSERT_EQ(a.requests.size(), b.requests.size());
  for (size_t i = 0; i < a.requests.size(); ++i) {
    const meta::ScheduledRequest &x = a.requests[i], &y = b.requests[i];
    EXPECT_EQ(x.request_id, y.request_id) << i;
    EXPECT_EQ(x.num_computed_tokens, y.num_computed_tokens) << i;
    EXPECT_EQ(x.num_new_tokens, y.num_new_tokens) << i;
    EXPECT_EQ(x.first_row, y.first_row) << i;
    EXPECT_EQ(x.block_table, y.block_table) << i;
    EXPECT_EQ(x.num_logits_rows, y.num_logits_rows) << i;
    EXPECT_EQ(x.tree_parents, y.tree_parents) << i;
  }
  ASSERT_EQ(a.kv_copies.size(), b.kv_copies.size());
  for (size_t i = 0; i < a.kv_copies.size(); ++i) {
    EXPECT_EQ(a.kv_copies[i].src_block, b.kv_copies[i].src_block);
    EXPECT_EQ(a.kv_copies[i].dst_block, b.kv_copies[i].dst_block);
    EXPECT_EQ(a.kv_copies[i].num_tokens, b.kv_copies[i].num_tokens);
  }
  ASSERT_EQ(a.kv_moves.size(), b.kv_moves.size());
  for (size_t i = 0; i < a.kv_moves.size(); ++i) {
    EXPECT_EQ(a.kv_moves[i].src_block, b.kv_moves[i].src_block);
    EXPECT_EQ(a.kv_moves[i].src_slot, b.kv_moves[i].src_slot);
    EXPECT_EQ(a.kv_moves[i].dst_block, b.kv_moves[i].dst_block);
    EXPECT_EQ(a.kv_moves[i].dst_slot, b.kv_moves[i].dst_slot);
  }
}

TEST(StepPlanCodecTest, EveryFieldOfRandomPlansSurvivesTheRoundTrip) {
  std::mt19937_64 rng(7);
  meta::StepPlan decoded;  // reused: each decode must replace all of the previous plan
  for (int i = 0; i < 200; ++i) {
    const meta::StepPlan plan = random_plan(rng);
    std::vector<uint8_t> bytes;
    encode_step_plan(plan, bytes);
    decode_step_plan(bytes, decoded);
    expect_same(decoded, plan);
    if (::testing::Test::HasFailure()) return;
  }
  // And the empty plan after a full one.
  std::vector<uint8_t> bytes;
  encode_step_plan(meta::StepPlan{}, bytes);
  decode_step_plan(bytes, decoded);
  expect_same(decoded, meta::StepPlan{});
}

TEST(StepPlanCodecTest, AnotherVersionATruncatedPlanAndTrailingBytesAreErrors) {
  std::mt19937_64 rng(8);
  const meta::StepPlan plan = random_plan(rng);
  std::vector<uint8_t> bytes;
  encode_step_plan(plan, bytes);
  meta::StepPlan out;
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(decode_step_plan(std::span<const uint8_t>(bytes).first(n), out), Error) << "prefix " << n;
  }
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_THROW(decode_step_plan(longer, out), Error);
  std::vector<uint8_t> other_version = bytes;
  other_version[0] = kStepPlanCodecVersion + 1;
  try {
    decode_step_plan(other_version, out);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("version"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace xy::parallel
