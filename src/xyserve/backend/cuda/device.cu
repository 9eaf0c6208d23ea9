#include "xyserve/backend/cuda/device.h"

#include <cuda_bf16.h>

#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"

namespace xy::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

DeviceInfo device_info(int index) {
  cudaDeviceProp prop{};
  XY_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  DeviceInfo info;
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.num_sms = prop.multiProcessorCount;
  info.total_memory = prop.totalGlobalMem;
  XY_CUDA_CHECK(cudaSetDevice(index));
  XY_CUDA_CHECK(cudaMemGetInfo(&info.free_memory, &info.total_memory));
  return info;
}

namespace {
__global__ void bf16_to_f32_kernel(const __nv_bfloat16* src, float* dst, size_t n) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __bfloat162float(src[i]);
}
}  // namespace

void bf16_to_f32_on_device(const uint16_t* host_src, float* host_dst, size_t n) {
  __nv_bfloat16* d_src = nullptr;
  float* d_dst = nullptr;
  XY_CUDA_CHECK(cudaMalloc(&d_src, n * sizeof(uint16_t)));
  XY_CUDA_CHECK(cudaMalloc(&d_dst, n * sizeof(float)));
  XY_CUDA_CHECK(cudaMemcpy(d_src, host_src, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
  const int threads = 256;
  bf16_to_f32_kernel<<<unsigned((n + threads - 1) / threads), threads>>>(d_src, d_dst, n);
  XY_CUDA_CHECK_LAUNCH();
  XY_CUDA_CHECK(cudaMemcpy(host_dst, d_dst, n * sizeof(float), cudaMemcpyDeviceToHost));
  XY_CUDA_CHECK(cudaFree(d_src));
  XY_CUDA_CHECK(cudaFree(d_dst));
}

}  // namespace xy::cuda
