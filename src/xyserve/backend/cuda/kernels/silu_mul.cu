#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"

namespace xy::cuda {
namespace {

// One block row per token row; grid-stride over the intermediate dimension. Lets the down GEMM
// that follows start early and is itself safe to launch with PDL, as add_rms_norm_kernel
// (rms_norm.cu) explains.
__global__ void silu_mul_kernel(const bf16* gate_up, int64_t inter, bf16* out) {
  cudaTriggerProgrammaticLaunchCompletion();
  cudaGridDependencySynchronize();
  const int64_t row = blockIdx.y;
  const bf16* gate = gate_up + row * 2 * inter;
  const bf16* up = gate + inter;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < inter;
       j += int64_t(gridDim.x) * blockDim.x) {
    const float g = __bfloat162float(gate[j]);
    out[row * inter + j] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(up[j]));
  }
}

}  // namespace

void launch_silu_mul(const bf16* gate_up, int32_t m, int64_t inter, bf16* out, cudaStream_t stream) {
  if (m == 0) return;
  const unsigned blocks_x = unsigned(std::min<int64_t>((inter + 255) / 256, 64));
  silu_mul_kernel<<<dim3(blocks_x, unsigned(m)), 256, 0, stream>>>(gate_up, inter, out);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
