#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/reduce.cuh"

namespace xy::cuda {
namespace {

// One block per output row. The residual row is read twice (sum of squares, then scale): the
// second read hits L1/L2, and fp32 residuals keep the stream as exact as the CPU reference's.
//
// Programmatic dependent launch (CUDA programming guide): the GEMM that follows a norm may be
// launched with PDL (GemmArgs::pdl) and stream its weights while this kernel runs, so every
// block lets dependents launch as soon as it starts; they still wait for this grid's completion
// before reading `out`. The grid-dependency wait makes the kernel itself safe to launch with
// PDL (it reads what the previous kernel wrote only after it); launched plainly it is a no-op.
__global__ void add_rms_norm_kernel(float* residual, const bf16* delta, const bf16* weight,
                                    const int32_t* rows, int64_t hidden, float eps, bf16* out) {
  cudaTriggerProgrammaticLaunchCompletion();
  cudaGridDependencySynchronize();
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const int64_t r = rows ? rows[i] : i;
  float* x = residual + r * hidden;
  float sum_sq = 0.0f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    float v = x[j];
    if (delta) {
      v += __bfloat162float(delta[r * hidden + j]);
      x[j] = v;
    }
    sum_sq += v * v;
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / float(hidden) + eps);
  bf16* y = out + i * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
    y[j] = __float2bfloat16(x[j] * inv_rms * __bfloat162float(weight[j]));
}

}  // namespace

void launch_add_rms_norm(float* residual, const bf16* delta, const bf16* weight, const int32_t* rows,
                         int32_t num_rows, int64_t hidden, float eps, bf16* out,
                         cudaStream_t stream) {
  if (num_rows == 0) return;
  add_rms_norm_kernel<<<num_rows, 256, 0, stream>>>(residual, delta, weight, rows, hidden, eps, out);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
