#include "xyserve/cache/prefix_index.h"

#include <gtest/gtest.h>

#include <vector>

namespace xy::cache {
namespace {

constexpr int32_t kBs = 4;

TEST(BlockHash, SameTokensUnderDifferentParentsHashDifferently) {
  const std::vector<int32_t> x{1, 2, 3, 4}, y{5, 6, 7, 8}, z{9, 2, 3, 4};
  const uint64_t hx = hash_block(kRootBlockHash, x);
  const uint64_t hz = hash_block(kRootBlockHash, z);
  EXPECT_NE(hx, hz);
  EXPECT_NE(hash_block(hx, y), hash_block(hz, y));
  EXPECT_EQ(hash_block(hx, y), hash_block(hash_block(kRootBlockHash, x), y));
}

TEST(PrefixIndex, FullBlockIsFoundOnlyUnderItsOwnParent) {
  PrefixIndex index(8, kBs);
  const std::vector<int32_t> x{1, 2, 3, 4}, y{5, 6, 7, 8}, z{9, 2, 3, 4};
  index.publish(0, {}, x);
  index.publish(1, index.link(0), y);
  index.publish(2, {}, z);
  EXPECT_EQ(index.find_full({}, x), 0);
  EXPECT_EQ(index.find_full(index.link(0), y), 1);
  EXPECT_EQ(index.find_full(index.link(2), y), -1) << "same tokens, different parent";
  EXPECT_EQ(index.find_full({}, y), -1);
}

TEST(PrefixIndex, PartialMatchFindsTheLongestCommonPrefixAmongSiblings) {
  PrefixIndex index(8, kBs);
  index.publish(0, {}, std::vector<int32_t>{1, 2, 3, 4});
  index.publish(1, {}, std::vector<int32_t>{1, 2, 9});
  index.publish(2, {}, std::vector<int32_t>{1});
  const std::vector<int32_t> q{1, 2, 9, 7};
  const auto m = index.find_partial({}, q);
  EXPECT_EQ(m.block, 1);
  EXPECT_EQ(m.num_tokens, 3);
  EXPECT_EQ(index.find_partial({}, std::vector<int32_t>{5, 1}).block, -1);
}

// With a hash that ignores the parent, only the parent serial keeps a child of an old prefix
// from matching under the new content of a block that was cut back and refilled.
uint64_t parentless_hash(uint64_t, std::span<const int32_t> tokens) {
  return hash_block(kRootBlockHash, tokens);
}

TEST(PrefixIndex, ChildOfARewrittenBlockNeverMatchesUnderItsNewContent) {
  PrefixIndex index(8, kBs, &parentless_hash);
  const std::vector<int32_t> x{1, 2, 3, 4}, x2{1, 2, 7, 7}, y{5, 6, 7, 8};
  index.publish(0, {}, x);
  index.publish(1, index.link(0), y);
  index.shrink(0, 2);  // rolled back to {1, 2}
  EXPECT_EQ(index.find_full({}, x), -1);
  index.publish(0, {}, x2);
  EXPECT_EQ(index.find_full(index.link(0), y), -1) << "y was computed after x, not after x2";
}

TEST(PrefixIndex, ChildOfAnEvictedParentNeverMatchesUnderAnotherBlock) {
  PrefixIndex index(8, kBs, &parentless_hash);
  const std::vector<int32_t> x{1, 2, 3, 4}, w{4, 3, 2, 1}, y{5, 6, 7, 8};
  index.publish(0, {}, x);
  index.publish(1, index.link(0), y);
  index.unpublish(0);
  index.publish(2, {}, w);
  EXPECT_EQ(index.find_full(index.link(2), y), -1);
}

TEST(PrefixIndex, DuplicateFullBlockStaysUnpublishedAndLinksToTheFirst) {
  PrefixIndex index(8, kBs);
  const std::vector<int32_t> x{1, 2, 3, 4};
  index.publish(0, {}, x);
  const auto dup = index.publish(3, {}, x);
  EXPECT_FALSE(index.is_published(3));
  EXPECT_EQ(dup.link.serial, index.link(0).serial);
  EXPECT_EQ(index.num_published(), 1);
  EXPECT_EQ(index.clear().size(), 1u);
  EXPECT_EQ(index.num_published(), 0);
}

}  // namespace
}  // namespace xy::cache
