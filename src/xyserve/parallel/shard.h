// Megatron-style sharding of a model's weights for tensor parallelism (Shoeybi et al. 2019,
// "Megatron-LM", section 3; DESIGN.md "Scale"). Rank r of N gets, per layer:
//   q_proj (+ q bias)      rows of query heads [r * H/N, (r+1) * H/N)          (column-parallel)
//   k_proj, v_proj (+bias) rows of its KV heads: [r * K/N, (r+1) * K/N) when N divides K; when
//                          K < N and K divides N, the one KV head r * K / N, replicated on N/K
//                          ranks. Either way every local query head h has its KV head h / (H/K)
//   gate_proj, up_proj     rows [r * I/N, (r+1) * I/N)                         (column-parallel)
//   o_proj                 columns of its query heads                          (row-parallel)
//   down_proj              columns [r * I/N, (r+1) * I/N)                      (row-parallel)
//   norms, q_norm, k_norm  whole (replicated)
// and the embedding and LM head by vocabulary rows [r * V', (r+1) * V'), V' = ceil(V / N), the
// rows past V zero (vocab-parallel). So o_proj and down_proj give each rank a partial sum over
// its heads or columns, which one all-reduce after attention and one after the MLP complete; an
// embedding row is non-zero on one rank only (an all-reduce gathers it); the LM head gives each
// rank a slice of the logits (an all-gather joins them, the padding dropped). The KV cache of a
// rank holds its KV heads only, so block tables are the same on every rank.
#pragma once

#include <cstdint>
#include <vector>

#include "xyserve/model/weights.h"

namespace xy::parallel {

// Where rank `rank`'s shard sits in the whole model. The shard's own sizes (heads, KV heads,
// intermediate, vocabulary rows) are its ModelConfig's.
struct ShardInfo {
  int32_t rank = 0;
  int32_t size = 1;
  int64_t vocab_size = 0;      // the whole model's V
  int64_t vocab_begin = 0;     // this rank's vocabulary rows [vocab_begin, vocab_begin + V')
  int64_t vocab_per_rank = 0;  // V' = ceil(V / size); rows past V are zero padding
  int64_t first_head = 0;      // its query heads [first_head, first_head + H/N)
  int64_t first_kv_head = 0;   // its KV heads [first_kv_head, first_kv_head + its count)
  int64_t first_intermediate = 0;  // its MLP columns [first_intermediate, + I/N)
};

// One rank's weights. `weights.config` has the rank's num_heads (H/N), num_kv_heads (K/N, or 1
// when replicated), intermediate_size (I/N) and vocab_size (V'); hidden_size and head_dim are
// the model's. Row slices view the source's memory (kept alive through weights.files, which
// holds the source's files); column slices, padded vocabulary slices and the rest are copies
// in `storage`. Movable: the views stay valid.
struct ShardedWeights {
  ShardInfo info;
  model::ModelWeights weights;
  std::vector<std::vector<uint8_t>> storage;
};

// Checks that the model can be split `size` ways; throws InvalidArgument naming the config.json
// field that does not split (num_attention_heads, num_key_value_heads, intermediate_size).
void check_tensor_parallel(const model::ModelConfig& config, int32_t size);

// KV heads each rank holds: K / size, or 1 when KV heads are replicated (K < size).
// Precondition: check_tensor_parallel(config, size) passes.
int64_t kv_heads_per_rank(const model::ModelConfig& config, int32_t size);

// Rank `rank`'s shard of `weights` (the map above). Throws InvalidArgument as
// check_tensor_parallel does, and ModelError naming a tensor whose shape does not match the
// config. `weights` must outlive the result when its tensors are not views of its files.
ShardedWeights shard_weights(const model::ModelWeights& weights, int32_t rank, int32_t size);

}  // namespace xy::parallel
