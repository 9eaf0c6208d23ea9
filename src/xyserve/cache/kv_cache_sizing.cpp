#include "xyserve/cache/kv_cache_sizing.h"

#include <limits>

#include "xyserve/common/error.h"

namespace xy::cache {

namespace {
void require_positive(int64_t value, const char* field) {
  if (value <= 0)
    throw InvalidArgument(cat("KV cache shape: ", field, " must be positive, found ", value));
}
}  // namespace

int64_t kv_bytes_per_block(const KvCacheShape& shape) {
  require_positive(shape.num_layers, "num_layers");
  require_positive(shape.num_kv_heads, "num_kv_heads");
  require_positive(shape.head_dim, "head_dim");
  require_positive(shape.block_size, "block_size");
  const int64_t elements_per_block =
      2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * shape.block_size;
  return elements_per_block * int64_t(dtype_size(shape.dtype));
}

int32_t num_blocks_for_budget(const KvCacheShape& shape, int64_t budget_bytes) {
  const int64_t block_bytes = kv_bytes_per_block(shape);
  if (budget_bytes < 0)
    throw InvalidArgument(cat("KV cache budget must not be negative, found ", budget_bytes,
                              " bytes"));
  const int64_t num_blocks = budget_bytes / block_bytes;
  if (num_blocks < 1)
    throw InvalidArgument(cat("KV cache budget of ", budget_bytes,
                              " bytes holds no block: one block of ", shape.block_size,
                              " tokens needs ", block_bytes, " bytes"));
  if (num_blocks > std::numeric_limits<int32_t>::max())
    throw InvalidArgument(cat("KV cache budget of ", budget_bytes, " bytes holds ", num_blocks,
                              " blocks; at most ", std::numeric_limits<int32_t>::max(),
                              " can be addressed"));
  return int32_t(num_blocks);
}

}  // namespace xy::cache
