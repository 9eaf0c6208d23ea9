#include "xyserve/meta/step_plan.h"

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

}  // namespace xy::meta
