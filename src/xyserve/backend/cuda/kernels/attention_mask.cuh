// Masking rules shared by the attention kernels (kernels.h: none, causal, window, tree): the
// position range a tile can see and tree visibility.
#pragma once

#include <climits>
#include <cstdint>

namespace xy::cuda::attn {

// The lowest and highest position of a tile's `count` query tokens (positions[0, count)), reduced
// by one warp; every lane gets both. [lo, hi] bounds the keys any row of the tile can see under a
// causal or window mask.
struct PositionRange {
  int32_t lo, hi;
};
__device__ __forceinline__ PositionRange tile_positions(const int32_t* positions, int32_t count, int lane) {
  int32_t lo = INT_MAX, hi = INT_MIN;
  for (int j = lane; j < count; j += 32) {
    lo = min(lo, positions[j]);
    hi = max(hi, positions[j]);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  return {lo, hi};
}

// Draft trees: row j (request-local new-row index) sees tree row i iff i is j or one of its
// ancestors (parents[j] < j; the root's parent is below every row).
__device__ __forceinline__ bool tree_visible(const int32_t* parents, int32_t i, int32_t j) {
  while (j > i) j = parents[j];
  return j == i;
}

}  // namespace xy::cuda::attn
