#include "xyserve/backend/cuda/hybrid_split.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::cuda {
namespace {

struct Work {
  double tile_flops = 0, largest_tile_flops = 0;
  double decode_bytes = 0, largest_decode_bytes = 0;
};

Work step_work(const meta::AttentionWorkList& list, const HybridShape& shape) {
  Work w;
  // A visible (row, key) pair costs 4 head_dim FLOPs (Q K^T and P V); a small tile reads each key's
  // K and V once, 2 head_dim bf16 values.
  const double flops_per_pair = 4.0 * shape.head_dim;
  const double bytes_per_key = 2.0 * 2.0 * shape.head_dim;
  for (int32_t i = 0; i < int32_t(list.tasks.size()); ++i) {
    const meta::AttentionTask& t = list.tasks[size_t(i)];
    if (i < list.num_large_tasks) {
      const double flops = double(t.cost) * flops_per_pair;
      w.tile_flops += flops;
      w.largest_tile_flops = std::max(w.largest_tile_flops, flops);
    } else {
      int32_t keys = t.kv_end - t.kv_begin;
      if (shape.window > 0) keys = std::min(keys, shape.window + t.q_count - 1);
      const double bytes = double(keys) * bytes_per_key;
      w.decode_bytes += bytes;
      w.largest_decode_bytes = std::max(w.largest_decode_bytes, bytes);
    }
  }
  return w;
}

HybridEstimate estimate(const Work& w, const HybridShape& shape, int32_t tile_ctas, const HybridRates& r) {
  HybridEstimate e;
  e.tile_ctas = tile_ctas;
  e.tile_us = std::max(w.tile_flops / tile_ctas, w.largest_tile_flops) / r.tile_flops_per_sm_us;
  const int32_t decode_sms = shape.num_sms - tile_ctas;
  const double bandwidth = std::min(decode_sms * r.decode_bytes_per_sm_us, r.device_bytes_per_us);
  // A task runs on one of an SM's two decode CTAs: at most half the SM's rate.
  e.decode_us = std::max(w.decode_bytes / bandwidth, w.largest_decode_bytes / (r.decode_bytes_per_sm_us / 2));
  return e;
}

}  // namespace

HybridEstimate estimate_hybrid_split(const meta::AttentionWorkList& list, const HybridShape& shape, int32_t tile_ctas,
                                     const HybridRates& rates) {
  XY_CHECK(tile_ctas >= 1 && tile_ctas < shape.num_sms, "tile_ctas ", tile_ctas, " of ", shape.num_sms, " SMs");
  return estimate(step_work(list, shape), shape, tile_ctas, rates);
}

int32_t hybrid_tile_ctas(const meta::AttentionWorkList& list, const HybridShape& shape, const HybridRates& rates) {
  XY_CHECK(shape.num_sms >= 2, "the hybrid launch needs two SMs");
  XY_CHECK(list.num_large_tasks > 0 && list.num_large_tasks < int32_t(list.tasks.size()),
           "the hybrid launch needs tiles of both kinds, partitioned (small_tiles_last_rows)");
  const Work w = step_work(list, shape);
  int32_t best = shape.num_sms - 1;
  double best_us = 1e300;
  for (int32_t p = shape.num_sms - 1; p >= 1; --p) {
    const HybridEstimate e = estimate(w, shape, p, rates);
    const double us = std::max(e.tile_us, e.decode_us);
    if (us < best_us) {
      best_us = us;
      best = p;
    }
  }
  return best;
}

}  // namespace xy::cuda
