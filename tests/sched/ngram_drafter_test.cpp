// Prompt-lookup drafting: proposals continue an earlier occurrence of the context's suffix,
// prefer the longest n-gram, respect the token limit, and trees are valid tries.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "xyserve/sched/ngram_drafter.h"

namespace xy::sched {
namespace {

TEST(NgramDrafterTest, ContinuesTheLongestMatchingSuffix) {
  NgramDrafter d({1, 3, false, 8});
  // Suffix [7, 8, 9] occurs at 0 (followed by 1 2 3); [9] alone also at 5 (followed by 4).
  const std::vector<int32_t> ctx = {7, 8, 9, 1, 2, 9, 4, 5, 7, 8, 9};
  EXPECT_EQ(d.propose(ctx, 3).tokens, (std::vector<int32_t>{1, 2, 9}));
  EXPECT_EQ(d.propose(ctx, 1).tokens, (std::vector<int32_t>{1}));
  EXPECT_TRUE(d.propose(std::vector<int32_t>{1, 2, 3}, 4).empty());
  EXPECT_TRUE(d.propose(ctx, 0).empty());
}

TEST(NgramDrafterTest, EveryProposalFollowsAnEarlierOccurrence) {
  std::mt19937_64 rng(5);
  for (const bool tree : {false, true}) {
    NgramDrafter d({1, 4, tree, 6});
    for (int iter = 0; iter < 300; ++iter) {
      std::vector<int32_t> ctx(5 + rng() % 60);
      for (auto& t : ctx) t = int32_t(rng() % 6);
      const int32_t k = 1 + int32_t(rng() % 8);
      const DraftProposal p = d.propose(ctx, k);
      ASSERT_LE(int32_t(p.tokens.size()), k);
      ASSERT_TRUE(p.parents.empty() || p.parents.size() == p.tokens.size());
      std::set<std::pair<int32_t, int32_t>> siblings;
      for (int32_t i = 0; i < int32_t(p.tokens.size()); ++i) {
        const int32_t parent = p.parent(i);
        ASSERT_LT(parent, i);
        ASSERT_TRUE(siblings.insert({parent, p.tokens[size_t(i)]}).second) << "duplicate sibling";
        // The path root..i, appended to the context, continues some earlier occurrence of at
        // least the last token.
        std::vector<int32_t> path;
        for (int32_t n = i; n >= 0; n = p.parent(n)) path.insert(path.begin(), p.tokens[size_t(n)]);
        std::vector<int32_t> want = {ctx.back()};
        want.insert(want.end(), path.begin(), path.end());
        bool found = false;
        for (size_t s = 0; s + want.size() <= ctx.size() && !found; ++s)
          found = std::equal(want.begin(), want.end(), ctx.begin() + std::ptrdiff_t(s));
        ASSERT_TRUE(found) << "draft " << i << " continues no occurrence";
      }
    }
  }
}

}  // namespace
}  // namespace xy::sched
