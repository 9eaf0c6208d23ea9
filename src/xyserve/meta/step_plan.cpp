#include "xyserve/meta/step_plan.h"

#include "xyserve/common/check.h"

namespace xy::meta {

std::ostream& operator<<(std::ostream& out, const StepPlan& plan) {
  out << "StepPlan{block_size=" << plan.block_size << ", rows=" << plan.num_rows() << "\n";
  for (const auto& r : plan.requests) {
    out << "  request " << r.request_id << ": computed=" << r.num_computed_tokens
        << " new=" << r.num_new_tokens << " first_row=" << r.first_row
        << " logits_rows=" << r.num_logits_rows << " blocks=[";
    for (size_t i = 0; i < r.block_table.size(); ++i) out << (i ? "," : "") << r.block_table[i];
    out << "]";
    if (!r.tree_parents.empty()) {
      out << " tree=[";
      for (size_t i = 0; i < r.tree_parents.size(); ++i) out << (i ? "," : "") << r.tree_parents[i];
      out << "]";
    }
    out << "\n";
  }
  for (const auto& c : plan.kv_copies)
    out << "  copy block " << c.src_block << " -> " << c.dst_block << " (" << c.num_tokens << " tokens)\n";
  for (const auto& m : plan.kv_moves)
    out << "  move slot " << m.src_block << ":" << m.src_slot << " -> " << m.dst_block << ":" << m.dst_slot << "\n";
  return out << "}";
}

void check_step_plan(const StepPlan& plan, int32_t block_size, int32_t num_kv_blocks) {
  XY_CHECK(plan.block_size == block_size, "plan block_size ", plan.block_size, " != backend ",
           block_size);
  XY_CHECK(plan.positions.size() == plan.token_ids.size(), "positions ", plan.positions.size(),
           " != token_ids ", plan.token_ids.size());
  int32_t next_row = 0;
  for (const auto& r : plan.requests) {
    XY_CHECK(r.first_row == next_row, "request ", r.request_id, " first_row ", r.first_row,
             " expected ", next_row);
    XY_CHECK(r.num_logits_rows >= 0 && r.num_logits_rows <= r.num_new_tokens, "request ",
             r.request_id, " logits rows ", r.num_logits_rows, " of ", r.num_new_tokens);
    XY_CHECK(int64_t(r.block_table.size()) * block_size >=
                 int64_t(r.num_computed_tokens) + r.num_new_tokens,
             "request ", r.request_id, " block table too short");
    for (int32_t b : r.block_table)
      XY_CHECK(b >= 0 && b < num_kv_blocks, "request ", r.request_id, " block ", b, " of ", num_kv_blocks);
    const bool tree = !r.tree_parents.empty();
    XY_CHECK(!tree || int32_t(r.tree_parents.size()) == r.num_new_tokens, "request ", r.request_id,
             " tree_parents ", r.tree_parents.size(), " for ", r.num_new_tokens, " rows");
    for (int32_t i = 0; i < r.num_new_tokens; ++i) {
      int32_t depth = i;
      if (tree) {
        const int32_t parent = r.tree_parents[size_t(i)];
        XY_CHECK(i == 0 ? parent == -1 : parent >= 0 && parent < i, "request ", r.request_id,
                 " tree row ", i, " parent ", parent);
        depth = 0;
        for (int32_t a = i; a > 0; a = r.tree_parents[size_t(a)]) ++depth;
      }
      XY_CHECK(plan.positions[size_t(r.first_row + i)] == r.num_computed_tokens + depth, "request ",
               r.request_id, " row ", i, " position ", plan.positions[size_t(r.first_row + i)],
               " expected ", r.num_computed_tokens + depth);
    }
    next_row += r.num_new_tokens;
  }
  XY_CHECK(next_row == plan.num_rows(), "requests cover ", next_row, " of ", plan.num_rows(),
           " rows");
  for (const auto& c : plan.kv_copies)
    XY_CHECK(c.src_block >= 0 && c.src_block < num_kv_blocks && c.dst_block >= 0 &&
                 c.dst_block < num_kv_blocks && c.num_tokens >= 0 && c.num_tokens <= block_size,
             "bad KV copy ", c.src_block, " -> ", c.dst_block, " (", c.num_tokens, ")");
  for (const auto& m : plan.kv_moves)
    XY_CHECK(m.src_block >= 0 && m.src_block < num_kv_blocks && m.dst_block >= 0 &&
                 m.dst_block < num_kv_blocks && m.src_slot >= 0 && m.src_slot < block_size &&
                 m.dst_slot >= 0 && m.dst_slot < block_size,
             "bad KV slot move");
}

}  // namespace xy::meta
