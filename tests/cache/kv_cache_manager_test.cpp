#include "xyserve/cache/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace xy::cache {
namespace {

constexpr int32_t kBs = 4;

std::vector<int32_t> iota_tokens(int32_t n, int32_t first) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

// Admits `id` with its cached prefix and computes the whole of `tokens`, as one prefill.
int32_t admit_and_compute(KvCacheManager& m, int64_t id, const std::vector<int32_t>& tokens) {
  const PrefixHit hit = m.find_prefix(tokens);
  EXPECT_TRUE(m.admit(id, tokens, hit, int32_t(tokens.size())));
  m.mark_computed(id, tokens, int32_t(tokens.size()));
  m.check_invariants();
  return hit.num_cached_tokens;
}

std::vector<int32_t> table(const KvCacheManager& m, int64_t id) {
  const auto t = m.block_table(id);
  return {t.begin(), t.end()};
}

TEST(KvCacheManager, FullBlockHitReusesTheBlocksAndSkipsTheirTokens) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(13, 100);
  EXPECT_EQ(admit_and_compute(m, 1, a), 0);
  std::vector<int32_t> b(a.begin(), a.begin() + 8);
  b.push_back(7);  // differs from a[8] at the first token of the third block
  b.push_back(8);
  const PrefixHit hit = m.find_prefix(b);
  EXPECT_EQ(hit.num_cached_tokens, 8);
  EXPECT_EQ(hit.num_partial_tokens, 0);
  ASSERT_TRUE(m.admit(2, b, hit, int32_t(b.size())));
  EXPECT_EQ(m.num_computed_tokens(2), 8);
  const auto ta = table(m, 1), tb = table(m, 2);
  EXPECT_EQ(tb[0], ta[0]);
  EXPECT_EQ(tb[1], ta[1]);
  EXPECT_NE(tb[2], ta[2]);
  EXPECT_EQ(m.block_ref_count(ta[0]), 2);
  EXPECT_TRUE(m.take_pending_copies().empty());
}

TEST(KvCacheManager, PartialBlockHitAtEveryOffsetCopiesExactlyThoseTokens) {
  for (int32_t offset = 1; offset < kBs; ++offset) {
    SCOPED_TRACE(offset);
    KvCacheManager m({16, kBs, true});
    const auto a = iota_tokens(3 * kBs, 100);
    admit_and_compute(m, 1, a);  // still running: it owns its blocks
    std::vector<int32_t> b(a.begin(), a.begin() + kBs + offset);
    b.push_back(-5);  // diverges inside block 1
    const PrefixHit hit = m.find_prefix(b);
    EXPECT_EQ(hit.num_cached_tokens, kBs + offset);
    EXPECT_EQ(hit.num_partial_tokens, offset);
    ASSERT_TRUE(m.admit(2, b, hit, int32_t(b.size())));
    const auto ta = table(m, 1), tb = table(m, 2);
    EXPECT_EQ(tb[0], ta[0]);
    const auto copies = m.take_pending_copies();
    ASSERT_EQ(copies.size(), 1u);
    EXPECT_EQ(copies[0], (BlockCopy{ta[1], tb[1], offset}));
    EXPECT_EQ(m.block_ref_count(ta[1]), 1) << "the source is unpinned once the copy is taken";
    m.mark_computed(2, b, int32_t(b.size()));
    m.check_invariants();
  }
}

TEST(KvCacheManager, PartialHitOnAFreedRequestsExactTailIsAdoptedWithoutACopy) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(kBs + 2, 100);  // tail block holds 2 tokens
  admit_and_compute(m, 1, a);
  const int32_t tail = table(m, 1)[1];
  m.free(1);
  auto b = a;
  b.push_back(-1);
  const PrefixHit hit = m.find_prefix(b);
  EXPECT_EQ(hit.num_cached_tokens, kBs + 2);
  ASSERT_TRUE(m.admit(2, b, hit, int32_t(b.size())));
  EXPECT_TRUE(m.take_pending_copies().empty());
  EXPECT_EQ(table(m, 2)[1], tail);
  m.mark_computed(2, b, int32_t(b.size()));
  m.check_invariants();
}

TEST(KvCacheManager, WholePromptHitStillLeavesTheLastTokenToCompute) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(2 * kBs, 100);
  admit_and_compute(m, 1, a);
  const PrefixHit same = m.find_prefix(a);
  EXPECT_EQ(same.num_cached_tokens, 2 * kBs - 1);
  ASSERT_TRUE(m.admit(2, a, same, int32_t(a.size())));
  const auto copies = m.take_pending_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].num_tokens, kBs - 1);
  // One token past a block boundary: the whole block is a hit, the last token is not.
  auto c = iota_tokens(kBs + 1, 100);
  EXPECT_EQ(m.find_prefix(c).num_cached_tokens, kBs);
  EXPECT_EQ(m.find_prefix(std::vector<int32_t>{100}).num_cached_tokens, 0);
}

TEST(KvCacheManager, LruEvictsTheLeastRecentlyFreedBlockFirstAndOnlyUnderPressure) {
  KvCacheManager m({4, kBs, true});
  for (int64_t id = 1; id <= 3; ++id) admit_and_compute(m, id, iota_tokens(kBs, int32_t(100 * id)));
  std::vector<int32_t> blocks;
  for (int64_t id = 1; id <= 3; ++id) blocks.push_back(table(m, id)[0]);
  for (int64_t id = 1; id <= 3; ++id) m.free(id);
  EXPECT_EQ(m.num_free_blocks(), 4);
  EXPECT_EQ(m.num_cached_blocks(), 3);
  // One empty block is left: taking it evicts nothing.
  ASSERT_TRUE(m.admit(4, iota_tokens(2, 900), m.find_prefix(iota_tokens(2, 900)), 2));
  EXPECT_EQ(m.counters().num_evicted_blocks, 0);
  EXPECT_EQ(m.num_cached_blocks(), 3);
  // Now every allocation evicts, oldest release first.
  ASSERT_TRUE(m.allocate_slots(4, kBs + 1));
  EXPECT_FALSE(m.is_cached(blocks[0]));
  EXPECT_TRUE(m.is_cached(blocks[1]));
  EXPECT_TRUE(m.is_cached(blocks[2]));
  ASSERT_TRUE(m.allocate_slots(4, 2 * kBs + 1));
  EXPECT_FALSE(m.is_cached(blocks[1]));
  EXPECT_TRUE(m.is_cached(blocks[2]));
  EXPECT_EQ(m.counters().num_evicted_blocks, 2);
  m.check_invariants();
}

TEST(KvCacheManager, AHitRefreshesABlocksPlaceInTheLruOrder) {
  KvCacheManager m({3, kBs, true});
  const auto a = iota_tokens(kBs, 100), b = iota_tokens(kBs, 200);
  admit_and_compute(m, 1, a);
  admit_and_compute(m, 2, b);
  const int32_t block_a = table(m, 1)[0];
  m.free(1);
  m.free(2);
  auto a2 = a;
  a2.push_back(1);
  EXPECT_EQ(admit_and_compute(m, 3, a2), kBs);  // touches block_a, takes the empty block
  m.free(3);
  // LRU order now: b's block, request 3's tail (freed before its head), block_a.
  const auto d = iota_tokens(kBs + 1, 900);
  ASSERT_TRUE(m.admit(4, d, m.find_prefix(d), int32_t(d.size())));
  EXPECT_TRUE(m.is_cached(block_a)) << "a request's head outlives its tail";
  EXPECT_EQ(m.num_cached_blocks(), 1);
}

TEST(KvCacheManager, CountersCountQueryAndHitTokens) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(10, 100);
  admit_and_compute(m, 1, a);
  auto b = a;
  b.resize(9);
  b.push_back(-1);
  b.push_back(-2);
  admit_and_compute(m, 2, b);
  EXPECT_EQ(m.counters().num_query_tokens, 10 + 11);
  EXPECT_EQ(m.counters().num_hit_tokens, 9);
}

TEST(KvCacheManager, AllocationThatDoesNotFitChangesNothing) {
  KvCacheManager m({3, kBs, true});
  const auto a = iota_tokens(2 * kBs, 100);
  admit_and_compute(m, 1, a);
  const auto before = table(m, 1);
  EXPECT_FALSE(m.allocate_slots(1, 4 * kBs + 1));
  EXPECT_EQ(table(m, 1), before);
  EXPECT_EQ(m.num_free_blocks(), 1);
  const auto big = iota_tokens(3 * kBs, 500);
  EXPECT_FALSE(m.admit(2, big, m.find_prefix(big), int32_t(big.size())));
  EXPECT_FALSE(m.has_request(2));
  EXPECT_EQ(m.counters().num_query_tokens, int64_t(a.size()));
  m.check_invariants();
}

TEST(KvCacheManager, TruncateUnpublishesRolledBackDraftTokens) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(2 * kBs + 2, 100);  // the last 4 are drafts
  admit_and_compute(m, 1, a);
  m.truncate(1, kBs + 2);
  EXPECT_EQ(m.num_computed_tokens(1), kBs + 2);
  EXPECT_EQ(table(m, 1).size(), 2u);
  auto query = a;
  query.push_back(0);
  EXPECT_EQ(m.find_prefix(query).num_cached_tokens, kBs + 2);
  // The request goes on with other tokens in the rolled-back slots, without a copy.
  auto a2 = a;
  a2.resize(kBs + 2);
  for (int32_t t : {-1, -2, -3}) a2.push_back(t);
  ASSERT_TRUE(m.allocate_slots(1, int32_t(a2.size())));
  EXPECT_TRUE(m.take_pending_copies().empty());
  m.mark_computed(1, a2, int32_t(a2.size()));
  a2.push_back(0);
  EXPECT_EQ(m.find_prefix(a2).num_cached_tokens, int32_t(a2.size()) - 1);
  m.check_invariants();
}

TEST(KvCacheManager, TruncateAtABlockBoundaryDropsTheRolledBackBlockFromTheCache) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(2 * kBs + 2, 100);  // the last 2 are drafts, in their own block
  admit_and_compute(m, 1, a);
  EXPECT_EQ(m.num_cached_blocks(), 3);
  m.truncate(1, 2 * kBs);
  EXPECT_EQ(m.num_cached_blocks(), 2);
  auto query = a;
  query.push_back(0);
  EXPECT_EQ(m.find_prefix(query).num_cached_tokens, 2 * kBs);
  m.check_invariants();
}

TEST(KvCacheManager, TruncateIntoABlockOthersReadCopiesBeforeWriting) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(2 * kBs, 100);
  admit_and_compute(m, 1, a);
  auto b = a;
  b.push_back(0);
  admit_and_compute(m, 2, b);  // reads both of a's blocks
  const int32_t shared = table(m, 1)[1];
  ASSERT_EQ(table(m, 2)[1], shared);
  m.truncate(1, kBs + 1);
  ASSERT_TRUE(m.allocate_slots(1, 2 * kBs));
  const auto copies = m.take_pending_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0], (BlockCopy{shared, table(m, 1)[1], 1}));
  EXPECT_TRUE(m.is_cached(shared)) << "request 2's content stays published";
  EXPECT_EQ(m.find_prefix(b).num_cached_tokens, 2 * kBs);
  m.check_invariants();
}

TEST(KvCacheManager, PreemptedRequestFindsItsPrefixAgain) {
  KvCacheManager m({16, kBs, true});
  const auto a = iota_tokens(3 * kBs + 1, 100);
  admit_and_compute(m, 1, a);
  m.free(1);
  EXPECT_EQ(m.match_and_admit(1, a), int32_t(a.size()) - 1);
}

TEST(KvCacheManager, WithPrefixCachingOffNothingIsMatchedOrPublished) {
  KvCacheManager m({16, kBs, false});
  const auto a = iota_tokens(3 * kBs, 100);
  admit_and_compute(m, 1, a);
  EXPECT_EQ(m.num_cached_blocks(), 0);
  EXPECT_EQ(admit_and_compute(m, 2, a), 0);
  m.free(1);
  m.free(2);
  EXPECT_EQ(m.num_free_blocks(), 16);
  EXPECT_EQ(m.counters().num_hit_tokens, 0);
}

TEST(KvCacheManager, ResetGivesBackEveryUnreferencedBlockAsEmpty) {
  KvCacheManager m({8, kBs, true});
  admit_and_compute(m, 1, iota_tokens(3 * kBs, 100));
  m.free(1);
  EXPECT_EQ(m.num_cached_blocks(), 3);
  m.reset_prefix_cache();
  EXPECT_EQ(m.num_cached_blocks(), 0);
  EXPECT_EQ(m.num_free_blocks(), 8);
  m.check_invariants();
}

TEST(KvCacheManagerDeathTest, AdmittingWithAStaleHitAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  KvCacheManager m({8, kBs, true});
  const auto a = iota_tokens(5, 100);
  const PrefixHit hit = m.find_prefix(a);
  admit_and_compute(m, 1, iota_tokens(5, 300));
  EXPECT_DEATH(m.admit(2, a, hit, 5), "stale PrefixHit");
}

}  // namespace
}  // namespace xy::cache
