#include "xyserve/meta/step_plan.h"

namespace xy::meta {

std::ostream& operator<<(std::ostream& out, const StepPlan& plan) {
  out << "StepPlan{block_size=" << plan.block_size << ", rows=" << plan.num_rows() << "\n";
  for (const auto& r : plan.requests) {
    out << "  request " << r.request_id << ": computed=" << r.num_computed_tokens
        << " new=" << r.num_new_tokens << " first_row=" << r.first_row
        << " logits_rows=" << r.num_logits_rows << " blocks=[";
    for (size_t i = 0; i < r.block_table.size(); ++i) out << (i ? "," : "") << r.block_table[i];
    out << "]\n";
  }
  return out << "}";
}

}  // namespace xy::meta
