#include "xyserve/backend/cuda/device_plan.h"

#include <cstring>

#include "xyserve/common/check.h"

namespace xy::cuda {
namespace {

constexpr size_t kAlign = 16;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Sections of the packed buffer: first sized (offsets assigned), then filled.
class Packer {
 public:
  template <typename T>
  size_t reserve(size_t count) {
    const size_t offset = size_;
    size_ = align_up(size_ + count * sizeof(T));
    return offset;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

}  // namespace

const DevicePlanView::Attention& DevicePlanView::for_window(int32_t window) const {
  for (const auto& a : attention)
    if (a.window == window) return a;
  XY_CHECK(false, "no attention work list uploaded for window ", window);
  return attention.front();
}

DevicePlan::DevicePlan() = default;

const DevicePlanView& DevicePlan::upload(
    const meta::StepPlan& plan, const std::vector<std::pair<int32_t, meta::AttentionWorkList>>& lists,
    cudaStream_t stream) {
  const size_t m = size_t(plan.num_rows());
  size_t num_table = 0, num_parents = 0;
  for (const auto& r : plan.requests) {
    num_table += r.block_table.size();
    num_parents += r.tree_parents.size();
  }
  const size_t num_logits = size_t(plan.num_logits_rows());

  Packer pk;
  const size_t o_ids = pk.reserve<int32_t>(m);
  const size_t o_pos = pk.reserve<int32_t>(m);
  const size_t o_slots = pk.reserve<int32_t>(m);
  const size_t o_req = pk.reserve<PlanRequest>(plan.requests.size());
  const size_t o_table = pk.reserve<int32_t>(num_table);
  const size_t o_parents = pk.reserve<int32_t>(num_parents);
  const size_t o_logits = pk.reserve<int32_t>(num_logits);
  const size_t o_copies = pk.reserve<meta::KvBlockCopy>(plan.kv_copies.size());
  const size_t o_moves = pk.reserve<meta::KvSlotMove>(plan.kv_moves.size());
  std::vector<std::pair<size_t, size_t>> o_lists;
  for (const auto& [window, list] : lists) {
    const size_t t = pk.reserve<meta::AttentionTask>(list.tasks.size());
    const size_t g = pk.reserve<meta::MergeGroup>(list.merges.size());
    o_lists.emplace_back(t, g);
  }
  const size_t bytes = std::max<size_t>(pk.size(), kAlign);

  // The pinned buffer is reused: the previous step's copy must have left it.
  if (pending_) XY_CUDA_CHECK(cudaEventSynchronize(copied_.get()));
  if (host_.size() < bytes) host_.reserve(bytes * 2);
  if (device_.size() < bytes) device_.reset(bytes * 2);
  std::byte* h = host_.get();
  auto at = [&](size_t offset) { return reinterpret_cast<int32_t*>(h + offset); };

  std::memcpy(h + o_ids, plan.token_ids.data(), m * sizeof(int32_t));
  std::memcpy(h + o_pos, plan.positions.data(), m * sizeof(int32_t));
  int32_t* slots = at(o_slots);
  auto* reqs = reinterpret_cast<PlanRequest*>(h + o_req);
  int32_t* table = at(o_table);
  int32_t* parents = at(o_parents);
  int32_t* logits_rows = at(o_logits);
  size_t t_off = 0, p_off = 0, l_off = 0;
  for (size_t i = 0; i < plan.requests.size(); ++i) {
    const meta::ScheduledRequest& r = plan.requests[i];
    reqs[i] = PlanRequest{r.first_row, r.num_new_tokens, r.num_computed_tokens, int32_t(t_off),
                          r.tree_parents.empty() ? -1 : int32_t(p_off)};
    for (int32_t j = 0; j < r.num_new_tokens; ++j) {
      const int32_t s = r.num_computed_tokens + j;  // new row j's KV slot (a tree row's too)
      slots[r.first_row + j] = r.block_table[size_t(s / plan.block_size)] * plan.block_size + s % plan.block_size;
    }
    for (int32_t j = r.num_new_tokens - r.num_logits_rows; j < r.num_new_tokens; ++j)
      logits_rows[l_off++] = r.first_row + j;
    std::memcpy(table + t_off, r.block_table.data(), r.block_table.size() * sizeof(int32_t));
    t_off += r.block_table.size();
    std::memcpy(parents + p_off, r.tree_parents.data(), r.tree_parents.size() * sizeof(int32_t));
    p_off += r.tree_parents.size();
  }
  std::memcpy(h + o_copies, plan.kv_copies.data(), plan.kv_copies.size() * sizeof(meta::KvBlockCopy));
  std::memcpy(h + o_moves, plan.kv_moves.data(), plan.kv_moves.size() * sizeof(meta::KvSlotMove));
  for (size_t i = 0; i < lists.size(); ++i) {
    const auto& list = lists[i].second;
    std::memcpy(h + o_lists[i].first, list.tasks.data(), list.tasks.size() * sizeof(meta::AttentionTask));
    std::memcpy(h + o_lists[i].second, list.merges.data(), list.merges.size() * sizeof(meta::MergeGroup));
  }

  XY_CUDA_CHECK(cudaMemcpyAsync(device_.get(), h, pk.size(), cudaMemcpyHostToDevice, stream));
  XY_CUDA_CHECK(cudaEventRecord(copied_.get(), stream));
  pending_ = true;
  last_bytes_ = pk.size();

  const std::byte* d = device_.get();
  auto dp = [&](size_t offset) { return reinterpret_cast<const int32_t*>(d + offset); };
  view_.num_rows = int32_t(m);
  view_.num_logits_rows = int32_t(num_logits);
  view_.token_ids = dp(o_ids);
  view_.positions = dp(o_pos);
  view_.kv_slots = dp(o_slots);
  view_.requests = reinterpret_cast<const PlanRequest*>(d + o_req);
  view_.block_tables = dp(o_table);
  view_.tree_parents = dp(o_parents);
  view_.logits_rows = dp(o_logits);
  view_.kv_copies = reinterpret_cast<const meta::KvBlockCopy*>(d + o_copies);
  view_.num_kv_copies = int32_t(plan.kv_copies.size());
  view_.kv_moves = reinterpret_cast<const meta::KvSlotMove*>(d + o_moves);
  view_.num_kv_moves = int32_t(plan.kv_moves.size());
  view_.attention.clear();
  for (size_t i = 0; i < lists.size(); ++i) {
    const auto& [window, list] = lists[i];
    view_.attention.push_back({window, reinterpret_cast<const meta::AttentionTask*>(d + o_lists[i].first),
                               int32_t(list.tasks.size()),
                               reinterpret_cast<const meta::MergeGroup*>(d + o_lists[i].second),
                               int32_t(list.merges.size()), list.num_partials});
  }
  return view_;
}

}  // namespace xy::cuda
