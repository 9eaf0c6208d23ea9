// Masking rules shared by the attention kernels (kernels.h: none, causal, window, tree).
#pragma once

#include <cstdint>

namespace xy::cuda::attn {

// Draft trees: row j (request-local new-row index) sees tree row i iff i is j or one of its
// ancestors (parents[j] < j; the root's parent is below every row).
__device__ __forceinline__ bool tree_visible(const int32_t* parents, int32_t i, int32_t j) {
  while (j > i) j = parents[j];
  return j == i;
}

}  // namespace xy::cuda::attn
