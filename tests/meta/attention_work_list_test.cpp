#include "xyserve/meta/attention_work_list.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <tuple>

namespace xy::meta {
namespace {

struct Req {
  int32_t computed;
  int32_t num_new;
};

StepPlan make_plan(const std::vector<Req>& reqs, int32_t block_size = 16) {
  StepPlan plan;
  plan.block_size = block_size;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ScheduledRequest r;
    r.request_id = int64_t(100 + i);
    r.num_computed_tokens = reqs[i].computed;
    r.num_new_tokens = reqs[i].num_new;
    r.first_row = plan.num_rows();
    r.num_logits_rows = 1;
    const int32_t total = r.num_computed_tokens + r.num_new_tokens;
    for (int32_t b = 0; b < (total + block_size - 1) / block_size; ++b) r.block_table.push_back(b);
    for (int32_t p = r.num_computed_tokens; p < total; ++p) {
      plan.token_ids.push_back(1);
      plan.positions.push_back(p);
    }
    plan.requests.push_back(r);
  }
  return plan;
}

bool visible(int32_t p, int32_t k, int32_t window) {
  return k <= p && (window == 0 || k > p - window);
}

std::vector<Req> random_reqs(std::mt19937& rng) {
  std::uniform_int_distribution<int> n_req(1, 6);
  std::vector<Req> reqs;
  const int n = n_req(rng);
  for (int i = 0; i < n; ++i) {
    const int kind = int(rng() % 3);
    if (kind == 0) reqs.push_back({int32_t(rng() % 3000), 1});                     // decode
    else if (kind == 1) reqs.push_back({int32_t(rng() % 500), int32_t(2 + rng() % 8)});  // verify-like
    else reqs.push_back({int32_t(rng() % 2000), int32_t(1 + rng() % 300)});        // prefill chunk
  }
  return reqs;
}

TEST(AttentionWorkList, VisiblePairsMatchesBruteForce) {
  std::mt19937 rng(1);
  for (int it = 0; it < 2000; ++it) {
    const int32_t qb = int32_t(rng() % 200), qe = qb + int32_t(rng() % 40);
    const int32_t kb = int32_t(rng() % 250), ke = kb + int32_t(rng() % 60);
    const int32_t window = (rng() % 2) ? int32_t(1 + rng() % 64) : 0;
    int64_t want = 0;
    for (int32_t p = qb; p < qe; ++p)
      for (int32_t k = kb; k < ke; ++k) want += visible(p, k, window);
    ASSERT_EQ(visible_pairs(qb, qe, kb, ke, window), want);
  }
}

// Every visible (request, query head, query token, key) is computed by exactly one task, no
// task claims an invisible-only span, the mask kind is `none` only when all pairs are visible,
// and the cost counts exactly the visible pairs.
TEST(AttentionWorkList, TasksCoverEveryVisiblePairExactlyOnce) {
  std::mt19937 rng(2);
  for (int it = 0; it < 60; ++it) {
    const std::vector<Req> reqs = random_reqs(rng);
    AttentionShape shape;
    shape.num_kv_heads = 1 + int32_t(rng() % 2);
    shape.num_heads = shape.num_kv_heads * (1 << (rng() % 3));
    shape.window = (rng() % 3 == 0) ? int32_t(16 + rng() % 700) : 0;
    WorkListOptions opt;
    opt.tile_rows = 16 << (rng() % 3);
    opt.kv_split = 16 * int32_t(1 + rng() % 40);
    const StepPlan plan = make_plan(reqs);
    const AttentionWorkList list = build_attention_work_list(plan, shape, opt);

    // coverage[(request, kv_head, query token)] -> count of tasks covering each key
    std::map<std::tuple<int, int, int>, std::vector<int>> coverage;
    int64_t cost = 0;
    for (const AttentionTask& t : list.tasks) {
      const ScheduledRequest& r = plan.requests[size_t(t.request)];
      int64_t pairs = 0;
      bool all_visible = true;
      for (int32_t q = t.q_begin; q < t.q_begin + t.q_count; ++q) {
        const int32_t p = r.num_computed_tokens + q;
        auto& cov = coverage[{t.request, t.kv_head, q}];
        cov.resize(size_t(p + 1), 0);
        for (int32_t k = t.kv_begin; k < t.kv_end; ++k) {
          ASSERT_LE(k, r.num_computed_tokens + t.q_begin + t.q_count - 1) << "key after the tile's last query";
          if (visible(p, k, shape.window)) {
            ++cov[size_t(k)];
            ++pairs;
          } else {
            all_visible = false;
          }
        }
      }
      ASSERT_GT(pairs, 0) << "a task with nothing to compute";
      EXPECT_EQ(t.cost, pairs * shape.group());
      EXPECT_EQ(t.mask == MaskKind::kNone, all_visible);
      if (shape.window == 0) {
        EXPECT_NE(t.mask, MaskKind::kWindow);
      }
      cost += t.cost;
    }
    int64_t want_cost = 0;
    for (size_t r = 0; r < reqs.size(); ++r) {
      for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
        for (int32_t q = 0; q < reqs[r].num_new; ++q) {
          const int32_t p = reqs[r].computed + q;
          const auto& cov = coverage[{int(r), h, q}];
          ASSERT_EQ(int32_t(cov.size()), p + 1);
          for (int32_t k = 0; k <= p; ++k) {
            ASSERT_EQ(cov[size_t(k)], visible(p, k, shape.window) ? 1 : 0)
                << "request " << r << " head " << h << " pos " << p << " key " << k;
            want_cost += visible(p, k, shape.window) * shape.group();
          }
        }
      }
    }
    EXPECT_EQ(cost, want_cost);
    EXPECT_EQ(list.total_cost(), want_cost);
  }
}

// For the exact invariances: the KV pieces a row's softmax is reduced over depend only on its
// position, not on the batch, the chunking or where its tile starts.
TEST(AttentionWorkList, SplitsOfARowDependOnlyOnItsPosition) {
  std::mt19937 rng(3);
  AttentionShape shape{8, 2, 0};
  WorkListOptions opt;
  opt.tile_rows = 32;
  opt.kv_split = 64;
  for (int32_t window : {0, 100}) {
    shape.window = window;
    // pieces[position] -> sorted spans of keys it sees, from many different batches/chunkings
    std::map<int32_t, std::set<std::vector<std::pair<int32_t, int32_t>>>> pieces;
    for (int it = 0; it < 40; ++it) {
      const int32_t total = 300;
      const int32_t chunk = 1 + int32_t(rng() % 120);
      const int32_t start = int32_t(rng() % 200);
      // the request of interest fed from `start` in one chunk, with random other requests
      std::vector<Req> reqs = random_reqs(rng);
      reqs.insert(reqs.begin() + int(rng() % (reqs.size() + 1)), Req{start, std::min(chunk, total - start)});
      const StepPlan plan = make_plan(reqs);
      const AttentionWorkList list = build_attention_work_list(plan, shape, opt);
      int32_t target = -1;
      for (size_t r = 0; r < reqs.size(); ++r)
        if (reqs[r].computed == start && reqs[r].num_new == std::min(chunk, total - start)) target = int32_t(r);
      std::map<int32_t, std::vector<std::pair<int32_t, int32_t>>> seen;
      for (const AttentionTask& t : list.tasks) {
        if (t.request != target || t.kv_head != 0) continue;
        for (int32_t q = t.q_begin; q < t.q_begin + t.q_count; ++q) {
          const int32_t p = start + q;
          const int32_t lo = std::max(t.kv_begin, window ? p - window + 1 : 0);
          const int32_t hi = std::min(t.kv_end, p + 1);
          if (hi > lo) seen[p].emplace_back(lo, hi);
        }
      }
      for (auto& [p, spans] : seen) {
        std::sort(spans.begin(), spans.end());
        pieces[p].insert(spans);
      }
    }
    for (const auto& [p, variants] : pieces) EXPECT_EQ(variants.size(), 1u) << "position " << p;
  }
}

TEST(AttentionWorkList, SortedLargestFirstAndPartialsMergedInSplitOrder) {
  const StepPlan plan = make_plan({{5000, 1}, {0, 200}, {100, 1}, {3000, 4}});
  const AttentionWorkList list = build_attention_work_list(plan, {32, 8, 0}, {64, 512});
  for (size_t i = 1; i < list.tasks.size(); ++i) EXPECT_GE(list.tasks[i - 1].cost, list.tasks[i].cost);
  // The 5001-key decode is split into ceil(5001 / 512) = 10 pieces per KV head.
  int pieces = 0;
  for (const auto& m : list.merges)
    if (m.request == 0) {
      EXPECT_EQ(m.num_partials, 10);
      ++pieces;
    }
  EXPECT_EQ(pieces, 8);
  std::vector<int> slot_used(size_t(list.num_partials), 0);
  for (const auto& t : list.tasks)
    if (t.partial >= 0) ++slot_used[size_t(t.partial)];
  for (int u : slot_used) EXPECT_EQ(u, 1);
  // Within a merge group, partial slots follow the KV order.
  for (const auto& m : list.merges) {
    std::vector<std::pair<int32_t, int32_t>> by_slot;
    for (const auto& t : list.tasks)
      if (t.request == m.request && t.kv_head == m.kv_head && t.q_begin == m.q_begin)
        by_slot.emplace_back(t.partial, t.kv_begin);
    std::sort(by_slot.begin(), by_slot.end());
    for (size_t i = 0; i < by_slot.size(); ++i) {
      EXPECT_EQ(by_slot[i].first, m.first_partial + int32_t(i));
      if (i) {
        EXPECT_LT(by_slot[i - 1].second, by_slot[i].second);
      }
    }
  }
}

TEST(AttentionWorkList, L2SectionsGroupHeadsAndKeepTheTasks) {
  // Two decodes first in plan order, then two causal prefills of 1024 on 1024 cached: 8 KV
  // heads, group 4, tiles of 128 rows (32 tokens). Each prefill pair spans 2048 positions; a
  // budget of 4096 puts two pairs in a section; each decode pair (span 3001) is a section alone.
  const StepPlan plan = make_plan({{3000, 1}, {3000, 1}, {1024, 1024}, {1024, 1024}});
  const AttentionShape shape{32, 8, 0};
  const AttentionWorkList plain = build_attention_work_list(plan, shape, {128, 8192});
  WorkListOptions options{128, 8192};
  options.l2_section_positions = 4096;
  const AttentionWorkList banded = build_attention_work_list(plan, shape, options);
  // The same tasks (a permutation), the same partials and merges.
  ASSERT_EQ(plain.tasks.size(), banded.tasks.size());
  auto key = [](const AttentionTask& t) {
    return std::tuple(t.request, t.kv_head, t.q_begin, t.kv_begin, t.kv_end, t.partial, t.cost, int(t.mask));
  };
  std::multiset<decltype(key(plain.tasks[0]))> a, b;
  for (const auto& t : plain.tasks) a.insert(key(t));
  for (const auto& t : banded.tasks) b.insert(key(t));
  EXPECT_EQ(a, b);
  EXPECT_EQ(plain.num_partials, banded.num_partials);
  // Walking the list: prefill sections (heads 2k, 2k+1 of request 2, then of request 3) come
  // before the decodes, each whole before the next starts, largest task first inside each.
  const int32_t prefill_tasks = 2 * 8 * 32;
  std::vector<std::pair<int32_t, int32_t>> section_order;  // (request, first head) per section
  for (int32_t i = 0; i < int32_t(banded.tasks.size()); ++i) {
    const AttentionTask& t = banded.tasks[size_t(i)];
    EXPECT_EQ(i < prefill_tasks, t.request >= 2) << i;
    const std::pair<int32_t, int32_t> sec{t.request, t.request >= 2 ? t.kv_head / 2 * 2 : t.kv_head};
    if (section_order.empty() || section_order.back() != sec) {
      for (const auto& seen : section_order) ASSERT_NE(seen, sec) << "section split at task " << i;
      section_order.push_back(sec);
    } else {
      EXPECT_GE(banded.tasks[size_t(i - 1)].cost, t.cost) << i;
    }
  }
  EXPECT_EQ(section_order.size(), 4u + 4u + 16u);
  // Prefill sections in plan order (their largest tasks tie), then the decodes' by head.
  EXPECT_EQ(section_order[0], std::pair(2, 0));
  EXPECT_EQ(section_order[4], std::pair(3, 0));
}

TEST(AttentionWorkList, SmallTilesInterleavedEvenlyEachKindInItsOrder) {
  // 3 prefill chunks of 256 (8 tiles of 32 tokens x 8 heads = 64 large tasks each) and 100 decodes
  // (8 small tasks each): 192 large, 800 small.
  std::vector<Req> reqs(3, Req{512, 256});
  for (int i = 0; i < 100; ++i) reqs.push_back({1000 + i, 1});
  const StepPlan plan = make_plan(reqs);
  WorkListOptions options{128, 8192};
  options.l2_section_positions = 4096;
  const AttentionWorkList sorted = build_attention_work_list(plan, {32, 8, 0}, options);
  options.interleave_small_tiles = true;
  const AttentionWorkList mixed = build_attention_work_list(plan, {32, 8, 0}, options);
  ASSERT_EQ(sorted.tasks.size(), mixed.tasks.size());
  auto small = [](const AttentionTask& t) { return t.q_count * 4 <= 64; };
  auto same = [](const AttentionTask& a, const AttentionTask& b) {
    return a.request == b.request && a.kv_head == b.kv_head && a.q_begin == b.q_begin && a.kv_begin == b.kv_begin;
  };
  // Each kind in the order the sorted list has it.
  for (const bool kind : {false, true}) {
    std::vector<const AttentionTask*> a, b;
    for (const auto& t : sorted.tasks)
      if (small(t) == kind) a.push_back(&t);
    for (const auto& t : mixed.tasks)
      if (small(t) == kind) b.push_back(&t);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same(*a[i], *b[i])) << i;
  }
  // Evenly: after k tasks, the small ones placed are within one of k * 800 / 992.
  int64_t placed = 0;
  for (size_t k = 0; k < mixed.tasks.size(); ++k) {
    placed += small(mixed.tasks[k]);
    const double want = double(k + 1) * 800.0 / 992.0;
    EXPECT_LE(std::abs(double(placed) - want), 1.0) << k;
  }
}

TEST(AttentionWorkList, DecodePacksTheGqaGroupIntoOneTile) {
  const StepPlan plan = make_plan({{700, 1}, {10, 5}});
  const AttentionWorkList list = build_attention_work_list(plan, {32, 8, 0}, {64, 1024});
  // One task per KV head for each request: a decode's 4 query heads and a 5-token verify's
  // 5 x 4 = 20 rows each fit one 64-row tile.
  EXPECT_EQ(list.tasks.size(), 16u);
  EXPECT_EQ(list.num_partials, 0);
  EXPECT_EQ(list.max_tile_tokens, 16);
}

TEST(AttentionWorkList, EveryTaskIsDealtOnceUnderBothPolicies) {
  std::mt19937 rng(4);
  for (auto policy : {DealPolicy::kSymmetricRoundRobin, DealPolicy::kGreedy}) {
    for (int it = 0; it < 30; ++it) {
      const StepPlan plan = make_plan(random_reqs(rng));
      const AttentionWorkList list = build_attention_work_list(plan, {16, 4, 0}, {64, 256});
      const int32_t workers = 1 + int32_t(rng() % 132);
      const auto dealt = deal_tasks(list, workers, policy);
      ASSERT_EQ(int32_t(dealt.size()), workers);
      std::vector<int> seen(list.tasks.size(), 0);
      int64_t max_load = 0, max_task = 0;
      for (const auto& w : dealt) {
        int64_t load = 0;
        for (int32_t i : w) {
          ++seen[size_t(i)];
          load += list.tasks[size_t(i)].cost;
          max_task = std::max(max_task, list.tasks[size_t(i)].cost);
        }
        max_load = std::max(max_load, load);
      }
      for (int s : seen) ASSERT_EQ(s, 1);
      // List scheduling bound: no worker exceeds the mean load by more than one task.
      if (policy == DealPolicy::kGreedy) {
        EXPECT_LE(max_load, list.total_cost() / workers + max_task);
      }
    }
  }
}

TEST(AttentionWorkList, SymmetricRoundRobinSnakesAcrossWorkers) {
  const StepPlan plan = make_plan({{0, 64}});
  const AttentionWorkList list = build_attention_work_list(plan, {4, 4, 0}, {16, 1024});
  ASSERT_EQ(list.tasks.size(), 16u);  // 4 tiles of 16 tokens x 4 KV heads
  const auto dealt = deal_tasks(list, 3, DealPolicy::kSymmetricRoundRobin);
  // order of workers: 0 1 2 2 1 0 0 1 2 ...
  const int expected_worker[] = {0, 1, 2, 2, 1, 0, 0, 1, 2};
  for (int i = 0; i < 9; ++i) {
    const auto& w = dealt[size_t(expected_worker[i])];
    EXPECT_NE(std::find(w.begin(), w.end(), i), w.end()) << "task " << i;
  }
}

}  // namespace
}  // namespace xy::meta
