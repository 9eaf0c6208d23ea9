#include "xyserve/backend/cpu/kv_cache.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::backend::cpu {

PagedKvCache::PagedKvCache(int64_t num_layers, int32_t num_blocks, int32_t block_size,
                           int64_t num_kv_heads, int64_t head_dim)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim) {
  XY_CHECK(num_layers > 0 && num_blocks > 0 && block_size > 0 && num_kv_heads > 0 && head_dim > 0,
           "layers=", num_layers, " blocks=", num_blocks, " block_size=", block_size,
           " kv_heads=", num_kv_heads, " head_dim=", head_dim);
  // Zero-filled: a slot never written reads as 0, never as garbage.
  k_.assign(size_t(num_layers * layer_floats()), 0.0f);
  v_.assign(k_.size(), 0.0f);
}

int64_t PagedKvCache::layer_floats() const {
  return int64_t(num_blocks_) * block_size_ * num_kv_heads_ * head_dim_;
}

PagedKvView PagedKvCache::layer(int64_t layer) const {
  const int64_t base = layer * layer_floats();
  XY_CHECK(base >= 0 && size_t(base) < k_.size(), "layer ", layer);
  return {k_.data() + base, v_.data() + base, num_blocks_, block_size_, num_kv_heads_, head_dim_};
}

void PagedKvCache::write(int64_t layer, const meta::StepPlan& plan, const float* k_rows,
                         const float* v_rows, int64_t row_stride) {
  XY_CHECK(plan.block_size == block_size_, "plan block_size ", plan.block_size, " != cache ",
           block_size_);
  const int64_t row_floats = num_kv_heads_ * head_dim_;
  const int64_t base = layer * layer_floats();
  for (const auto& req : plan.requests) {
    for (int32_t i = 0; i < req.num_new_tokens; ++i) {
      const int32_t row = req.first_row + i;
      const int64_t slot = int64_t(req.num_computed_tokens) + i;
      const int64_t table_index = slot / block_size_;
      XY_CHECK(table_index < int64_t(req.block_table.size()), "request ", req.request_id, " slot ",
               slot, " past its block table of ", req.block_table.size());
      const int32_t block = req.block_table[size_t(table_index)];
      XY_CHECK(block >= 0 && block < num_blocks_, "request ", req.request_id, " block id ", block,
               " outside [0, ", num_blocks_, ")");
      const int64_t dst = base + (int64_t(block) * block_size_ + slot % block_size_) * row_floats;
      std::copy_n(k_rows + row * row_stride, row_floats, k_.data() + dst);
      std::copy_n(v_rows + row * row_stride, row_floats, v_.data() + dst);
    }
  }
}

void PagedKvCache::apply_copies_and_moves(const meta::StepPlan& plan) {
  const int64_t row_floats = num_kv_heads_ * head_dim_;
  const int64_t num_layers = int64_t(k_.size()) / layer_floats();
  auto check_block = [&](int32_t block) {
    XY_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " outside [0, ", num_blocks_,
             ")");
  };
  auto check_slot = [&](int32_t slot) {
    XY_CHECK(slot >= 0 && slot < block_size_, "slot ", slot, " outside [0, ", block_size_, ")");
  };
  for (const meta::KvBlockCopy& c : plan.kv_copies) {
    check_block(c.src_block);
    check_block(c.dst_block);
    XY_CHECK(c.num_tokens >= 0 && c.num_tokens <= block_size_, "copy of ", c.num_tokens, " slots");
    for (int64_t l = 0; l < num_layers; ++l) {
      const int64_t base = l * layer_floats();
      const int64_t src = base + int64_t(c.src_block) * block_size_ * row_floats;
      const int64_t dst = base + int64_t(c.dst_block) * block_size_ * row_floats;
      std::copy_n(k_.data() + src, c.num_tokens * row_floats, k_.data() + dst);
      std::copy_n(v_.data() + src, c.num_tokens * row_floats, v_.data() + dst);
    }
  }
  for (const meta::KvSlotMove& m : plan.kv_moves) {
    check_block(m.src_block);
    check_block(m.dst_block);
    check_slot(m.src_slot);
    check_slot(m.dst_slot);
    for (int64_t l = 0; l < num_layers; ++l) {
      const int64_t base = l * layer_floats();
      const int64_t src = base + (int64_t(m.src_block) * block_size_ + m.src_slot) * row_floats;
      const int64_t dst = base + (int64_t(m.dst_block) * block_size_ + m.dst_slot) * row_floats;
      std::copy_n(k_.data() + src, row_floats, k_.data() + dst);
      std::copy_n(v_.data() + src, row_floats, v_.data() + dst);
    }
  }
}

}  // namespace xy::backend::cpu
