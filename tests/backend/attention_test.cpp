// Paged attention task primitive: against a double-precision softmax reference, split spans
// merged by log-sum-exp, and rows independent of their tile.
#include "xyserve/backend/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "xyserve/backend/cpu/kv_cache.h"
#include "xyserve/backend/cpu/thread_pool.h"

namespace xy::backend::cpu {
namespace {

struct Fixture {
  int32_t block_size, num_blocks;
  int64_t num_kv_heads, group, head_dim;
  PagedKvCache cache;
  std::vector<int32_t> block_table;  // a shuffled, non-contiguous table
  Fixture(int32_t bs, int64_t kvh, int64_t g, int64_t hd, int32_t kv_len, std::mt19937& rng)
      : block_size(bs),
        num_blocks((kv_len + bs - 1) / bs + 3),
        num_kv_heads(kvh),
        group(g),
        head_dim(hd),
        cache(1, num_blocks, bs, kvh, hd) {
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    block_table.assign(ids.begin(), ids.begin() + (kv_len + bs - 1) / bs);
    // Write random K, V for positions [0, kv_len) through the cache's own write path.
    meta::StepPlan plan;
    plan.block_size = bs;
    meta::ScheduledRequest req;
    req.num_new_tokens = kv_len;
    req.block_table = block_table;
    plan.requests.push_back(req);
    for (int32_t p = 0; p < kv_len; ++p) {
      plan.token_ids.push_back(0);
      plan.positions.push_back(p);
    }
    std::normal_distribution<float> dist;
    std::vector<float> k(size_t(kv_len * kvh * hd)), v(k.size());
    for (auto& x : k) x = dist(rng);
    for (auto& x : v) x = dist(rng);
    cache.write(0, plan, k.data(), v.data(), kvh * hd);
    keys = k;
    values = v;
  }
  std::vector<float> keys, values;  // [kv_len, kvh, hd], position-major: the reference's copy
};

// Reference: softmax over visible keys in double, normalized output.
std::vector<double> reference(const Fixture& f, const float* q, int64_t kv_head, int32_t position,
                              int32_t kv_end, MaskKind mask, int32_t window, double scale) {
  std::vector<double> s;
  std::vector<int32_t> idx;
  for (int32_t p = 0; p < kv_end; ++p) {
    if (mask != MaskKind::kNone && p > position) continue;
    if (mask == MaskKind::kWindow && p <= position - window) continue;
    double d = 0;
    for (int64_t j = 0; j < f.head_dim; ++j) {
      d += double(q[j]) * f.keys[size_t((p * f.num_kv_heads + kv_head) * f.head_dim + j)];
    }
    s.push_back(d * scale);
    idx.push_back(p);
  }
  std::vector<double> out(size_t(f.head_dim), 0.0);
  if (s.empty()) return out;
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (size_t i = 0; i < s.size(); ++i) {
    for (int64_t j = 0; j < f.head_dim; ++j) {
      out[size_t(j)] +=
          s[i] / sum * f.values[size_t((idx[i] * f.num_kv_heads + kv_head) * f.head_dim + j)];
    }
  }
  return out;
}

struct Partial {
  std::vector<float> out, max, sum, scratch;
};

Partial run_task(const Fixture& f, const std::vector<float>& q, int32_t num_rows, int32_t first_pos,
                 int64_t kv_head, int32_t kv_begin, int32_t kv_end, MaskKind mask, int32_t window) {
  Partial p;
  const int64_t row = f.group * f.head_dim;
  p.out.assign(size_t(num_rows * row), 0.0f);
  p.max.assign(size_t(num_rows * f.group), 0.0f);
  p.sum.assign(p.max.size(), 0.0f);
  p.scratch.assign(size_t(f.block_size), 0.0f);
  AttentionTaskArgs a;
  a.q = q.data();
  a.q_row_stride = row;
  a.num_rows = num_rows;
  a.group_size = int32_t(f.group);
  a.num_computed = first_pos;
  a.mask = mask;
  a.window = window;
  a.kv = f.cache.layer(0);
  a.block_table = f.block_table;
  a.kv_head = kv_head;
  a.kv_begin = kv_begin;
  a.kv_end = kv_end;
  a.scale = float(1.0 / std::sqrt(double(f.head_dim)));
  a.out = p.out.data();
  a.out_row_stride = row;
  a.row_max = p.max.data();
  a.row_sum = p.sum.data();
  a.scratch = p.scratch.data();
  attend_partial(a);
  return p;
}

TEST(Attention, PartialMatchesSoftmaxReferenceForEveryMask) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  for (int trial = 0; trial < 30; ++trial) {
    const int32_t bs = 1 + int32_t(rng() % 9);
    const int64_t kvh = 1 + rng() % 3, group = 1 + rng() % 4, hd = 4 + 4 * (rng() % 9);
    const int32_t kv_len = 1 + int32_t(rng() % 70);
    Fixture f(bs, kvh, group, hd, kv_len, rng);
    const int32_t num_rows = 1 + int32_t(rng() % kv_len);
    const int32_t first_pos = kv_len - num_rows;
    const MaskKind mask = MaskKind(trial % 3);
    const int32_t window = 1 + int32_t(rng() % 20);
    std::vector<float> q(size_t(num_rows * group * hd));
    for (auto& x : q) x = dist(rng) * 2.0f;
    for (int64_t h = 0; h < kvh; ++h) {
      Partial p = run_task(f, q, num_rows, first_pos, h, 0, kv_len, mask, window);
      for (int32_t i = 0; i < num_rows; ++i) {
        for (int64_t g = 0; g < group; ++g) {
          const size_t base = size_t((i * group + g) * hd);
          normalize_partial(p.out.data() + base, p.sum[size_t(i * group + g)], hd);
          const auto ref = reference(f, q.data() + base, h, first_pos + i, kv_len, mask, window,
                                     1.0 / std::sqrt(double(hd)));
          for (int64_t j = 0; j < hd; ++j) {
            ASSERT_NEAR(p.out[base + size_t(j)], ref[size_t(j)], 2e-5)
                << "trial " << trial << " row " << i << " head " << g << " dim " << j;
          }
        }
      }
    }
  }
}

TEST(Attention, SplitSpansMergedByLogSumExpEqualWholeSpan) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  for (int trial = 0; trial < 30; ++trial) {
    const int32_t bs = 1 + int32_t(rng() % 8);
    const int64_t group = 1 + rng() % 4, hd = 8 * (1 + rng() % 4);
    const int32_t kv_len = 2 + int32_t(rng() % 80);
    Fixture f(bs, 2, group, hd, kv_len, rng);
    const int32_t num_rows = 1 + int32_t(rng() % 8);
    const int32_t first_pos = std::max(0, kv_len - num_rows);
    const int32_t rows = kv_len - first_pos;
    const MaskKind mask = trial % 2 ? MaskKind::kCausal : MaskKind::kWindow;
    const int32_t window = 1 + int32_t(rng() % 30);
    std::vector<float> q(size_t(rows * group * hd));
    for (auto& x : q) x = dist(rng) * 3.0f;
    Partial whole = run_task(f, q, rows, first_pos, 1, 0, kv_len, mask, window);
    // Up to 4 random cut points, then fold the pieces left to right.
    std::vector<int32_t> cuts = {0, kv_len};
    for (int c = 0; c < 3; ++c) cuts.push_back(int32_t(rng() % (kv_len + 1)));
    std::sort(cuts.begin(), cuts.end());
    Partial acc = run_task(f, q, rows, first_pos, 1, cuts[0], cuts[1], mask, window);
    for (size_t c = 1; c + 1 < cuts.size(); ++c) {
      Partial piece = run_task(f, q, rows, first_pos, 1, cuts[c], cuts[c + 1], mask, window);
      for (int32_t r = 0; r < rows * int32_t(group); ++r) {
        merge_partial(acc.out.data() + r * hd, acc.max[size_t(r)], acc.sum[size_t(r)],
                      piece.out.data() + r * hd, piece.max[size_t(r)], piece.sum[size_t(r)], hd);
      }
    }
    for (int32_t r = 0; r < rows * int32_t(group); ++r) {
      ASSERT_EQ(acc.max[size_t(r)], whole.max[size_t(r)]);
      ASSERT_NEAR(acc.sum[size_t(r)], whole.sum[size_t(r)], 1e-5f * whole.sum[size_t(r)]);
      normalize_partial(acc.out.data() + r * hd, acc.sum[size_t(r)], hd);
      normalize_partial(whole.out.data() + r * hd, whole.sum[size_t(r)], hd);
      for (int64_t j = 0; j < hd; ++j) {
        ASSERT_NEAR(acc.out[size_t(r * hd + j)], whole.out[size_t(r * hd + j)], 1e-5)
            << "trial " << trial << " cuts " << cuts[1] << "," << cuts[2] << "," << cuts[3];
      }
    }
  }
}

TEST(Attention, RowResultIsIndependentOfItsTile) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist;
  Fixture f(4, 2, 3, 16, 45, rng);
  const int32_t rows = 20, first_pos = 25;
  std::vector<float> q(size_t(rows * 3 * 16));
  for (auto& x : q) x = dist(rng);
  Partial tile = run_task(f, q, rows, first_pos, 1, 0, 45, MaskKind::kWindow, 9);
  for (int32_t i = 0; i < rows; ++i) {
    std::vector<float> qi(q.begin() + i * 48, q.begin() + (i + 1) * 48);
    Partial alone =
        run_task(f, qi, 1, first_pos + i, 1, 0, first_pos + i + 1, MaskKind::kWindow, 9);
    ASSERT_EQ(0, std::memcmp(alone.out.data(), tile.out.data() + i * 48, 48 * sizeof(float))) << i;
  }
}

}  // namespace
}  // namespace xy::backend::cpu
