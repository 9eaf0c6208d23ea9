// SmoothGEMM dispatch (DESIGN.md, "SmoothGEMM"): y = x · Wᵀ through the candidate that the
// offline-profiled table (meta/gemm_table.h, written by `xyserve tune`) names for (n, k, bucket
// of m): a kernel of the family (gemm.h), cuBLASLt's own choice, or one of the other algorithms
// of cuBLASLt's heuristic. Everything is resolved when the SmoothGemm is built; a call is a table
// lookup and a launch, with no heuristic and no allocation, so it can be captured in a CUDA graph.
//
// Threading: one SmoothGemm per stream user; not thread-safe (the cuBLASLt plan cache of the
// default path and the shared workspaces assume calls ordered on one stream).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/gemm.h"
#include "xyserve/backend/cuda/lt_gemm.h"
#include "xyserve/meta/gemm_table.h"

namespace xy::cuda {

// A candidate id of the table, parsed:
//   "<kernel name>"  a kernel of the family, by gemm_kernel_name() ("stream_t16", "wgmma_128x256");
//   "cublaslt"       cuBLASLt with its heuristic's first algorithm for each M (what LtGemm runs);
//   "cublaslt:<i>"   the i-th algorithm (from 0) that cuBLASLt's heuristic lists at the bucket's
//                    upper M, run for every M of the bucket: the algorithm the tuner measured.
struct GemmCandidate {
  enum class Kind { kKernel, kCublasLtDefault, kCublasLtAlgo };
  Kind kind = Kind::kCublasLtDefault;
  GemmKernel kernel = GemmKernel::kStreamT16;  // kKernel
  int lt_index = 0;                            // kCublasLtAlgo: in [0, kMaxLtHeuristicAlgos)
};

// How many algorithms are asked of cuBLASLt's heuristic, always the same count so that index i
// names the same algorithm in the tuner and in SmoothGemm.
inline constexpr int kMaxLtHeuristicAlgos = 8;

// nullopt when `id` names no candidate.
std::optional<GemmCandidate> parse_gemm_candidate(std::string_view id);
std::string gemm_candidate_id(const GemmCandidate& candidate);

// cuBLASLt with an algorithm chosen by the caller, for bf16 y[m, n] = x[m, k] · W[n, k]ᵀ (fp32
// accumulation), with the same operand layout and workspace size as LtGemm.
class LtAlgoGemm {
 public:
  // A named wrapper: nvcc 13.0's front end aborts ("internal error ... lexical.c") on a
  // std::vector of cuBLASLt's anonymous-struct typedefs under C++20.
  struct Algo {
    cublasLtMatmulAlgo_t value;
  };

  explicit LtAlgoGemm(size_t workspace_bytes = size_t(32) << 20);
  ~LtAlgoGemm();
  LtAlgoGemm(const LtAlgoGemm&) = delete;
  LtAlgoGemm& operator=(const LtAlgoGemm&) = delete;

  // The algorithms that cuBLASLt's heuristic lists for this shape, best first, at most
  // kMaxLtHeuristicAlgos (an empty list when it knows none). Host-side planning only.
  std::vector<Algo> heuristic_algos(int m, int n, int k);

  // True when cuBLASLt accepts `algo` for this shape within the workspace.
  bool supports(const Algo& algo, int m, int n, int k);

  // Enqueues the GEMM with `algo` on `stream`; allocates nothing. Throws CudaError naming the
  // shape when cuBLASLt refuses it.
  void run(const Algo& algo, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
           int m, int n, int k, cudaStream_t stream);

 private:
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;  // bf16 in, fp32 compute, W transposed: shape-free
  DeviceBuffer<uint8_t> workspace_;
};

class SmoothGemm {
 public:
  // Resolves every bucket of `table` and allocates, zero-filled, the one workspace that the
  // table's split-K and stream-K kernels need for any m <= max_m (gemm.h: kernels leave it zero).
  // Throws InvalidArgument naming table.source(), the shape, the bucket and the candidate when a
  // candidate id is unknown, a kernel cannot run its shape, or cuBLASLt's heuristic lists no
  // i-th algorithm (or cuBLASLt refuses it) for the bucket.
  SmoothGemm(const meta::GemmTable& table, int max_m);
  SmoothGemm(const SmoothGemm&) = delete;
  SmoothGemm& operator=(const SmoothGemm&) = delete;

  // y[m, n] = x[m, k] · w[n, k]ᵀ, all row-major, as LtGemm::run. A bf16 output runs the table's
  // candidate for (n, k, m), or cuBLASLt's default when the table has none; an fp32 output (the
  // LM head) always runs cuBLASLt's default. Precondition: m <= max_m for a bf16 output.
  //
  // pdl: launch a kernel of the family as a programmatic dependent launch (GemmArgs::pdl): it
  // may start streaming w while the previous kernel on `stream` finishes, and waits for that
  // kernel before it reads x or writes y. Safe whenever w is not written by the kernels just
  // before (weights never are). cuBLASLt routes and kernels that are not PDL-aware launch
  // plainly. It pays only when the previous kernel issues griddepcontrol.launch_dependents.
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, GemmOut out, int m, int n,
           int k, cudaStream_t stream, bool pdl = false);

  // The id of the candidate that run() uses for a bf16 y[m, n], or meta::kNoGemmCandidate when
  // the table has none (then cuBLASLt's default runs). For logs and tests.
  std::string candidate_for(int m, int n, int k) const;

  // Batch-invariant (--deterministic) mode: every GEMM runs LtGemm's batch-invariant path and
  // the table is bypassed, since its stream-K and split-K kernels and its per-bucket cuBLASLt
  // algorithms sum a row in an order that changes with M. Call before the first run().
  void set_batch_invariant(bool on);
  bool batch_invariant() const { return batch_invariant_; }

  size_t workspace_bytes() const { return workspace_.bytes(); }
  int max_m() const { return max_m_; }

 private:
  struct Route {
    int max_m = 0;
    GemmCandidate candidate;
    int algo_slot = -1;  // kCublasLtAlgo: index into lt_algos_
  };
  struct ShapeRoutes {
    int n = 0, k = 0;
    std::vector<Route> routes;  // max_m increasing, as in the table
  };
  const Route* find(int m, int n, int k) const;

  int max_m_ = 0;
  bool batch_invariant_ = false;
  std::vector<ShapeRoutes> shapes_;
  LtGemm lt_default_;
  LtAlgoGemm lt_algo_gemm_;
  std::vector<LtAlgoGemm::Algo> lt_algos_;
  DeviceBuffer<uint8_t> workspace_;
};

// The table for a model on device `device` (an index for cudaGetDeviceProperties):
//   - `explicit_path` when not empty (an error if it cannot be loaded);
//   - else model_dir / meta::gemm_table_file_name(device's name) when that file exists;
//   - else an empty table (every GEMM on cuBLASLt), with a warning that says how to tune.
// A table measured on another kind of device is used with a warning.
meta::GemmTable find_gemm_table(const std::filesystem::path& model_dir,
                                const std::filesystem::path& explicit_path, int device);

}  // namespace xy::cuda
