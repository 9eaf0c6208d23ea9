#include "xyserve/backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "xyserve/backend/cpu/thread_pool.h"
#include "xyserve/common/check.h"

namespace xy::backend::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// q·k in 8 lanes, ascending index, then a fixed tree: an order that depends only on n.
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  const float s0 = (acc[0] + acc[4]) + (acc[2] + acc[6]);
  const float s1 = (acc[1] + acc[5]) + (acc[3] + acc[7]);
  return s0 + s1;
}

}  // namespace

void attend_partial(const AttentionTaskArgs& a) {
  const int64_t head_dim = a.kv.head_dim;
  const int32_t block_size = a.kv.block_size;
  XY_CHECK(a.kv_begin >= 0 && a.kv_begin <= a.kv_end, "kv span [", a.kv_begin, ", ", a.kv_end, ")");
  XY_CHECK(int64_t(a.block_table.size()) * block_size >= a.kv_end, "block table of ",
           a.block_table.size(), " blocks does not cover kv_end ", a.kv_end);
  XY_CHECK(a.mask != MaskKind::kWindow || a.window > 0, "window mask needs window > 0");
  const bool tree = !a.tree_parents.empty();
  for (int32_t i = 0; i < a.num_rows; ++i) {
    const int32_t j = a.row_begin + i;
    int32_t depth = j;
    if (tree) {  // path_scratch[d] = the depth-d ancestor of row j (path_scratch[depth] = j)
      depth = 0;
      for (int32_t r = j; r > 0; r = a.tree_parents[size_t(r)]) {
        XY_CHECK(a.tree_parents[size_t(r)] < r, "tree row ", r, " parent ",
                 a.tree_parents[size_t(r)]);
        ++depth;
      }
      for (int32_t r = j, d = depth; d >= 0; r = a.tree_parents[size_t(r)], --d) {
        a.path_scratch[d] = r;
      }
    }
    // The KV slot of the key at `position` as row j sees it.
    auto slot_of = [&](int32_t position) {
      return tree && position >= a.num_computed
                 ? a.num_computed + a.path_scratch[position - a.num_computed]
                 : position;
    };
    const int32_t position = a.num_computed + depth;
    int32_t lo = a.kv_begin, hi = a.kv_end;
    if (a.mask != MaskKind::kNone) hi = std::min(hi, position + 1);
    if (a.mask == MaskKind::kWindow || (a.mask == MaskKind::kTree && a.window > 0))
      lo = std::max(lo, position - a.window + 1);
    for (int32_t g = 0; g < a.group_size; ++g) {
      const float* q = a.q + i * a.q_row_stride + g * head_dim;
      float* o = a.out + i * a.out_row_stride + g * head_dim;
      std::fill_n(o, head_dim, 0.0f);
      float m = kNegInf, l = 0.0f;
      // Block-aligned chunks: boundaries depend only on absolute positions.
      for (int32_t c0 = lo; c0 < hi;) {
        const int32_t c1 = std::min(hi, (c0 / block_size + 1) * block_size);
        float chunk_max = kNegInf;
        for (int32_t p = c0; p < c1; ++p) {
          const float s =
              dot(q, a.kv.k + a.kv.offset(a.block_table, slot_of(p), a.kv_head), head_dim) *
              a.scale;
          a.scratch[p - c0] = s;
          chunk_max = std::max(chunk_max, s);
        }
        if (chunk_max > m) {  // rescale what was accumulated under the old max
          const float factor = std::exp(m - chunk_max);
          for (int64_t d = 0; d < head_dim; ++d) o[d] *= factor;
          l *= factor;
          m = chunk_max;
        }
        for (int32_t p = c0; p < c1; ++p) {
          const float e = std::exp(a.scratch[p - c0] - m);
          l += e;
          const float* v = a.kv.v + a.kv.offset(a.block_table, slot_of(p), a.kv_head);
          for (int64_t d = 0; d < head_dim; ++d) o[d] += e * v[d];
        }
        c0 = c1;
      }
      a.row_max[i * a.group_size + g] = m;
      a.row_sum[i * a.group_size + g] = l;
    }
  }
}

void merge_partial(float* o_a, float& max_a, float& sum_a, const float* o_b, float max_b,
                   float sum_b, int64_t head_dim) {
  if (max_b == kNegInf) return;  // b saw no key
  if (max_a == kNegInf) {
    std::copy_n(o_b, head_dim, o_a);
    max_a = max_b;
    sum_a = sum_b;
    return;
  }
  const float m = std::max(max_a, max_b);
  const float fa = std::exp(max_a - m), fb = std::exp(max_b - m);
  for (int64_t d = 0; d < head_dim; ++d) o_a[d] = o_a[d] * fa + o_b[d] * fb;
  sum_a = sum_a * fa + sum_b * fb;
  max_a = m;
}

void normalize_partial(float* o, float sum, int64_t head_dim) {
  if (sum <= 0.0f) return;
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < head_dim; ++d) o[d] *= inv;
}

void AttentionRunner::run(const AttentionLayerArgs& args, const meta::AttentionWorkList& work,
                          ThreadPool* pool) {
  const meta::StepPlan& plan = *args.plan;
  const int64_t num_kv_heads = args.kv.num_kv_heads;
  const int64_t head_dim = args.kv.head_dim;
  XY_CHECK(args.num_heads % num_kv_heads == 0, "num_heads ", args.num_heads,
           " not a multiple of num_kv_heads ", num_kv_heads);
  const int32_t group = int32_t(args.num_heads / num_kv_heads);
  const int64_t row_stride = args.num_heads * head_dim;
  const size_t tile_rows = size_t(work.max_tile_tokens) * size_t(group);
  const size_t num_tasks = work.tasks.size();
  int32_t max_new = 0;
  for (const auto& r : plan.requests) max_new = std::max(max_new, r.num_new_tokens);

  auto grow = [](auto& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  grow(partial_out_, size_t(work.num_partials) * tile_rows * size_t(head_dim));
  grow(partial_stats_, size_t(work.num_partials) * 2 * tile_rows);
  grow(stats_, num_tasks * 2 * tile_rows);
  grow(scratch_, num_tasks * size_t(args.kv.block_size));
  grow(paths_, num_tasks * size_t(max_new));

  auto run_task = [&](int64_t t) {
    const meta::AttentionTask& task = work.tasks[size_t(t)];
    const meta::ScheduledRequest& req = plan.requests[size_t(task.request)];
    const int64_t first_row = req.first_row + task.q_begin;
    AttentionTaskArgs a;
    a.q = args.q + first_row * args.q_row_stride + task.kv_head * group * head_dim;
    a.q_row_stride = args.q_row_stride;
    a.num_rows = task.q_count;
    a.group_size = group;
    a.num_computed = req.num_computed_tokens;
    a.row_begin = task.q_begin;
    a.tree_parents = req.tree_parents;
    a.path_scratch = paths_.data() + size_t(t) * size_t(max_new);
    a.mask = task.mask;
    a.window = args.window;
    a.kv = args.kv;
    a.block_table = req.block_table;
    a.kv_head = task.kv_head;
    a.kv_begin = task.kv_begin;
    a.kv_end = task.kv_end;
    a.scale = args.scale;
    a.scratch = scratch_.data() + size_t(t) * size_t(args.kv.block_size);
    if (task.partial < 0) {  // the tile's only span: normalise straight into the output
      a.out = args.out + first_row * row_stride + task.kv_head * group * head_dim;
      a.out_row_stride = row_stride;
      a.row_max = stats_.data() + size_t(t) * 2 * tile_rows;
      a.row_sum = a.row_max + tile_rows;
      attend_partial(a);
      for (int32_t i = 0; i < a.num_rows; ++i)
        for (int32_t g = 0; g < group; ++g)
          normalize_partial(a.out + i * row_stride + g * head_dim, a.row_sum[i * group + g], head_dim);
    } else {
      a.out = partial_out_.data() + size_t(task.partial) * tile_rows * size_t(head_dim);
      a.out_row_stride = group * head_dim;
      a.row_max = partial_stats_.data() + size_t(task.partial) * 2 * tile_rows;
      a.row_sum = a.row_max + tile_rows;
      attend_partial(a);
    }
  };
  // Each merge group folds its partials in KV order, so the reduction order of a row is fixed
  // by its position alone.
  auto run_merge = [&](int64_t i) {
    const meta::MergeGroup& mg = work.merges[size_t(i)];
    const meta::ScheduledRequest& req = plan.requests[size_t(mg.request)];
    for (int32_t row = 0; row < mg.q_count * group; ++row) {
      float* o = args.out + (req.first_row + mg.q_begin + row / group) * row_stride +
                 (mg.kv_head * group + row % group) * head_dim;
      float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
      std::fill_n(o, head_dim, 0.0f);
      for (int32_t p = mg.first_partial; p < mg.first_partial + mg.num_partials; ++p) {
        const float* po = partial_out_.data() + (size_t(p) * tile_rows + size_t(row)) * size_t(head_dim);
        const float* ps = partial_stats_.data() + size_t(p) * 2 * tile_rows;
        merge_partial(o, m, l, po, ps[row], ps[tile_rows + size_t(row)], head_dim);
      }
      normalize_partial(o, l, head_dim);
    }
  };
  if (pool) {
    pool->parallel_for(int64_t(num_tasks), run_task);
    pool->parallel_for(int64_t(work.merges.size()), run_merge);
  } else {
    for (size_t t = 0; t < num_tasks; ++t) run_task(int64_t(t));
    for (size_t i = 0; i < work.merges.size(); ++i) run_merge(int64_t(i));
  }
}

}  // namespace xy::backend::cpu
