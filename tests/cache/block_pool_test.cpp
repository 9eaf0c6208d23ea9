#include "xyserve/cache/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

namespace xy::cache {
namespace {

TEST(BlockPool, HandsOutEveryBlockExactlyOnceUntilEmpty) {
  BlockPool pool(37);
  std::set<int32_t> seen;
  for (int32_t i = 0; i < 37; ++i) {
    const int32_t b = pool.pop_front();
    EXPECT_TRUE(seen.insert(b).second) << "block " << b << " handed out twice";
    EXPECT_EQ(pool.ref_count(b), 1);
  }
  EXPECT_EQ(pool.num_free(), 0);
}

TEST(BlockPool, EmptyBlocksAreReusedBeforeAnyCachedBlockIsEvicted) {
  BlockPool pool(6);
  std::vector<int32_t> b(6);
  for (auto& x : b) x = pool.pop_front();
  pool.drop_ref(b[0], /*keep_cached=*/true);
  pool.drop_ref(b[1], /*keep_cached=*/false);
  pool.drop_ref(b[2], /*keep_cached=*/true);
  pool.drop_ref(b[3], /*keep_cached=*/false);
  // Empty ones first (most recently emptied first), then cached ones, least recent first.
  EXPECT_EQ(pool.free_list(), (std::vector<int32_t>{b[3], b[1], b[0], b[2]}));
  EXPECT_EQ(pool.pop_front(), b[3]);
  EXPECT_EQ(pool.pop_front(), b[1]);
  EXPECT_EQ(pool.pop_front(), b[0]);
}

TEST(BlockPool, AddRefOnAFreeBlockTakesItOffTheFreeList) {
  BlockPool pool(4);
  const int32_t a = pool.pop_front();
  pool.drop_ref(a, /*keep_cached=*/true);
  EXPECT_EQ(pool.num_free(), 4);
  pool.add_ref(a);
  pool.add_ref(a);
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_EQ(pool.ref_count(a), 2);
  pool.drop_ref(a, true);
  EXPECT_EQ(pool.num_free(), 3) << "a block with references left is not free";
  pool.drop_ref(a, true);
  EXPECT_EQ(pool.free_list().back(), a);
  pool.move_to_front(a);
  EXPECT_EQ(pool.free_list().front(), a);
}

// Random allocations and releases against a plain model of the free list as a deque.
TEST(BlockPool, FreeListOrderMatchesAModelOverRandomOperations) {
  std::mt19937 rng(7);
  const int32_t n = 64;
  BlockPool pool(n);
  std::vector<int32_t> model = pool.free_list();  // front..back
  std::vector<int32_t> refs(n, 0);
  for (int32_t step = 0; step < 20000; ++step) {
    const int32_t op = int32_t(rng() % 3);
    if (op == 0 && !model.empty()) {
      const int32_t b = pool.pop_front();
      ASSERT_EQ(b, model.front());
      model.erase(model.begin());
      refs[size_t(b)] = 1;
    } else {
      const int32_t b = int32_t(rng() % n);
      if (refs[size_t(b)] == 0) {
        pool.add_ref(b);
        model.erase(std::find(model.begin(), model.end(), b));
        refs[size_t(b)] = 1;
      } else {
        const bool cached = rng() % 2;
        pool.drop_ref(b, cached);
        if (--refs[size_t(b)] == 0) {
          if (cached) model.push_back(b);
          else model.insert(model.begin(), b);
        }
      }
    }
    ASSERT_EQ(pool.num_free(), int32_t(model.size()));
  }
  EXPECT_EQ(pool.free_list(), model);
}

}  // namespace
}  // namespace xy::cache
