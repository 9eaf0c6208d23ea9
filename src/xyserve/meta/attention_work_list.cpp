#include "xyserve/meta/attention_work_list.h"

#include <algorithm>
#include <climits>
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

// Each task's L2 section rank (WorkListOptions::l2_section_positions), tasks in plan order:
// (request, KV head) pairs grouped in plan order while their KV spans fit `budget` positions,
// then the sections ranked by their largest task, largest first (ties: plan order). Budget 0:
// one section.
std::vector<int32_t> l2_sections(const std::vector<AttentionTask>& tasks, int32_t num_kv_heads, int64_t budget) {
  std::vector<int32_t> rank(tasks.size(), 0);
  if (budget <= 0 || tasks.empty()) return rank;
  // A pair's span: from its lowest key to its highest over its tasks (tiles and split pieces).
  struct Pair {
    int32_t lo = INT32_MAX, hi = 0;
  };
  std::vector<Pair> pairs(size_t(tasks.back().request + 1) * size_t(num_kv_heads));
  auto pair_of = [&](const AttentionTask& t) { return size_t(t.request) * size_t(num_kv_heads) + size_t(t.kv_head); };
  for (const AttentionTask& t : tasks) {
    Pair& p = pairs[pair_of(t)];
    p.lo = std::min(p.lo, t.kv_begin);
    p.hi = std::max(p.hi, t.kv_end);
  }
  std::vector<int32_t> section_of(pairs.size(), 0);
  std::vector<int64_t> largest;  // per section
  int64_t used = 0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (pairs[i].hi <= pairs[i].lo) continue;  // no task
    const int64_t span = pairs[i].hi - pairs[i].lo;
    if (largest.empty() || (used > 0 && used + span > budget)) {
      largest.push_back(0);
      used = 0;
    }
    used += span;
    section_of[i] = int32_t(largest.size()) - 1;
  }
  for (const AttentionTask& t : tasks) {
    int64_t& l = largest[size_t(section_of[pair_of(t)])];
    l = std::max(l, t.cost);
  }
  std::vector<int32_t> by_size(largest.size());
  std::iota(by_size.begin(), by_size.end(), 0);
  std::stable_sort(by_size.begin(), by_size.end(), [&](int32_t a, int32_t b) { return largest[size_t(a)] > largest[size_t(b)]; });
  std::vector<int32_t> section_rank(largest.size());
  for (size_t r = 0; r < by_size.size(); ++r) section_rank[size_t(by_size[r])] = int32_t(r);
  for (size_t i = 0; i < tasks.size(); ++i) rank[i] = section_rank[size_t(section_of[pair_of(tasks[i])])];
  return rank;
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
  const std::vector<int32_t> section = l2_sections(list.tasks, shape.num_kv_heads, options.l2_section_positions);
  std::vector<int32_t> order(list.tasks.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const AttentionTask &ta = list.tasks[size_t(a)], &tb = list.tasks[size_t(b)];
    const int32_t sa = section[size_t(a)], sb = section[size_t(b)];
    return sa != sb ? sa < sb : ta.cost > tb.cost;
  });
  if (options.interleave_small_tiles) {
    // Small tiles at even intervals: the k-th of S small ones after about k * N / S tasks.
    std::vector<int32_t> large, small;
    for (const int32_t i : order)
      (list.tasks[size_t(i)].q_count * shape.group() <= options.tile_rows / 2 ? small : large).push_back(i);
    const size_t n = order.size();
    size_t next_small = 0, next_large = 0;
    for (size_t k = 0; k < n; ++k) {
      // Take a small one while fewer than (k + 1) * S / N of them are placed.
      const bool take_small = next_small < small.size() &&
                              (next_large == large.size() || (next_small + 1) * n <= (k + 1) * small.size());
      order[k] = take_small ? small[next_small++] : large[next_large++];
    }
  }
  std::vector<AttentionTask> sorted;
  sorted.reserve(order.size());
  for (const int32_t i : order) sorted.push_back(list.tasks[size_t(i)]);
  list.tasks = std::move(sorted);
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
