// The KV split rule of decode-only steps (decode_split.h), for the decode attention kernel.
//
// What the kernel does with a work list (kernels/decode_attention.cu): a persistent grid of
// W = num_sms * kDecodeCtasPerSm CTAs (264 on an H200's 132 SMs) takes the cost-sorted tasks in
// XY-Serve's symmetric round robin (0..G-1, G-1..0, ... with G = min(tasks, W)); a task is one
// (request, KV head, span) and costs the CTA its span's keys. Units below are keys that one CTA
// streams at its fair share of the device: 4.3 TB/s / 264 = 16 GB/s, i.e. ~32 keys/us at
// head_dim 128 (K + V = 512 bytes a key).
//
// The arithmetic the rule weighs, per candidate split:
//   - total / min(tasks, W): the step at the bandwidth of the CTAs that have a task. Each task also
//     costs kTaskOverheadKeys (its geometry and Q loads and the fold of the 4 warps' states:
//     ~0.5 us). A CTA without a task leaves its share of the bytes in flight unused for the whole
//     launch. (Measured, bench/cuda/attention_bench on an H200, first version of the kernel:
//     8 x 32k at split 8192 is 256 tasks on 264 CTAs and streamed 3.72 TB/s, at split 4096 it is
//     512 tasks, every CTA busy, and streamed 3.86, although both deals give the busiest CTA the
//     same 8192 keys and 4096 adds tasks and partials. Total and makespan alone tie the two, and
//     the per-task and merge costs then pick 8192; counting idle CTAs picks 4096. The term
//     overstates what idle CTAs cost (split 16384, 128 tasks, streamed 3.71, as 8192 did; the
//     rule ranks both below 1024, measured at 3.56), but it picks the measured best.)
//   - makespan / kHeadroom: a CTA keeps up to 80 KB of KV in flight (4 warps x 5 entries x 4 KB);
//     at the 1.5-2 us latency of a loaded HBM that is 40-53 GB/s, 2.5-3.3x its fair share (one
//     CTA alone on an SM streamed 34 GB/s with the first version's 64 KB: 8 x 32k unsplit, 64
//     tasks, 2.17 TB/s). So CTAs with work beyond the average are absorbed by the headroom, and
//     the CTA with the most work bounds the step only beyond twice the average: kHeadroom = 2.
//   - kMergeCostKeys once any span is split: the partials' merge launch (~3 us with its reads).
// cost = max(total / min(tasks, W), makespan / kHeadroom) + merge; the least cost wins, the largest
// split on ties (fewer partials). Candidates: no split, then powers of two from below the longest
// context down to kMinSplitKeys = 256 (16 chunks of 16 keys: 4 a warp, little more than the 3
// chunks its ring holds, so a shorter task is mostly per-task overhead).
//
// Worked examples, Llama-3-8B (8 KV heads), block 16, W = 264, against the measured best splits:
//   256 x 2k: 2048 tasks of 2064 (7.76 a CTA): total/W 16012, makespan 8 x 2064 = 16512 -> 16012
//     whole; split 1024 gives 4096 tasks of 1040: total/W 16136 + 96 -> kept whole (measured: whole
//     4.07 TB/s, 4096+ 4.05-4.06, 1024 3.95).
//   64 x 1k, 64 x 4k: 512 tasks, at most 2 a CTA (total/W 2017 vs makespan 2080) -> whole (measured:
//     1k flat at 3.72-3.76 over splits 1024-32768; 4k whole 3.95-4.00, split 1024 3.83).
//   8 x 32k: 64 tasks of 32784 -> 32784 whole; 16384: 128 tasks, 16400 + 96; 8192: 256 tasks,
//     8208 + 96; 4096: 512 tasks, 7975 + 96 = 8071; 2048: 8006 + 96 -> 4096 (measured: 4096 3.86,
//     8192 3.72, 16384 3.71, 1024 3.56, whole 2.17).
//   1 x 4k: 8 tasks -> 4112 whole; split 256: 128 tasks of 272 -> 272 + 96 = 368.
//   1 x 512: 528 whole; split 256: 16 tasks -> 272 + 96 = 368 -> 256 (a tiny step either way).
// The constants are estimates from the kernel's design; the bench's decode lines (the rule's split,
// then 1024 to 16384, with and without the merge) show whether the rule still picks the best split.
#include "xyserve/backend/cuda/decode_split.h"

#include <algorithm>
#include <functional>
#include <map>
#include <vector>

#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

constexpr int32_t kMinSplitKeys = 256;
constexpr int64_t kTaskOverheadKeys = 16;
constexpr int64_t kMergeCostKeys = 96;
constexpr double kHeadroom = 2.0;

int32_t round_down_to(int32_t value, int32_t multiple) { return std::max(multiple, value / multiple * multiple); }
int32_t round_up_to(int32_t value, int32_t multiple) { return std::max(multiple, (value + multiple - 1) / multiple * multiple); }

}  // namespace

DecodeSplitEstimate estimate_decode_split(std::span<const int32_t> context_lengths, const DecodeSplitShape& shape,
                                          int32_t kv_split) {
  XY_CHECK(shape.num_kv_heads > 0 && shape.num_sms > 0 && kv_split > 0);
  DecodeSplitEstimate e;
  // Tasks grouped by cost, largest first: a request's span [lo, hi) cut at multiples of kv_split
  // gives a first piece, pieces of kv_split, and a last piece.
  std::map<int64_t, int64_t, std::greater<>> count_by_cost;
  const int64_t heads = shape.num_kv_heads;
  for (const int32_t hi : context_lengths) {
    if (hi <= 0) continue;
    const int32_t lo = shape.window > 0 ? std::max(0, hi - shape.window) : 0;
    const int32_t first = lo / kv_split * kv_split;
    const int64_t pieces = (int64_t(hi) - first + kv_split - 1) / kv_split;
    if (pieces == 1) {
      count_by_cost[hi - lo + kTaskOverheadKeys] += heads;
    } else {
      count_by_cost[first + kv_split - lo + kTaskOverheadKeys] += heads;
      if (pieces > 2) count_by_cost[kv_split + kTaskOverheadKeys] += (pieces - 2) * heads;
      count_by_cost[hi - (first + (pieces - 1) * kv_split) + kTaskOverheadKeys] += heads;
      e.num_partials += pieces * heads;
    }
    e.num_tasks += pieces * heads;
  }
  if (e.num_tasks == 0) return e;
  // The kernel's deal: task i goes to CTA i % G on even laps and G - 1 - i % G on odd ones. Whole
  // laps add to every CTA; a partial lap adds to a contiguous range (a difference array).
  const int64_t workers = int64_t(shape.num_sms) * kDecodeCtasPerSm;
  const int64_t g = std::min(e.num_tasks, workers);
  std::vector<int64_t> diff(size_t(g) + 1, 0);
  int64_t every = 0, i = 0;
  for (const auto& [cost, count] : count_by_cost) {
    e.total += cost * count;
    for (int64_t n = count; n > 0;) {
      const int64_t lap = i / g, p = i % g;
      if (p == 0 && n >= g) {
        const int64_t laps = n / g;
        every += laps * cost;
        i += laps * g;
        n -= laps * g;
        continue;
      }
      const int64_t m = std::min(n, g - p);
      const int64_t begin = lap % 2 == 0 ? p : g - p - m;
      diff[size_t(begin)] += cost;
      diff[size_t(begin + m)] -= cost;
      i += m;
      n -= m;
    }
  }
  int64_t load = 0;
  for (int64_t w = 0; w < g; ++w) {
    load += diff[size_t(w)];
    e.makespan = std::max(e.makespan, every + load);
  }
  e.cost = std::max(double(e.total) / double(g), double(e.makespan) / kHeadroom) +
           (e.num_partials > 0 ? double(kMergeCostKeys) : 0.0);
  return e;
}

int32_t decode_kv_split(std::span<const int32_t> context_lengths, const DecodeSplitShape& shape) {
  XY_CHECK(shape.num_kv_heads > 0 && shape.block_size > 0 && shape.num_sms > 0);
  int32_t longest = 1;
  for (const int32_t c : context_lengths) longest = std::max(longest, c);
  // No split: one span per request, whatever its length.
  int32_t best = round_up_to(longest, shape.block_size);
  double best_cost = estimate_decode_split(context_lengths, shape, best).cost;
  int32_t power = 1;
  while (power < longest / 2) power *= 2;  // the largest power of two below the longest context
  for (int32_t split = power; split >= kMinSplitKeys; split /= 2) {
    const int32_t candidate = round_down_to(split, shape.block_size);
    if (candidate >= best) continue;
    const double cost = estimate_decode_split(context_lengths, shape, candidate).cost;
    if (cost < best_cost) {
      best = candidate;
      best_cost = cost;
    }
  }
  return best;
}

int32_t decode_kv_split(const meta::StepPlan& plan, int32_t tile_tokens, const DecodeSplitShape& shape) {
  XY_CHECK(tile_tokens > 0);
  std::vector<int32_t> contexts;
  contexts.reserve(plan.requests.size());
  for (const auto& r : plan.requests)
    for (int32_t q = 0; q < r.num_new_tokens; q += tile_tokens) contexts.push_back(r.num_computed_tokens + r.num_new_tokens);
  return decode_kv_split(contexts, shape);
}

void check_decode_work_list(const meta::AttentionWorkList& list, int32_t group) {
  for (size_t i = 0; i < list.tasks.size(); ++i) {
    const meta::AttentionTask& t = list.tasks[i];
    const int64_t rows = int64_t(t.q_count) * group;
    if (rows > kDecodeMaxRows)
      throw InvalidArgument(cat("attention: task ", i, " (request ", t.request, ", KV head ", t.kv_head,
                                ", query tokens [", t.q_begin, ", ", t.q_begin + t.q_count, ")) has ", rows,
                                " rows; the decode kernel serves at most ", kDecodeMaxRows,
                                " (a list built with tile_rows <= ", kDecodeMaxRows, " has no such task)"));
  }
}

}  // namespace xy::cuda
