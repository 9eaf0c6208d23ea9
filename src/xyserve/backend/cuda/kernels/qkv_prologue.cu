#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/reduce.cuh"

namespace xy::cuda {
namespace {

constexpr int kMaxHalfDim = 256;  // head_dim up to 512

// One block per row, one warp per head (q heads, then k heads, then v heads). The row's cos and
// sin are computed once, in double as the CPU backend does (ops.cpp), into shared memory.
__global__ void qkv_prologue_kernel(QkvPrologueArgs a) {
  __shared__ float cos_s[kMaxHalfDim], sin_s[kMaxHalfDim];
  const int32_t row = blockIdx.x;
  const int32_t hd = a.head_dim, half = hd / 2;
  const int32_t q_dim = a.num_heads * hd, kv_dim = a.num_kv_heads * hd;
  const int64_t stride = q_dim + 2 * kv_dim;
  const double pos = double(a.positions[row]);
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    double s, c;
    sincos(pos * a.inv_freq[j], &s, &c);
    cos_s[j] = float(c);
    sin_s[j] = float(s);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int64_t slot = a.kv_slots[row];
  bf16* x_row = a.qkv + int64_t(row) * stride;
  for (int32_t h = warp; h < a.num_heads + 2 * a.num_kv_heads; h += num_warps) {
    const bool is_q = h < a.num_heads, is_v = h >= a.num_heads + a.num_kv_heads;
    bf16* x = x_row + int64_t(h) * hd;
    const bf16* bias = a.bias ? a.bias + int64_t(h) * hd : nullptr;
    bf16* dst = nullptr;
    if (!is_q) {
      const int32_t kvh = is_v ? h - a.num_heads - a.num_kv_heads : h - a.num_heads;
      dst = (is_v ? a.v_cache : a.k_cache) + (slot * a.num_kv_heads + kvh) * hd;
    }
    if (is_v) {
      for (int j = lane; j < hd; j += 32) {
        float v = __bfloat162float(x[j]);
        if (bias) v = __bfloat162float(__float2bfloat16(v + __bfloat162float(bias[j])));
        dst[j] = __float2bfloat16(v);
      }
      continue;
    }
    // Pairs (j, j + half) per lane; values kept in registers across bias, norm and rotation.
    constexpr int kPairs = kMaxHalfDim / 32;
    float x1[kPairs], x2[kPairs];
    float sum_sq = 0.0f;
#pragma unroll
    for (int t = 0; t < kPairs; ++t) {
      const int j = lane + 32 * t;
      x1[t] = x2[t] = 0.0f;
      if (j < half) {
        x1[t] = __bfloat162float(x[j]);
        x2[t] = __bfloat162float(x[j + half]);
        if (bias) {  // the GEMM's output is bf16; the bias is added to it, then rounded
          x1[t] = __bfloat162float(__float2bfloat16(x1[t] + __bfloat162float(bias[j])));
          x2[t] = __bfloat162float(__float2bfloat16(x2[t] + __bfloat162float(bias[j + half])));
        }
        sum_sq += x1[t] * x1[t] + x2[t] * x2[t];
      }
    }
    if (a.q_norm) {
      const bf16* w = is_q ? a.q_norm : a.k_norm;
      const float inv_rms = rsqrtf(warp_sum(sum_sq) / float(hd) + a.eps);
#pragma unroll
      for (int t = 0; t < kPairs; ++t) {
        const int j = lane + 32 * t;
        if (j < half) {
          x1[t] = x1[t] * inv_rms * __bfloat162float(w[j]);
          x2[t] = x2[t] * inv_rms * __bfloat162float(w[j + half]);
        }
      }
    }
    bf16* out = is_q ? x : dst;
#pragma unroll
    for (int t = 0; t < kPairs; ++t) {
      const int j = lane + 32 * t;
      if (j < half) {
        const float c = cos_s[j], s = sin_s[j];
        out[j] = __float2bfloat16(x1[t] * c - x2[t] * s);
        out[j + half] = __float2bfloat16(x2[t] * c + x1[t] * s);
      }
    }
  }
}

}  // namespace

void launch_qkv_prologue(const QkvPrologueArgs& args, cudaStream_t stream) {
  if (args.m == 0) return;
  if (args.head_dim % 2 != 0 || args.head_dim / 2 > kMaxHalfDim)
    throw InvalidArgument(cat("qkv prologue: unsupported head_dim ", args.head_dim,
                              " (even, at most ", 2 * kMaxHalfDim, ")"));
  qkv_prologue_kernel<<<args.m, 256, 0, stream>>>(args);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
