// What cuBLASLt's heuristic picks (gemm_bench --lt-algos): its first algorithm for a GEMM shape,
// asked as the bench's cuBLASLt baseline asks, and the fields of that algorithm's configuration
// as text (ids named by cublaslt_names.h).
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <optional>
#include <string>

#include "bench/cuda/cublaslt_names.h"
#include "bench/cuda/gemm_util.cuh"

namespace xy::bench {

// One attribute of an algorithm's configuration, whatever its width in this cuBLASLt (int32_t,
// uint32_t or uint16_t: asked first with size 0); nullopt where the library refuses it.
std::optional<int64_t> lt_config_value(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  size_t size = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, nullptr, 0, &size) != CUBLAS_STATUS_SUCCESS) {
    return std::nullopt;
  }
  size_t written = 0;
  if (size == 2) {
    uint16_t v = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &written) == CUBLAS_STATUS_SUCCESS) return v;
  } else if (size == 4) {  // int32_t (ID, SPLITK_NUM) or uint32_t with small values (the others)
    int32_t v = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &written) == CUBLAS_STATUS_SUCCESS) return v;
  } else if (size == 8) {
    int64_t v = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &written) == CUBLAS_STATUS_SUCCESS) return v;
  }
  return std::nullopt;
}

std::string lt_config_text(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr,
                           std::string (*name)(int64_t) = nullptr) {
  const std::optional<int64_t> v = lt_config_value(algo, attr);
  if (!v) return "-";
  return name != nullptr ? name(*v) : std::to_string(*v);
}

// cuBLASLt's heuristic for y[m, n] = x[m, k] · W[n, k]ᵀ, asked exactly as xy::bench::CublasLtGemm
// (gemm_util.cuh) asks it for the sweep's baseline: fp32 compute and scale, A = W (op T), B = x
// (op N), bf16 C = D, at most 32 MiB of workspace, one result (its first algorithm).
class LtHeuristic {
 public:
  LtHeuristic() {
    XY_CUBLAS_CHECK(cublasLtCreate(&handle_));
    XY_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    XY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
    XY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
    XY_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_));
    const size_t ws = kWorkspaceBytes;
    XY_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref_, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  }
  ~LtHeuristic() {
    cublasLtMatmulPreferenceDestroy(pref_);
    cublasLtMatmulDescDestroy(desc_);
    cublasLtDestroy(handle_);
  }
  LtHeuristic(const LtHeuristic&) = delete;
  LtHeuristic& operator=(const LtHeuristic&) = delete;

  // The first result; nullopt when the heuristic has none.
  std::optional<cublasLtMatmulHeuristicResult_t> first(int m, int n, int k) {
    struct Layouts {
      cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
      ~Layouts() {
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (c) cublasLtMatrixLayoutDestroy(c);
      }
    } l;
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.a, CUDA_R_16BF, k, n, k));  // W: [k, n] column-major
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.b, CUDA_R_16BF, k, m, k));  // x: [k, m]
    XY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.c, CUDA_R_16BF, n, m, n));  // y: [n, m]
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    XY_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, l.a, l.b, l.c, l.c, pref_, 1, &result, &found));
    if (found == 0) return std::nullopt;
    return result;
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // CublasLtGemm's
  cublasLtHandle_t handle_{};
  cublasLtMatmulDesc_t desc_{};
  cublasLtMatmulPreference_t pref_{};
};

}  // namespace xy::bench
