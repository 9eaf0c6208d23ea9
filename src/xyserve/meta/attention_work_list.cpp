#include "xyserve/meta/attention_work_list.h"

#include <algorithm>
#include <numeric>
#include <queue>
#include <tuple>

#include "xyserve/common/check.h"

namespace xy::meta {

const char* mask_kind_name(MaskKind kind) {
  switch (kind) {
    case MaskKind::kNone: return "none";
    case MaskKind::kCausal: return "causal";
    case MaskKind::kWindow: return "window";
    case MaskKind::kTree: return "tree";
  }
  return "?";
}

int64_t AttentionWorkList::total_cost() const {
  int64_t total = 0;
  for (const auto& t : tasks) total += t.cost;
  return total;
}

int64_t visible_pairs(int32_t q_pos_begin, int32_t q_pos_end, int32_t kv_begin, int32_t kv_end,
                      int32_t window) {
  int64_t n = 0;
  for (int32_t p = q_pos_begin; p < q_pos_end; ++p) {
    const int32_t lo = window > 0 ? std::max(kv_begin, p - window + 1) : kv_begin;
    const int32_t hi = std::min(kv_end - 1, p);
    if (hi >= lo) n += hi - lo + 1;
  }
  return n;
}

namespace {

MaskKind mask_for(int32_t q_pos_begin, int32_t q_pos_end, int32_t kv_begin, int32_t kv_end,
                  int32_t window) {
  const bool causal_free = kv_end - 1 <= q_pos_begin;  // every key at or before the first query
  if (window > 0) {
    const bool window_free = kv_begin > (q_pos_end - 1) - window;  // the last query still sees kv_begin
    return causal_free && window_free ? MaskKind::kNone : MaskKind::kWindow;
  }
  return causal_free ? MaskKind::kNone : MaskKind::kCausal;
}

}  // namespace

AttentionWorkList build_attention_work_list(const StepPlan& plan, const AttentionShape& shape,
                                            const WorkListOptions& options) {
  XY_CHECK(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0);
  XY_CHECK(options.tile_rows >= shape.group(), "a tile must hold one token of a GQA group");
  XY_CHECK(options.kv_split > 0 && options.kv_split % plan.block_size == 0,
           "kv_split ", options.kv_split, " must be a multiple of the block size ", plan.block_size);
  const int32_t tile_tokens = options.tile_rows / shape.group();
  const int32_t split = options.kv_split;

  AttentionWorkList list;
  list.max_tile_tokens = tile_tokens;
  for (int32_t r = 0; r < int32_t(plan.requests.size()); ++r) {
    const ScheduledRequest& req = plan.requests[size_t(r)];
    const bool tree = !req.tree_parents.empty();
    XY_CHECK(!tree || int32_t(req.tree_parents.size()) == req.num_new_tokens,
             "request ", req.request_id, ": tree_parents has ", req.tree_parents.size(),
             " entries for ", req.num_new_tokens, " rows");
    for (int32_t q0 = 0; q0 < req.num_new_tokens; q0 += tile_tokens) {
      const int32_t q_count = std::min(tile_tokens, req.num_new_tokens - q0);
      const int32_t* pos = plan.positions.data() + req.first_row + q0;
      const int32_t pos_min = *std::min_element(pos, pos + q_count);
      const int32_t pos_max = *std::max_element(pos, pos + q_count);
      // Keys visible to any row of the tile: [first visible to the lowest row, highest row].
      const int32_t kv_lo = shape.window > 0 ? std::max(0, pos_min - shape.window + 1) : 0;
      const int32_t kv_hi = pos_max + 1;
      // The span cut at fixed multiples of `split`, so a row always sees the same pieces.
      std::vector<std::tuple<int32_t, int32_t, int64_t>> spans;  // begin, end, visible pairs
      for (int32_t s = (kv_lo / split) * split; s < kv_hi; s += split) {
        const int32_t kb = std::max(s, kv_lo), ke = std::min(s + split, kv_hi);
        int64_t pairs = 0;
        for (int32_t i = 0; i < q_count; ++i) pairs += visible_pairs(pos[i], pos[i] + 1, kb, ke, shape.window);
        if (pairs > 0) spans.emplace_back(kb, ke, pairs);
      }
      for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
        const int32_t first_partial = list.num_partials;
        for (const auto& [kb, ke, pairs] : spans) {
          AttentionTask t;
          t.request = r;
          t.kv_head = h;
          t.q_begin = q0;
          t.q_count = q_count;
          t.kv_begin = kb;
          t.kv_end = ke;
          t.mask = tree && ke > req.num_computed_tokens
                       ? MaskKind::kTree
                       : mask_for(pos_min, pos_max + 1, kb, ke, shape.window);
          t.cost = pairs * shape.group();
          t.partial = spans.size() > 1 ? list.num_partials++ : -1;
          list.tasks.push_back(t);
        }
        if (spans.size() > 1)
          list.merges.push_back(MergeGroup{r, h, q0, q_count, first_partial, int32_t(spans.size())});
      }
    }
  }
  // Largest first (XY-Serve deals the sorted list); ties in plan order, so the list is a pure
  // function of the plan.
  std::stable_sort(list.tasks.begin(), list.tasks.end(),
                   [](const AttentionTask& a, const AttentionTask& b) { return a.cost > b.cost; });
  return list;
}

std::vector<std::vector<int32_t>> deal_tasks(const AttentionWorkList& list, int32_t num_workers,
                                             DealPolicy policy) {
  XY_CHECK(num_workers > 0);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(num_workers));
  const int32_t n = int32_t(list.tasks.size());
  if (policy == DealPolicy::kSymmetricRoundRobin) {
    for (int32_t i = 0; i < n; ++i) {
      const int32_t lap = i / num_workers;
      const int32_t j = i % num_workers;
      out[size_t(lap % 2 == 0 ? j : num_workers - 1 - j)].push_back(i);
    }
    return out;
  }
  // Greedy: the next largest task to the worker with the least work so far (ties: lowest index).
  using Load = std::pair<int64_t, int32_t>;
  std::priority_queue<Load, std::vector<Load>, std::greater<>> heap;
  for (int32_t w = 0; w < num_workers; ++w) heap.emplace(0, w);
  for (int32_t i = 0; i < n; ++i) {
    auto [load, w] = heap.top();
    heap.pop();
    out[size_t(w)].push_back(i);
    heap.emplace(load + list.tasks[size_t(i)].cost, w);
  }
  return out;
}

std::ostream& operator<<(std::ostream& out, const AttentionWorkList& list) {
  out << "AttentionWorkList{tasks=" << list.tasks.size() << ", partials=" << list.num_partials
      << ", merges=" << list.merges.size() << ", cost=" << list.total_cost() << "\n";
  for (const auto& t : list.tasks) {
    out << "  req " << t.request << " kvh " << t.kv_head << " q[" << t.q_begin << "+" << t.q_count
        << "] kv[" << t.kv_begin << "," << t.kv_end << ") " << mask_kind_name(t.mask)
        << " cost " << t.cost << (t.partial >= 0 ? cat(" partial ", t.partial) : std::string()) << "\n";
  }
  return out << "}";
}

}  // namespace xy::meta
