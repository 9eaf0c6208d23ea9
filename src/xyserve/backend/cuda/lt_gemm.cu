#include "xyserve/backend/cuda/lt_gemm.h"

#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

void check_lt(cublasStatus_t status, const char* what, int m, int n, int k) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw CudaError(cat("cuBLASLt ", what, " failed (status ", int(status), ") for y[", m, ", ", n,
                        "] = x[", m, ", ", k, "] · W[", n, ", ", k, "]ᵀ"));
}

}  // namespace

LtGemm::LtGemm(size_t workspace_bytes) : workspace_(workspace_bytes) {
  check_lt(cublasLtCreate(&handle_), "create", 0, 0, 0);
}

LtGemm::~LtGemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cublasLtDestroy(handle_);
}

// Row-major y[m, n] is column-major yᵀ[n, m] = W · xᵀ: A = W (stored column-major [k, n], op T),
// B = x (column-major [k, m], op N), C = D = y (column-major [n, m]).
const LtGemm::Plan& LtGemm::plan_for(GemmOut out, int m, int n, int k) {
  const auto key = std::make_tuple(int(out), m, n, k);
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  Plan p;
  check_lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc", m, n, k);
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)),
           "transa", m, n, k);
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)),
           "transb", m, n, k);
  const cudaDataType_t y_type = out == GemmOut::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  check_lt(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, n, k), "layout A", m, n, k);
  check_lt(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, m, k), "layout B", m, n, k);
  check_lt(cublasLtMatrixLayoutCreate(&p.c, y_type, n, m, n), "layout C", m, n, k);
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference", m, n, k);
  const size_t ws = workspace_.bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  check_lt(st, "heuristic", m, n, k);
  if (found == 0) check_lt(CUBLAS_STATUS_NOT_SUPPORTED, "heuristic (no algorithm)", m, n, k);
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void LtGemm::run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, GemmOut out, int m, int n,
                 int k, cudaStream_t stream) {
  if (m == 0) return;
  const Plan& p = plan_for(out, m, n, k);
  const float alpha = 1.0f, beta = 0.0f;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                          workspace_.get(), workspace_.bytes(), stream),
           "matmul", m, n, k);
}

}  // namespace xy::cuda
