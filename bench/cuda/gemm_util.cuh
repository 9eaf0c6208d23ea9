// Helpers shared by the GEMM checker and benchmark: device buffers, random bf16 fill, an fp32
// reference GEMM written independently of the kernels under test, and cuBLASLt as the baseline.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "xyserve/backend/cuda/cuda_check.h"

namespace xy::bench {

#define XY_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                     \
    cublasStatus_t st_ = (expr);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                    \
      std::fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #expr,     \
                   static_cast<int>(st_));                                                 \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

// Owning device allocation (RAII).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { XY_CUDA_CHECK(cudaMalloc(&ptr_, bytes)); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

__device__ __forceinline__ uint32_t hash32(uint64_t v) {
  v ^= v >> 33;
  v *= 0xff51afd7ed558ccdULL;
  v ^= v >> 33;
  v *= 0xc4ceb9fe1a85ec53ULL;
  v ^= v >> 33;
  return static_cast<uint32_t>(v);
}

// Uniform in [-scale, scale), a different stream of values for every seed.
__global__ void fill_uniform_kernel(__nv_bfloat16* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const float u = hash32(seed * 0x9E3779B97F4A7C15ULL + i) * (1.0f / 4294967296.0f);
    p[i] = __float2bfloat16((2.f * u - 1.f) * scale);
  }
}
inline void fill_uniform(__nv_bfloat16* p, size_t n, uint64_t seed, float scale = 1.f) {
  fill_uniform_kernel<<<1024, 256>>>(p, n, seed, scale);
  XY_CUDA_CHECK_LAUNCH();
}

// Poison: every bf16 element becomes 0x7F7F, a NaN (exponent all ones, mantissa non-zero), so an
// output the kernel failed to write can never pass for a value. Synchronous: cudaMemset may
// return before it is done, and the benchmark launches on a non-blocking stream.
constexpr uint16_t kPoisonBits = 0x7F7F;
inline void poison(void* p, size_t num_bf16) {
  XY_CUDA_CHECK(cudaMemset(p, 0x7F, num_bf16 * 2));
  XY_CUDA_CHECK(cudaDeviceSynchronize());
}

// Reference: ref[m][n] = Σ_k x[m][k]·w[n][k] in fp32, one warp per output, lanes over k.
__global__ void reference_gemm_kernel(const __nv_bfloat16* x, const __nv_bfloat16* w,
                                      float* ref, int m, int n, int k) {
  const int64_t out = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (out >= int64_t{m} * n) return;
  const int row = static_cast<int>(out / n), col = static_cast<int>(out % n);
  float sum = 0.f;
  for (int i = lane; i < k; i += 32) {
    sum += __bfloat162float(x[int64_t{row} * k + i]) * __bfloat162float(w[int64_t{col} * k + i]);
  }
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) ref[out] = sum;
}
inline void reference_gemm(const __nv_bfloat16* x, const __nv_bfloat16* w, float* ref, int m,
                           int n, int k) {
  const int64_t threads = int64_t{m} * n * 32;
  reference_gemm_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256>>>(x, w, ref, m, n, k);
  XY_CUDA_CHECK_LAUNCH();
}

// cuBLASLt y[M, N] = x[M, K] · W[N, K]ᵀ with its heuristic's first algorithm, fp32 compute.
// In cuBLAS's column-major terms this is yᵀ[N, M] = Wᵀᵀ · xᵀ: A = W (op T), B = x (op N).
class CublasLtGemm {
 public:
  CublasLtGemm() : workspace_(kWorkspaceBytes) { XY_CUBLAS_CHECK(cublasLtCreate(&handle_)); }
  ~CublasLtGemm() {
    for (auto& [key, plan] : plans_) {
      cublasLtMatmulDescDestroy(plan.desc);
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.c);
    }
    cublasLtDestroy(handle_);
  }
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // out_type: CUDA_R_16BF (the baseline) or CUDA_R_32F (fp32 output).
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, int m, int n, int k,
           cudaDataType_t out_type, cudaStream_t stream) {
    const Plan& p = plan(m, n, k, out_type);
    const float alpha = 1.f, beta = 0.f;
    XY_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                   &p.algo, workspace_.as<void>(), kWorkspaceBytes, stream));
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  struct Plan {
    cublasLtMatmulDesc_t desc{};
    cublasLtMatrixLayout_t a{}, b{}, c{};
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(int m, int n, int k, cudaDataType_t out_type) {
    const auto key = std::make_tuple(m, n, k, static_cast<int>(out_type));
    if (auto it = plans_.find(key); it != plans_.end()) return it->second;
    Plan p;
    XY_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    XY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
    XY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, n, k));
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, m, k));
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out_type, n, m, n));
    cublasLtMatmulPreference_t pref;
    XY_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    XY_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    XY_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      std::fprintf(stderr, "cublasLt: no algorithm for m=%d n=%d k=%d\n", m, n, k);
      std::exit(2);
    }
    p.algo = result.algo;
    return plans_.emplace(key, p).first->second;
  }

  cublasLtHandle_t handle_{};
  DeviceBuffer workspace_;
  std::map<std::tuple<int, int, int, int>, Plan> plans_;
};

inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = uint32_t{bits} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace xy::bench
