#include "xyserve/cache/kv_cache_sizing.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "xyserve/common/error.h"

namespace xy::cache {
namespace {

TEST(KvCacheSizing, BlockBytesAreKAndVForEveryLayerHeadDimAndSlot) {
  // Llama 3 8B: 32 layers, 8 KV heads of 128, bf16, 16 tokens: 2 * 32 * 8 * 128 * 16 * 2 bytes.
  EXPECT_EQ(kv_bytes_per_block({32, 8, 128, 16, DType::kBF16}), 2 * 32 * 8 * 128 * 16 * 2);
  EXPECT_EQ(kv_bytes_per_block({2, 4, 64, 8, DType::kF32}), 2 * 2 * 4 * 64 * 8 * 4);
}

TEST(KvCacheSizing, BudgetHoldsTheLargestWholeNumberOfBlocks) {
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    const KvCacheShape shape{1 + int64_t(rng() % 80), 1 + int64_t(rng() % 16),
                             64 * (1 + int64_t(rng() % 4)), 1 + int32_t(rng() % 32),
                             rng() % 2 ? DType::kF16 : DType::kF32};
    const int64_t per_block = kv_bytes_per_block(shape);
    const int64_t budget = per_block + int64_t(rng() % (1u << 30));
    const int32_t n = num_blocks_for_budget(shape, budget);
    EXPECT_LE(int64_t(n) * per_block, budget);
    EXPECT_GT(int64_t(n + 1) * per_block, budget);
  }
}

TEST(KvCacheSizing, TooSmallBudgetOrBadShapeIsRejectedWithTheNumbers) {
  const KvCacheShape shape{2, 2, 64, 16, DType::kBF16};
  const int64_t per_block = kv_bytes_per_block(shape);
  try {
    num_blocks_for_budget(shape, per_block - 1);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(per_block)), std::string::npos) << e.what();
  }
  try {
    kv_bytes_per_block({2, 0, 64, 16, DType::kBF16});
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("num_kv_heads"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace xy::cache
