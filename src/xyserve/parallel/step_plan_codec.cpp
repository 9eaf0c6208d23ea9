#include "xyserve/parallel/step_plan_codec.h"

#include "xyserve/parallel/wire_format.h"

namespace xy::parallel {

// The structured bindings below name every field of each struct: a field added to one of them
// stops this file compiling until it is encoded (and the version bumped).

void encode_step_plan(const meta::StepPlan& plan, std::vector<uint8_t>& out) {
  const auto& [block_size, token_ids, positions, requests, kv_copies, kv_moves] = plan;
  WireWriter w(out);
  w.put(kStepPlanCodecVersion);
  w.put(block_size);
  w.put_i32s(token_ids);
  w.put_i32s(positions);
  w.put(uint32_t(requests.size()));
  for (const meta::ScheduledRequest& r : requests) {
    const auto& [request_id, num_computed_tokens, num_new_tokens, first_row, block_table, num_logits_rows,
                 tree_parents] = r;
    w.put(request_id);
    w.put(num_computed_tokens);
    w.put(num_new_tokens);
    w.put(first_row);
    w.put_i32s(block_table);
    w.put(num_logits_rows);
    w.put_i32s(tree_parents);
  }
  w.put(uint32_t(kv_copies.size()));
  for (const meta::KvBlockCopy& c : kv_copies) {
    const auto& [src_block, dst_block, num_tokens] = c;
    w.put(src_block);
    w.put(dst_block);
    w.put(num_tokens);
  }
  w.put(uint32_t(kv_moves.size()));
  for (const meta::KvSlotMove& m : kv_moves) {
    const auto& [src_block, src_slot, dst_block, dst_slot] = m;
    w.put(src_block);
    w.put(src_slot);
    w.put(dst_block);
    w.put(dst_slot);
  }
}

void decode_step_plan(std::span<const uint8_t> bytes, meta::StepPlan& plan) {
  auto& [block_size, token_ids, positions, requests, kv_copies, kv_moves] = plan;
  WireReader r(bytes, "step plan");
  const uint8_t version = r.get<uint8_t>();
  if (version != kStepPlanCodecVersion)
    throw Error(cat("step plan: encoding version ", int(version), ", this xyserve reads version ",
                    int(kStepPlanCodecVersion), ": run the same xyserve on every node"));
  block_size = r.get<int32_t>();
  r.get_i32s(token_ids);
  r.get_i32s(positions);
  // A request takes at least 32 bytes (its fixed fields and two array lengths).
  requests.resize(r.get_count(32));
  for (meta::ScheduledRequest& q : requests) {
    auto& [request_id, num_computed_tokens, num_new_tokens, first_row, block_table, num_logits_rows,
           tree_parents] = q;
    request_id = r.get<int64_t>();
    num_computed_tokens = r.get<int32_t>();
    num_new_tokens = r.get<int32_t>();
    first_row = r.get<int32_t>();
    r.get_i32s(block_table);
    num_logits_rows = r.get<int32_t>();
    r.get_i32s(tree_parents);
  }
  kv_copies.resize(r.get_count(12));
  for (meta::KvBlockCopy& c : kv_copies) {
    auto& [src_block, dst_block, num_tokens] = c;
    src_block = r.get<int32_t>();
    dst_block = r.get<int32_t>();
    num_tokens = r.get<int32_t>();
  }
  kv_moves.resize(r.get_count(16));
  for (meta::KvSlotMove& m : kv_moves) {
    auto& [src_block, src_slot, dst_block, dst_slot] = m;
    src_block = r.get<int32_t>();
    src_slot = r.get<int32_t>();
    dst_block = r.get<int32_t>();
    dst_slot = r.get<int32_t>();
  }
  r.expect_end();
}

}  // namespace xy::parallel
