// Small helpers the CUDA benchmark programs share.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"

namespace xy::bench {

// "1,8,32" -> {1, 8, 32}.
inline std::vector<int> parse_int_list(const std::string& s) {
  std::vector<int> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    out.push_back(std::stoi(s.substr(i, j - i)));
    i = j + 1;
  }
  return out;
}

// Device-to-device copy bandwidth, bytes read + written per second (METHOD.md's ceiling).
inline double copy_bandwidth() {
  const size_t bytes = size_t(2) << 30;
  void *a = nullptr, *b = nullptr;
  XY_CUDA_CHECK(cudaMalloc(&a, bytes));
  XY_CUDA_CHECK(cudaMalloc(&b, bytes));
  XY_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  XY_CUDA_CHECK(cudaEventCreate(&e0));
  XY_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    XY_CUDA_CHECK(cudaEventRecord(e0));
    XY_CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    XY_CUDA_CHECK(cudaEventRecord(e1));
    XY_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  XY_CUDA_CHECK(cudaFree(a));
  XY_CUDA_CHECK(cudaFree(b));
  return 2.0 * double(bytes) / (double(ms[ms.size() / 2]) * 1e-3);
}

}  // namespace xy::bench
