#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"

namespace xy::cuda {
namespace {

// One block per row; threads stride over the hidden dimension. Lets the kernel that follows
// start early and is itself safe to launch with PDL, as add_rms_norm_kernel (rms_norm.cu)
// explains.
__global__ void embedding_kernel(const bf16* table, int64_t hidden, const int32_t* ids, float* out) {
  cudaTriggerProgrammaticLaunchCompletion();
  cudaGridDependencySynchronize();
  const int64_t row = blockIdx.x;
  const bf16* src = table + int64_t(ids[row]) * hidden;
  float* dst = out + row * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = __bfloat162float(src[j]);
}

}  // namespace

void launch_embedding(const bf16* table, int64_t hidden, const int32_t* ids, int32_t m, float* out,
                      cudaStream_t stream) {
  if (m == 0) return;
  embedding_kernel<<<m, 256, 0, stream>>>(table, hidden, ids, out);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
