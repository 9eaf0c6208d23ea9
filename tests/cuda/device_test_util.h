// Host/device helpers for the GPU tests: random bf16 inputs, copies both ways, and NaN poisoning
// of outputs before a kernel runs (so an element it fails to write is caught).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/common/dtype.h"

namespace xy::testing {

// Random bf16 values (as bits) in [-scale, scale).
inline std::vector<uint16_t> random_bf16(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<uint16_t> out(n);
  for (auto& v : out) v = f32_to_bf16(u(rng));
  return out;
}

inline std::vector<float> to_f32(const std::vector<uint16_t>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); ++i) f[i] = bf16_to_f32(b[i]);
  return f;
}

template <typename T>
cuda::DeviceBuffer<T> to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer<T> d(std::max<size_t>(host.size(), 1));
  XY_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer<T>& d, size_t n) {
  std::vector<T> h(n);
  XY_CUDA_CHECK(cudaDeviceSynchronize());
  XY_CUDA_CHECK(cudaMemcpy(h.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

template <typename T>
void poison(cuda::DeviceBuffer<T>& d) {
  XY_CUDA_CHECK(cudaMemset(d.get(), 0xff, d.bytes()));  // all-ones bits: NaN in bf16 and fp32
}

// A measured line a GPU test reports rather than asserts: printed, and appended to the file
// $XY_GPU_REPORT names (scripts/gpu-check brings it back), since ctest shows a passing test's
// output nowhere.
inline void gpu_report(const std::string& text) {
  std::printf("%s\n", text.c_str());
  if (const char* path = std::getenv("XY_GPU_REPORT")) std::ofstream(path, std::ios::app) << text << "\n";
}

}  // namespace xy::testing
