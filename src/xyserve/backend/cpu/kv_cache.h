// The CPU backend's paged KV cache: for each layer, K and V as
// [num_blocks, block_size, num_kv_heads, head_dim] fp32. Blocks are handed out by the scheduler
// (cache/); this class only stores them and writes the rows a plan names.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::backend::cpu {

// A read view of one layer's cache.
struct PagedKvView {
  const float* k = nullptr;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const float* v = nullptr;  // same shape
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;

  // Offset of (position's slot, kv_head) in k or v, given the request's block table.
  int64_t offset(std::span<const int32_t> block_table, int64_t position, int64_t kv_head) const {
    const int64_t block = block_table[size_t(position / block_size)];
    const int64_t slot = position % block_size;
    return ((block * block_size + slot) * num_kv_heads + kv_head) * head_dim;
  }
};

class PagedKvCache {
 public:
  PagedKvCache(int64_t num_layers, int32_t num_blocks, int32_t block_size, int64_t num_kv_heads,
               int64_t head_dim);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  PagedKvView layer(int64_t layer) const;

  // Stores the K and V rows of every request of the plan (k_rows, v_rows: [M, num_kv_heads *
  // head_dim], rows `row_stride` floats apart): a request's new row j goes to KV slot
  // s = num_computed_tokens + j, in block block_table[s / block_size] at s % block_size.
  // Precondition (checked): every block id is in [0, num_blocks) and every table covers its
  // request's slots.
  void write(int64_t layer, const meta::StepPlan& plan, const float* k_rows, const float* v_rows,
             int64_t row_stride);

  // The plan's KV housekeeping, in every layer, before its forward pass: block copies (the
  // copy-on-write of a shared partial block), then slot moves in order (compaction of an
  // accepted draft-tree path). Precondition (checked): ids and slots in range.
  void apply_copies_and_moves(const meta::StepPlan& plan);

 private:
  int64_t layer_floats() const;

  int32_t num_blocks_;
  int32_t block_size_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  std::vector<float> k_;  // [num_layers, num_blocks, block_size, num_kv_heads, head_dim]
  std::vector<float> v_;
};

}  // namespace xy::backend::cpu
