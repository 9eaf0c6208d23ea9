// y = x · Wᵀ through cuBLASLt: bf16 operands, fp32 accumulation, bf16 or fp32 output. The
// baseline that SmoothGEMM (gemm.h) is measured against. Descriptors and the heuristic's choice
// are cached per (m, n, k, output type), so a step's GEMMs cost no planning after warm-up.
//
// Batch-invariant mode (--deterministic): the heuristic picks a different kernel, tile and
// split-K for different M, so a row's result changes with the rows beside it. In this mode each
// (n, k, output type) gets ONE algorithm with split-K 1, chosen once so that it runs every M up
// to the largest the caller will use, and every M runs it: a row's dot products then see the
// same K order whatever M is (tests/cuda/lt_gemm_invariance_test.cpp checks it bitwise).
//
// Threading: one LtGemm per stream user; not thread-safe (the cache is unguarded).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "xyserve/backend/cuda/device_buffer.h"

namespace xy::cuda {

enum class GemmOut { kBF16, kF32 };

class LtGemm {
 public:
  explicit LtGemm(size_t workspace_bytes = size_t(32) << 20);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // y[m, n] = x[m, k] · w[n, k]ᵀ, all row-major. Throws CudaError naming the shape when
  // cuBLASLt has no algorithm for it or the call fails.
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, GemmOut out, int m, int n, int k,
           cudaStream_t stream);

  // Call before the first run(); drops cached plans and algorithms. max_m: the largest M that
  // run() will be given in this mode (a larger one throws InvalidArgument).
  void set_batch_invariant(bool on, int max_m = 8192);
  bool batch_invariant() const { return batch_invariant_; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan_for(GemmOut out, int m, int n, int k);
  cublasLtMatmulAlgo_t invariant_algo(GemmOut out, int n, int k, const Plan& shape_m, int m);
  void clear_plans();

  bool batch_invariant_ = false;
  int invariant_max_m_ = 8192;

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
  std::map<std::tuple<int, int, int, int>, Plan> plans_;
  std::map<std::tuple<int, int, int>, cublasLtMatmulAlgo_t> invariant_algos_;  // (out, n, k)
};

}  // namespace xy::cuda
