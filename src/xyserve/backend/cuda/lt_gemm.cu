#include "xyserve/backend/cuda/lt_gemm.h"

#include <optional>

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
  clear_plans();
  cublasLtDestroy(handle_);
}

void LtGemm::clear_plans() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  plans_.clear();
}

void LtGemm::set_batch_invariant(bool on, int max_m) {
  if (on == batch_invariant_ && max_m == invariant_max_m_) return;
  if (max_m < 1) throw InvalidArgument(cat("cuBLASLt batch-invariant mode: max_m ", max_m));
  clear_plans();
  invariant_algos_.clear();
  batch_invariant_ = on;
  invariant_max_m_ = max_m;
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
  if (batch_invariant_) {
    p.algo = invariant_algo(out, n, k, p, m);
    return plans_.emplace(key, p).first->second;
  }
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

// The one algorithm of (out, n, k) in batch-invariant mode: among the heuristic's choices at
// M = max_m with split-K forced to 1 and no split-K reduction, the first that cuBLASLt accepts
// at both M = 1 and M = max_m, preferring one with no workspace (a workspace is what stream-K
// fix-ups use). Cached per shape, so every M of the shape runs the same algorithm.
cublasLtMatmulAlgo_t LtGemm::invariant_algo(GemmOut out, int n, int k, const Plan& shape_m, int m) {
  const auto key = std::make_tuple(int(out), n, k);
  auto it = invariant_algos_.find(key);
  if (it == invariant_algos_.end()) {
    const cudaDataType_t y_type = out == GemmOut::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
    struct Layouts {
      cublasLtMatrixLayout_t b = nullptr, c = nullptr;
      ~Layouts() {
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (c) cublasLtMatrixLayoutDestroy(c);
      }
    } one, top;
    check_lt(cublasLtMatrixLayoutCreate(&one.b, CUDA_R_16BF, k, 1, k), "layout B", 1, n, k);
    check_lt(cublasLtMatrixLayoutCreate(&one.c, y_type, n, 1, n), "layout C", 1, n, k);
    check_lt(cublasLtMatrixLayoutCreate(&top.b, CUDA_R_16BF, k, invariant_max_m_, k), "layout B", invariant_max_m_, n, k);
    check_lt(cublasLtMatrixLayoutCreate(&top.c, y_type, n, invariant_max_m_, n), "layout C", invariant_max_m_, n, k);
    constexpr int kWanted = 32;
    cublasLtMatmulHeuristicResult_t results[kWanted]{};
    int found = 0;
    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference", invariant_max_m_, n, k);
    const size_t ws = workspace_.bytes();
    const uint32_t no_reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &no_reduction,
                                         sizeof(no_reduction));
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, shape_m.desc, shape_m.a, top.b, top.c, top.c,
                                                             pref, kWanted, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    check_lt(st, "batch-invariant heuristic", invariant_max_m_, n, k);
    std::optional<cublasLtMatmulAlgo_t> chosen, with_workspace;
    for (int i = 0; i < found && !chosen; ++i) {
      cublasLtMatmulAlgo_t algo = results[i].algo;
      const uint32_t split = 1;
      if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split)) !=
          CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t at_one{}, at_top{};
      if (cublasLtMatmulAlgoCheck(handle_, shape_m.desc, shape_m.a, one.b, one.c, one.c, &algo, &at_one) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoCheck(handle_, shape_m.desc, shape_m.a, top.b, top.c, top.c, &algo, &at_top) !=
              CUBLAS_STATUS_SUCCESS ||
          at_one.workspaceSize > ws || at_top.workspaceSize > ws)
        continue;
      if (at_one.workspaceSize == 0 && at_top.workspaceSize == 0) {
        chosen = algo;
      } else if (!with_workspace) {
        with_workspace = algo;
      }
    }
    if (!chosen) chosen = with_workspace;
    if (!chosen)
      check_lt(CUBLAS_STATUS_NOT_SUPPORTED, "batch-invariant heuristic (no algorithm without split-K for M = 1 and the largest M)",
               m, n, k);
    it = invariant_algos_.emplace(key, *chosen).first;
  }
  if (m > invariant_max_m_)
    throw InvalidArgument(cat("cuBLASLt batch-invariant mode: M ", m, " exceeds the largest M ", invariant_max_m_,
                              " its algorithms were chosen for"));
  return it->second;
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
