#include "xyserve/backend/cuda/smooth_gemm.h"

#include <algorithm>
#include <charconv>

#include "xyserve/backend/cuda/device.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/common/log.h"

namespace xy::cuda {
namespace {

constexpr std::string_view kLtDefaultId = "cublaslt";
constexpr std::string_view kLtAlgoPrefix = "cublaslt:";

void check_lt(cublasStatus_t status, const char* what, int m, int n, int k) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw CudaError(cat("cuBLASLt ", what, " failed (status ", int(status), ") for y[", m, ", ", n,
                        "] = x[", m, ", ", k, "] · W[", n, ", ", k, "]ᵀ"));
}

// The operand layouts of y[m, n] = x[m, k] · W[n, k]ᵀ in cuBLASLt's column-major terms, as
// LtGemm sets them: A = W (column-major [k, n], op T), B = x ([k, m], op N), C = D = y ([n, m]).
// Initialised in place (no allocation), so a call can build them for its own m.
struct Layouts {
  cublasLtMatrixLayoutOpaque_t a{}, b{}, c{};
  Layouts(int m, int n, int k) {
    check_lt(cublasLtMatrixLayoutInit(&a, CUDA_R_16BF, uint64_t(k), uint64_t(n), k), "layout A", m, n, k);
    check_lt(cublasLtMatrixLayoutInit(&b, CUDA_R_16BF, uint64_t(k), uint64_t(m), k), "layout B", m, n, k);
    check_lt(cublasLtMatrixLayoutInit(&c, CUDA_R_16BF, uint64_t(n), uint64_t(m), n), "layout C", m, n, k);
  }
};

std::string known_candidates() {
  std::string names;
  for (GemmKernel kernel : all_gemm_kernels()) names += cat(gemm_kernel_name(kernel), ", ");
  return cat(names, kLtDefaultId, ", ", kLtAlgoPrefix, "<i> for i < ", kMaxLtHeuristicAlgos);
}

}  // namespace

std::optional<GemmCandidate> parse_gemm_candidate(std::string_view id) {
  GemmCandidate c;
  if (id == kLtDefaultId) {
    c.kind = GemmCandidate::Kind::kCublasLtDefault;
    return c;
  }
  if (id.starts_with(kLtAlgoPrefix)) {
    const std::string_view digits = id.substr(kLtAlgoPrefix.size());
    int index = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || index < 0 ||
        index >= kMaxLtHeuristicAlgos) {
      return std::nullopt;
    }
    c.kind = GemmCandidate::Kind::kCublasLtAlgo;
    c.lt_index = index;
    return c;
  }
  for (GemmKernel kernel : all_gemm_kernels()) {
    if (id == gemm_kernel_name(kernel)) {
      c.kind = GemmCandidate::Kind::kKernel;
      c.kernel = kernel;
      return c;
    }
  }
  return std::nullopt;
}

std::string gemm_candidate_id(const GemmCandidate& c) {
  switch (c.kind) {
    case GemmCandidate::Kind::kKernel: return gemm_kernel_name(c.kernel);
    case GemmCandidate::Kind::kCublasLtDefault: return std::string(kLtDefaultId);
    case GemmCandidate::Kind::kCublasLtAlgo: return cat(kLtAlgoPrefix, c.lt_index);
  }
  return "unknown";
}

// ---- LtAlgoGemm ----

LtAlgoGemm::LtAlgoGemm(size_t workspace_bytes) : workspace_(workspace_bytes) {
  check_lt(cublasLtCreate(&handle_), "create", 0, 0, 0);
  const cublasStatus_t st = cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cublasLtDestroy(handle_);
    check_lt(st, "desc", 0, 0, 0);
  }
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  const cublasStatus_t st_a = cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t));
  const cublasStatus_t st_b = cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n));
  if (st_a != CUBLAS_STATUS_SUCCESS || st_b != CUBLAS_STATUS_SUCCESS) {
    cublasLtMatmulDescDestroy(desc_);
    cublasLtDestroy(handle_);
    check_lt(st_a != CUBLAS_STATUS_SUCCESS ? st_a : st_b, "transpose attributes", 0, 0, 0);
  }
}

LtAlgoGemm::~LtAlgoGemm() {
  cublasLtMatmulDescDestroy(desc_);
  cublasLtDestroy(handle_);
}

std::vector<LtAlgoGemm::Algo> LtAlgoGemm::heuristic_algos(int m, int n, int k) {
  Layouts l(m, n, k);
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference", m, n, k);
  const size_t ws = workspace_.bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t results[kMaxLtHeuristicAlgos] = {};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, desc_, &l.a, &l.b, &l.c, &l.c, pref,
                                                           kMaxLtHeuristicAlgos, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  // NOT_SUPPORTED: no algorithm at all for this shape, an empty list rather than an error.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) return {};
  check_lt(st, "heuristic", m, n, k);
  std::vector<Algo> algos;
  for (int i = 0; i < found; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(Algo{results[i].algo});
  }
  return algos;
}

bool LtAlgoGemm::supports(const Algo& algo, int m, int n, int k) {
  Layouts l(m, n, k);
  cublasLtMatmulHeuristicResult_t result{};
  return cublasLtMatmulAlgoCheck(handle_, desc_, &l.a, &l.b, &l.c, &l.c, &algo.value, &result) ==
             CUBLAS_STATUS_SUCCESS &&
         result.workspaceSize <= workspace_.bytes();
}

void LtAlgoGemm::run(const Algo& algo, const __nv_bfloat16* x, const __nv_bfloat16* w,
                     __nv_bfloat16* y, int m, int n, int k, cudaStream_t stream) {
  Layouts l(m, n, k);
  const float alpha = 1.0f, beta = 0.0f;
  check_lt(cublasLtMatmul(handle_, desc_, &alpha, w, &l.a, x, &l.b, &beta, y, &l.c, y, &l.c, &algo.value,
                          workspace_.get(), workspace_.bytes(), stream),
           "matmul (algorithm chosen by index)", m, n, k);
}

// ---- SmoothGemm ----

SmoothGemm::SmoothGemm(const meta::GemmTable& table, int max_m) : max_m_(max_m) {
  if (max_m < 1) throw InvalidArgument(cat("SmoothGemm: max_m must be positive, found ", max_m));
  size_t workspace_need = 0;
  for (const meta::GemmShapeEntry& shape : table.shapes()) {
    ShapeRoutes routes{shape.n, shape.k, {}};
    int lower = 0;  // the previous bucket's max_m: this bucket serves (lower, max_m]
    for (const meta::GemmBucket& bucket : shape.buckets) {
      const std::string where = cat(table.source(), ": shape n=", shape.n, " k=", shape.k, ", bucket max_m=",
                                    bucket.max_m, ": candidate '", bucket.candidate, "'");
      const std::optional<GemmCandidate> candidate = parse_gemm_candidate(bucket.candidate);
      if (!candidate) throw InvalidArgument(cat(where, " is unknown; known: ", known_candidates()));
      Route route{bucket.max_m, *candidate, -1};
      // The M this bucket serves here; none when the bucket starts above max_m.
      const int first = lower + 1, last = std::min(bucket.max_m, max_m);
      if (candidate->kind == GemmCandidate::Kind::kKernel) {
        // At the largest M the bucket serves here: a kernel's limits on M are upper bounds.
        const char* reason = gemm_unsupported_reason(candidate->kernel, std::max(first, last), shape.n, shape.k);
        if (*reason != '\0') throw InvalidArgument(cat(where, " cannot run the shape: ", reason));
        // Every M of the bucket: the wgmma kernels' split count changes with M, so the largest
        // need is not always at the bucket's top.
        for (int m = first; m <= last; ++m) {
          workspace_need = std::max(workspace_need, gemm_workspace_bytes(candidate->kernel, m, shape.n, shape.k));
        }
      } else if (candidate->kind == GemmCandidate::Kind::kCublasLtAlgo) {
        // The tuner measured the algorithm listed at the bucket's upper M; it runs for every M.
        const std::vector<LtAlgoGemm::Algo> listed = lt_algo_gemm_.heuristic_algos(bucket.max_m, shape.n, shape.k);
        if (candidate->lt_index >= int(listed.size())) {
          throw InvalidArgument(cat(where, ": cuBLASLt's heuristic lists ", listed.size(),
                                    " algorithms at m=", bucket.max_m, " on this device"));
        }
        const LtAlgoGemm::Algo& algo = listed[size_t(candidate->lt_index)];
        // Checked at both ends of the bucket (every M would cost a cuBLASLt call per M at start);
        // a refusal in between would surface from run() as a CudaError naming the shape.
        for (int m : {first, last}) {
          if (first <= last && !lt_algo_gemm_.supports(algo, m, shape.n, shape.k)) {
            throw InvalidArgument(cat(where, ": cuBLASLt refuses the algorithm at m=", m));
          }
        }
        route.algo_slot = int(lt_algos_.size());
        lt_algos_.push_back(algo);
      }
      routes.routes.push_back(route);
      lower = bucket.max_m;
    }
    shapes_.push_back(std::move(routes));
  }
  if (workspace_need > 0) {
    workspace_.reset(workspace_need);
    // Synchronous, so that no stream (the backend's is non-blocking) sees it before it is zero.
    XY_CUDA_CHECK(cudaMemset(workspace_.get(), 0, workspace_need));
    XY_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

const SmoothGemm::Route* SmoothGemm::find(int m, int n, int k) const {
  for (const ShapeRoutes& s : shapes_) {
    if (s.n != n || s.k != k) continue;
    for (const Route& r : s.routes) {
      if (m <= r.max_m) return &r;
    }
    return nullptr;
  }
  return nullptr;
}

void SmoothGemm::set_batch_invariant(bool on) {
  batch_invariant_ = on;
  lt_default_.set_batch_invariant(on, max_m_);
}

std::string SmoothGemm::candidate_for(int m, int n, int k) const {
  const Route* r = m >= 1 && !batch_invariant_ ? find(m, n, k) : nullptr;
  return r ? gemm_candidate_id(r->candidate) : std::string(meta::kNoGemmCandidate);
}

void SmoothGemm::run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, GemmOut out, int m, int n,
                     int k, cudaStream_t stream, bool pdl) {
  if (m == 0) return;
  if (out == GemmOut::kF32 || batch_invariant_) {
    lt_default_.run(x, w, y, out, m, n, k, stream);
    return;
  }
  XY_CHECK(m > 0 && m <= max_m_, "SmoothGemm: m=", m, " outside [1, ", max_m_, "] (the workspace's bound)");
  const Route* route = find(m, n, k);
  if (route == nullptr || route->candidate.kind == GemmCandidate::Kind::kCublasLtDefault) {
    lt_default_.run(x, w, y, out, m, n, k, stream);
  } else if (route->candidate.kind == GemmCandidate::Kind::kKernel) {
    const GemmArgs args{x, w, static_cast<__nv_bfloat16*>(y), m, n, k, workspace_.get(), workspace_.bytes(), pdl};
    gemm_launch(route->candidate.kernel, args, stream);
  } else {
    lt_algo_gemm_.run(lt_algos_[size_t(route->algo_slot)], x, w, static_cast<__nv_bfloat16*>(y), m, n, k,
                      stream);
  }
}

meta::GemmTable find_gemm_table(const std::filesystem::path& model_dir,
                                const std::filesystem::path& explicit_path, int device) {
  const std::string device_name = device_info(device).name;
  meta::GemmTable table;
  if (!explicit_path.empty()) {
    table = meta::GemmTable::load(explicit_path);
  } else {
    const std::filesystem::path path = model_dir / meta::gemm_table_file_name(device_name);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      log_warning("no GEMM table ", path.string(), ": every GEMM runs on cuBLASLt; `xyserve tune --model ",
                  model_dir.string(), "` measures one for ", device_name);
      return meta::GemmTable(device_name, "no table");
    }
    table = meta::GemmTable::load(path);
  }
  if (table.device() != device_name) {
    log_warning(table.source(), ": measured on '", table.device(), "', running on '", device_name,
                "': its choices are those of the other device");
  }
  return table;
}

}  // namespace xy::cuda
