#include "xyserve/backend/cuda/device_plan.h"

#include <algorithm>
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

std::byte* DevicePlan::host_buffer(size_t bytes) {
  // The pinned buffer is reused: the previous step's copy must have left it.
  if (pending_) XY_CUDA_CHECK(cudaEventSynchronize(copied_.get()));
  pending_ = false;
  if (host_.size() < bytes) host_.reserve(bytes * 2);
  return host_.get();
}

void DevicePlan::copy_to_device(std::byte* dst, size_t bytes, cudaStream_t stream) {
  XY_CUDA_CHECK(cudaMemcpyAsync(dst, host_.get(), bytes, cudaMemcpyHostToDevice, stream));
  XY_CUDA_CHECK(cudaEventRecord(copied_.get(), stream));
  pending_ = true;
  last_bytes_ = bytes;
}

const DevicePlanView& DevicePlan::upload(const meta::StepPlan& plan, const WorkLists& lists,
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

  std::byte* h = host_buffer(bytes);
  if (device_.size() < bytes) device_.reset(bytes * 2);
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

  copy_to_device(device_.get(), pk.size(), stream);

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

bool PaddedPlan::reserve(const meta::StepPlan& plan, const WorkLists& lists) {
  XY_CHECK(int32_t(plan.requests.size()) <= rows_, "padded plan of ", rows_, " rows given ",
           plan.requests.size(), " requests");
  size_t table = 0;
  for (const auto& r : plan.requests) table += r.block_table.size();
  // Minimums first (a few KB), then double what is needed: the number of regrowths, each a
  // re-capture, stays logarithmic.
  bool grew = device_.size() == 0;
  if (cap_.work.size() != lists.size()) {
    cap_.work.assign(lists.size(), {0, 0});
    grew = true;
  }
  auto fit = [&](size_t& cap, size_t need, size_t minimum) {
    if (grew) cap = std::max(cap, minimum);
    if (need <= cap) return;
    cap = std::max(2 * need, minimum);
    grew = true;
  };
  fit(cap_.table, table, size_t(rows_) * 32);  // 512 positions a request at block size 16
  fit(cap_.copies, plan.kv_copies.size(), 16);
  fit(cap_.moves, plan.kv_moves.size(), 64);
  for (size_t i = 0; i < lists.size(); ++i) {
    fit(cap_.work[i].first, lists[i].second.tasks.size(), 256);
    fit(cap_.work[i].second, lists[i].second.merges.size(), 64);
  }
  if (!grew) return false;
  off_ = layout();
  device_.reset(off_.bytes);
  return true;
}

// Sections in a fixed order at offsets from the capacities alone: counts (tasks, merges per
// list), the rows' ids, positions, slots and logits rows, the requests, then per list tasks and
// merges, the block tables, the KV copies and moves.
PaddedPlan::Offsets PaddedPlan::layout() const {
  Packer pk;
  Offsets o;
  const size_t rows = size_t(rows_);
  o.counts = pk.reserve<int32_t>(2 * cap_.work.size());
  o.ids = pk.reserve<int32_t>(rows);
  o.pos = pk.reserve<int32_t>(rows);
  o.slots = pk.reserve<int32_t>(rows);
  o.logits = pk.reserve<int32_t>(rows);
  o.requests = pk.reserve<PlanRequest>(rows);
  for (const auto& [tasks, merges] : cap_.work) {
    const size_t t = pk.reserve<meta::AttentionTask>(tasks);
    o.work.emplace_back(t, pk.reserve<meta::MergeGroup>(merges));
  }
  o.table = pk.reserve<int32_t>(cap_.table);
  o.copies = pk.reserve<meta::KvBlockCopy>(cap_.copies);
  o.moves = pk.reserve<meta::KvSlotMove>(cap_.moves);
  o.bytes = std::max<size_t>(pk.size(), kAlign);
  return o;
}

const DevicePlanView& DevicePlan::upload_padded(const meta::StepPlan& plan, const WorkLists& lists,
                                                PaddedPlan& target, int32_t trash_slot, cudaStream_t stream) {
  const PaddedPlan::Offsets& o = target.off_;
  const PaddedPlan::Capacity& cap = target.cap_;
  const size_t rows = size_t(target.rows());
  const size_t n = plan.requests.size();
  XY_CHECK(target.device_.size() > 0 && cap.work.size() == lists.size(), "padded plan not reserved");
  XY_CHECK(size_t(plan.num_rows()) == n && n <= rows, "a padded plan takes one row per request, at most ",
           rows, "; got ", plan.num_rows(), " rows of ", n, " requests");
  XY_CHECK(plan.kv_copies.size() <= cap.copies && plan.kv_moves.size() <= cap.moves, "padded plan too small");

  std::byte* h = host_buffer(o.bytes);
  auto at = [&](size_t offset) { return reinterpret_cast<int32_t*>(h + offset); };
  size_t end = o.requests + rows * sizeof(PlanRequest);  // the copy reaches the last byte in use
  auto used = [&](size_t offset, size_t bytes) {
    if (bytes > 0) end = std::max(end, offset + bytes);
  };

  int32_t* counts = at(o.counts);
  for (size_t i = 0; i < lists.size(); ++i) {
    const meta::AttentionWorkList& list = lists[i].second;
    XY_CHECK(list.tasks.size() <= cap.work[i].first && list.merges.size() <= cap.work[i].second,
             "padded plan too small for the work list");
    counts[2 * i] = int32_t(list.tasks.size());
    counts[2 * i + 1] = int32_t(list.merges.size());
    std::memcpy(h + o.work[i].first, list.tasks.data(), list.tasks.size() * sizeof(meta::AttentionTask));
    std::memcpy(h + o.work[i].second, list.merges.data(), list.merges.size() * sizeof(meta::MergeGroup));
    used(o.work[i].first, list.tasks.size() * sizeof(meta::AttentionTask));
    used(o.work[i].second, list.merges.size() * sizeof(meta::MergeGroup));
  }
  int32_t* ids = at(o.ids);
  int32_t* pos = at(o.pos);
  int32_t* slots = at(o.slots);
  int32_t* logits_rows = at(o.logits);
  auto* reqs = reinterpret_cast<PlanRequest*>(h + o.requests);
  int32_t* table = at(o.table);
  size_t t_off = 0;
  for (size_t i = 0; i < n; ++i) {
    const meta::ScheduledRequest& r = plan.requests[i];
    XY_CHECK(r.num_new_tokens == 1 && r.num_logits_rows == 1 && r.tree_parents.empty() &&
                 r.first_row == int32_t(i),
             "request ", r.request_id, " is not a decode");
    XY_CHECK(t_off + r.block_table.size() <= cap.table, "padded plan too small for the block tables");
    const int32_t s = r.num_computed_tokens;  // the new row's KV slot
    ids[i] = plan.token_ids[i];
    pos[i] = plan.positions[i];
    slots[i] = r.block_table[size_t(s / plan.block_size)] * plan.block_size + s % plan.block_size;
    logits_rows[i] = int32_t(i);
    reqs[i] = PlanRequest{r.first_row, 1, r.num_computed_tokens, int32_t(t_off), -1};
    std::memcpy(table + t_off, r.block_table.data(), r.block_table.size() * sizeof(int32_t));
    t_off += r.block_table.size();
  }
  for (size_t i = n; i < rows; ++i) {  // padding rows
    ids[i] = 0;
    pos[i] = 0;
    slots[i] = trash_slot;
    logits_rows[i] = int32_t(i);
    reqs[i] = PlanRequest{int32_t(i), 1, 0, 0, -1};  // named by no task
  }
  used(o.table, t_off * sizeof(int32_t));
  std::memcpy(h + o.copies, plan.kv_copies.data(), plan.kv_copies.size() * sizeof(meta::KvBlockCopy));
  std::memcpy(h + o.moves, plan.kv_moves.data(), plan.kv_moves.size() * sizeof(meta::KvSlotMove));
  used(o.copies, plan.kv_copies.size() * sizeof(meta::KvBlockCopy));
  used(o.moves, plan.kv_moves.size() * sizeof(meta::KvSlotMove));

  std::byte* d = target.device_.get();
  copy_to_device(d, end, stream);

  auto dp = [&](size_t offset) { return reinterpret_cast<const int32_t*>(d + offset); };
  view_.num_rows = int32_t(rows);
  view_.num_logits_rows = int32_t(rows);
  view_.token_ids = dp(o.ids);
  view_.positions = dp(o.pos);
  view_.kv_slots = dp(o.slots);
  view_.requests = reinterpret_cast<const PlanRequest*>(d + o.requests);
  view_.block_tables = dp(o.table);
  view_.tree_parents = nullptr;  // no request has a tree
  view_.logits_rows = dp(o.logits);
  view_.kv_copies = reinterpret_cast<const meta::KvBlockCopy*>(d + o.copies);
  view_.num_kv_copies = int32_t(plan.kv_copies.size());
  view_.kv_moves = reinterpret_cast<const meta::KvSlotMove*>(d + o.moves);
  view_.num_kv_moves = int32_t(plan.kv_moves.size());
  view_.attention.clear();
  for (size_t i = 0; i < lists.size(); ++i) {
    DevicePlanView::Attention a;
    a.window = lists[i].first;
    a.tasks = reinterpret_cast<const meta::AttentionTask*>(d + o.work[i].first);
    a.num_tasks = int32_t(cap.work[i].first);
    a.merges = reinterpret_cast<const meta::MergeGroup*>(d + o.work[i].second);
    a.num_merges = int32_t(cap.work[i].second);
    a.num_partials = lists[i].second.num_partials;
    a.task_count = dp(o.counts) + 2 * i;
    a.merge_count = dp(o.counts) + 2 * i + 1;
    view_.attention.push_back(a);
  }
  return view_;
}

}  // namespace xy::cuda
