#include "xyserve/backend/cuda/vocab_parallel.h"

#include <algorithm>

#include "xyserve/backend/cuda/cuda_check.h"

namespace xy::cuda {
namespace {

// One block per row, as embedding_kernel (kernels/embedding.cu). Launched plainly: the op
// after it is the all-reduce that completes it, never a PDL launch.
__global__ void vocab_parallel_embedding_kernel(const bf16* table, int64_t begin, int64_t rows, int64_t hidden,
                                                const int32_t* ids, float* out) {
  const int64_t i = blockIdx.x;
  const int64_t row = int64_t(ids[i]) - begin;
  float* dst = out + i * hidden;
  if (row >= 0 && row < rows) {
    const bf16* src = table + row * hidden;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = __bfloat162float(src[j]);
  } else {
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = 0.0f;
  }
}

}  // namespace

void launch_vocab_parallel_embedding(const bf16* table, int64_t begin, int64_t rows, int64_t hidden,
                                     const int32_t* ids, int32_t m, float* out, cudaStream_t stream) {
  if (m == 0) return;
  vocab_parallel_embedding_kernel<<<m, 256, 0, stream>>>(table, begin, rows, hidden, ids, out);
  XY_CUDA_CHECK_LAUNCH();
}

void assemble_gathered_logits(const float* gathered, int32_t size, int32_t rows, int64_t per_rank,
                              int64_t vocab, float* logits, cudaStream_t stream) {
  if (rows == 0) return;
  for (int32_t r = 0; r < size; ++r) {
    const int64_t begin = int64_t(r) * per_rank;
    const int64_t n = std::clamp<int64_t>(vocab - begin, 0, per_rank);
    if (n == 0) continue;  // a rank of padding rows only
    XY_CUDA_CHECK(cudaMemcpy2DAsync(logits + begin, size_t(vocab) * sizeof(float),
                                    gathered + size_t(r) * size_t(rows) * size_t(per_rank),
                                    size_t(per_rank) * sizeof(float), size_t(n) * sizeof(float), size_t(rows),
                                    cudaMemcpyDeviceToDevice, stream));
  }
}

}  // namespace xy::cuda
