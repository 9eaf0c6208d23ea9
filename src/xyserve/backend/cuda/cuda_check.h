// Every CUDA call and launch is checked, with file, line and expression (STYLE.md habit 6).
#pragma once

#include <cuda_runtime.h>

#include "xyserve/common/error.h"

namespace xy::cuda {

class CudaError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* file, int line,
                                          const char* expr) {
  throw CudaError(cat(file, ":", line, ": ", expr, ": ", cudaGetErrorName(err), " (",
                      cudaGetErrorString(err), ")"));
}

}  // namespace xy::cuda

#define XY_CUDA_CHECK(expr)                                                            \
  do {                                                                                 \
    cudaError_t xy_err_ = (expr);                                                      \
    if (xy_err_ != cudaSuccess) ::xy::cuda::throw_cuda_error(xy_err_, __FILE__, __LINE__, #expr); \
  } while (0)

#define XY_CUDA_CHECK_LAUNCH() XY_CUDA_CHECK(cudaGetLastError())
