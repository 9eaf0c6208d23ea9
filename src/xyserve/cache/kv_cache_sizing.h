// How many KV blocks fit in a memory budget. A block holds the K and V of `block_size`
// consecutive token positions for every layer and KV head, so its size is
//   2 (K and V) * num_layers * num_kv_heads * head_dim * block_size * dtype bytes.
#pragma once

#include <cstdint>

#include "xyserve/common/dtype.h"

namespace xy::cache {

// 16 tokens per block, as vLLM defaults: small enough that a request wastes at most 15 slots,
// large enough that a block table stays short and each block is one contiguous DMA per layer.
inline constexpr int32_t kDefaultBlockSize = 16;

struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int32_t block_size = kDefaultBlockSize;
  DType dtype = DType::kBF16;
};

// Bytes of one block across all layers. Throws InvalidArgument naming the field that is not
// positive.
int64_t kv_bytes_per_block(const KvCacheShape& shape);

// The number of whole blocks that fit in `budget_bytes`. Throws InvalidArgument when the budget
// is negative, or holds no block at all (saying how many bytes one block needs), or holds more
// blocks than an int32 block id can name.
int32_t num_blocks_for_budget(const KvCacheShape& shape, int64_t budget_bytes);

}  // namespace xy::cache
