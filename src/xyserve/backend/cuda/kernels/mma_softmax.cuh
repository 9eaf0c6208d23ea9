// The online-softmax step of the mma.sync attention kernels (meta_attention.cu, decode_attention.cu),
// on one warp's m16 slab of query rows after its scores for a block of keys are in registers.
// Fragment layout of mma.m16n8k16 (PTX 9.7.13.4.8): lane i holds rows i / 4 (h = 0) and i / 4 + 8
// (h = 1); of each n8 score tile, elements 2h and 2h + 1 belong to row h, and the other three lanes
// of the quad hold the row's other columns.
#pragma once

#include <cmath>

namespace xy::cuda::attn {

// s: the block's scores in log2 units (-inf where masked), replaced by p = exp2(s - new max);
// m: running row max (log2 units, -inf before any key); l: the lane's partial row sum (the quad's
// four are added at the end); o: the O accumulators, rescaled to the new max. Row max over the
// quad by shuffles; a row that has seen no key keeps p = 0 (max -inf is treated as 0).
template <int kTiles, int kOutTiles>
__device__ __forceinline__ void online_softmax_step(float (&s)[kTiles][4], float (&m)[2], float (&l)[2],
                                                    float (&o)[kOutTiles][4]) {
  float scale_old[2], m_use[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx);
    m_use[h] = m_new == -INFINITY ? 0.0f : m_new;
    scale_old[h] = exp2f(m[h] - m_use[h]);
    m[h] = m_new;
  }
  float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp2f(s[nt][e] - m_use[e / 2]);
      row_sum[e / 2] += s[nt][e];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * scale_old[h] + row_sum[h];
#pragma unroll
  for (int i = 0; i < kOutTiles; ++i) {
    o[i][0] *= scale_old[0];
    o[i][1] *= scale_old[0];
    o[i][2] *= scale_old[1];
    o[i][3] *= scale_old[1];
  }
}

}  // namespace xy::cuda::attn
