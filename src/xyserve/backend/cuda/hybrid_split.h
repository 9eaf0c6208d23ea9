// The SM split of the hybrid attention launch (AttentionKernel::kHybrid, kernels.h): how many of
// the device's SMs run the step's query tiles (compute-bound) while the rest stream the small
// tiles' KV (memory-bound) with the decode kernel's CTAs. Pure host functions; the backend and
// the attention bench call them on the step's work list.
//
// The model: the tiles take their FLOPs over the tile SMs' compute rate (or their largest task,
// if longer); the small tiles take their KV bytes over the other SMs' bandwidth, each SM drawing
// up to a per-SM limit that exceeds an even share of the device's bandwidth, and all of them no
// more than the device's. The split minimises the later finish.
//
// Rates measured on the H200 (2026-11-25, attention_bench's hybrid split sweep on 4 chunks of 1024
// on 1024 cached + 128 decodes at 2k; docs/PERFORMANCE.md, fifth session): a tile SM computes ~3.4
// TFLOP/s; a decode SM streams ~29 GB/s, whatever the number of decode SMs (68, 60, 52: 28.6, 28.8,
// 29.9 GB/s). That is below an even share of the device's bandwidth (4.3 TB/s over 132 SMs, 32.6
// GB/s): the decode CTAs' cp.async rings do not let one SM draw more, so splitting the SMs cannot
// overlap the two kinds of work better than interleaving them on every SM (the wgmma kernel's
// interleave_small_tiles): the best split took 551 us where the interleaved wgmma launch took
// 456. The backend therefore does not use the hybrid launch; it stays in the bench and the tests
// for the next loader (TMA rows, deeper rings) that lifts an SM's draw.
#pragma once

#include <cstdint>

#include "xyserve/meta/attention_work_list.h"

namespace xy::cuda {

struct HybridShape {
  int32_t group = 1;      // query heads per KV head
  int32_t head_dim = 128;
  int32_t num_sms = 0;
  int32_t window = 0;     // the layer's sliding window (0: none): a small tile sees at most this many keys
};

struct HybridRates {
  double tile_flops_per_sm_us = 3.4e6;      // wgmma role, causal prefill tiles (~450 TFLOP/s on 132 SMs)
  double decode_bytes_per_sm_us = 29.0e3;   // one SM's two decode CTAs (measured: no more when few SMs stream)
  double device_bytes_per_us = 4.2e6;       // all SMs together
};

struct HybridEstimate {
  int32_t tile_ctas = 0;
  double tile_us = 0;    // the tiles' finish
  double decode_us = 0;  // the small tiles'
};

// The estimate for one split (tile_ctas in [1, num_sms - 1]).
HybridEstimate estimate_hybrid_split(const meta::AttentionWorkList& list, const HybridShape& shape, int32_t tile_ctas,
                                     const HybridRates& rates = {});

// The split with the earliest estimated finish; ties to more tile SMs. Preconditions: the list
// was built with small_tiles_last_rows, has tasks of both kinds, and shape.num_sms >= 2.
int32_t hybrid_tile_ctas(const meta::AttentionWorkList& list, const HybridShape& shape,
                         const HybridRates& rates = {});

}  // namespace xy::cuda
