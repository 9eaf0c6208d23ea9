// SmoothGemm (backend/cuda/smooth_gemm.h) with a hand-made table that routes buckets of M to
// every kernel of the family, to cuBLASLt by heuristic index and to cuBLASLt's default, with
// lookup misses in between: every route against a host reference accumulated in double, with
// gemm_check's bound (bench/cuda/gemm_check.cu), and against LtGemm. M = 1 and M that are not a
// multiple of any tile; outputs poisoned (NaN) before each run; rows >= M must stay poisoned.
// Also every route launched with pdl after a norm kernel, on a stream and in a CUDA graph.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_test_util.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/gemm.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/lt_gemm.h"
#include "xyserve/backend/cuda/smooth_gemm.h"
#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"
#include "xyserve/meta/gemm_table.h"

namespace xy::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::poison;
using testing::random_bf16;
using testing::to_device;
using testing::to_host;

// The tabled shape: n a multiple of 256 and k of 256, so that every kernel of the family runs
// it; k = 24 blocks of 64, so the wgmma kernels split K at the small tile counts of M <= 256.
constexpr int kN = 768, kK = 1536;
// A shape the table lacks (k = 320 is not a multiple of 128: only some kernels could run it).
constexpr int kMissN = 384, kMissK = 320;
constexpr int kMaxM = 400;
constexpr int kPadRows = 3;            // rows of y past M that must stay poisoned
constexpr uint16_t kPoisonBits = 0xFFFF;  // testing::poison fills every byte with 0xff: a NaN

// gemm_check's bounds against an fp32-accumulated reference: per element
// |y - ref| <= 1e-2 (|ref| + 1) (bf16 output rounding is 2^-9 relative), and relative
// Frobenius error <= 5e-3.
constexpr double kElementBound = 1e-2, kFrobeniusBound = 5e-3;
// Two bf16-rounded results of the same sum, each within the bound above of the truth.
constexpr double kAgreeBound = 2e-2;

struct Problem {
  int m = 0, n = 0, k = 0;
  std::vector<uint16_t> x, w;  // bf16 bits, [m, k] and [n, k]
  std::vector<double> ref;     // [m, n]
  DeviceBuffer<uint16_t> dx, dw;
};

Problem make_problem(int m, int n, int k, std::mt19937& rng) {
  Problem p;
  p.m = m, p.n = n, p.k = k;
  p.x = random_bf16(size_t(m) * k, rng, 1.0f);
  p.w = random_bf16(size_t(n) * k, rng, 0.5f);
  p.ref.assign(size_t(m) * n, 0.0);
  std::vector<double> xf(p.x.size()), wf(p.w.size());
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = bf16_to_f32(p.x[i]);
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = bf16_to_f32(p.w[i]);
  for (int r = 0; r < m; ++r) {
    for (int c = 0; c < n; ++c) {
      double sum = 0;
      for (int i = 0; i < k; ++i) sum += xf[size_t(r) * k + i] * wf[size_t(c) * k + i];
      p.ref[size_t(r) * n + c] = sum;
    }
  }
  p.dx = to_device(p.x);
  p.dw = to_device(p.w);
  return p;
}

const bf16* as_bf16(const DeviceBuffer<uint16_t>& b) { return reinterpret_cast<const bf16*>(b.get()); }

// y: (m + kPadRows) rows of bf16 bits, as read back after a run on a poisoned buffer.
::testing::AssertionResult matches_reference(const std::vector<uint16_t>& y, const Problem& p) {
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < p.ref.size(); ++i) {
    const double got = bf16_to_f32(y[i]), want = p.ref[i];
    const double err = std::fabs(got - want);
    if (!(err <= kElementBound * (std::fabs(want) + 1))) {
      return ::testing::AssertionFailure() << "y[" << i / size_t(p.n) << "][" << i % size_t(p.n) << "] = " << got
                                           << ", reference " << want;
    }
    err2 += err * err;
    ref2 += want * want;
  }
  const double fro = std::sqrt(err2 / std::max(ref2, 1e-30));
  if (!(fro <= kFrobeniusBound)) return ::testing::AssertionFailure() << "relative Frobenius error " << fro;
  for (size_t i = p.ref.size(); i < y.size(); ++i) {
    if (y[i] != kPoisonBits) return ::testing::AssertionFailure() << "row " << i / size_t(p.n) << " >= M written";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult agree(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const double va = bf16_to_f32(a[i]), vb = bf16_to_f32(b[i]);
    if (!(std::fabs(va - vb) <= kAgreeBound * (std::fabs(vb) + 1)))
      return ::testing::AssertionFailure() << "element " << i << ": " << va << " against LtGemm's " << vb;
  }
  return ::testing::AssertionSuccess();
}

// Runs `gemm` on a freshly poisoned y of p.m + kPadRows rows and returns y.
template <class Gemm>
std::vector<uint16_t> run_bf16(Gemm& gemm, const Problem& p, cudaStream_t stream = nullptr) {
  DeviceBuffer<uint16_t> y(size_t(p.m + kPadRows) * p.n);
  poison(y);
  gemm.run(as_bf16(p.dx), as_bf16(p.dw), y.get(), GemmOut::kBF16, p.m, p.n, p.k, stream);
  XY_CUDA_CHECK(cudaGetLastError());
  return to_host(y, y.size());
}

// The i-th cuBLASLt heuristic algorithm that the table names: the second when the heuristic
// lists two or more at the bucket's bound, so that the route differs from the default.
int lt_index_for(int m, int n, int k) {
  LtAlgoGemm lt;
  return lt.heuristic_algos(m, n, k).size() >= 2 ? 1 : 0;
}

// Buckets of M for (kN, kK): every kernel of the family, cuBLASLt by index and by default; M
// above 300 is a lookup miss.
meta::GemmTable make_table(const std::string& lt_algo_id) {
  meta::GemmTable table("test device", "hand-made table");
  table.add_shape(kN, kK, {{1, "stream_t16"},
                           {4, "gemv_t8"},
                           {8, "stream_t16_n32"},
                           {16, "gemv_t16"},
                           {24, "stream_t32_n64"},
                           {32, "gemv_t32"},
                           {40, "stream_t32"},
                           {64, "stream_t64"},
                           {72, "stream_t16_n64"},
                           {100, "stream_t64_n64"},
                           {128, lt_algo_id},
                           {160, "wgmma_128x256"},
                           {256, "wgmma_128x128"},
                           {300, "cublaslt"}});
  return table;
}

struct Case {
  int m;
  std::string candidate;  // what candidate_for must answer
};

class SmoothGemmTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }
};

// Host-only: runs without a GPU.
TEST(SmoothGemmCandidates, IdsRoundTrip) {
  for (GemmKernel kernel : all_gemm_kernels()) {
    const auto c = parse_gemm_candidate(gemm_kernel_name(kernel));
    ASSERT_TRUE(c.has_value()) << gemm_kernel_name(kernel);
    EXPECT_EQ(c->kind, GemmCandidate::Kind::kKernel);
    EXPECT_EQ(c->kernel, kernel);
    EXPECT_EQ(gemm_candidate_id(*c), gemm_kernel_name(kernel));
  }
  ASSERT_TRUE(parse_gemm_candidate("cublaslt").has_value());
  EXPECT_EQ(parse_gemm_candidate("cublaslt")->kind, GemmCandidate::Kind::kCublasLtDefault);
  const auto algo = parse_gemm_candidate("cublaslt:3");
  ASSERT_TRUE(algo.has_value());
  EXPECT_EQ(algo->kind, GemmCandidate::Kind::kCublasLtAlgo);
  EXPECT_EQ(algo->lt_index, 3);
  EXPECT_EQ(gemm_candidate_id(*algo), "cublaslt:3");
  for (const char* bad : {"", "none", "cublaslt:", "cublaslt:-1", "cublaslt:8", "cublaslt:1x", "cublaslt: 1",
                          "stream_t128", "WGMMA_128x128"}) {
    EXPECT_FALSE(parse_gemm_candidate(bad).has_value()) << "'" << bad << "'";
  }
}

TEST_F(SmoothGemmTest, EveryRouteMatchesTheReferenceAndLtGemm) {
  const std::string lt_algo_id = cat("cublaslt:", lt_index_for(128, kN, kK));
  const meta::GemmTable table = make_table(lt_algo_id);
  SmoothGemm smooth(table, kMaxM);
  LtGemm lt;
  // SmoothGemm's resolved routes follow the table's own bucket rule at every M.
  for (int m = 1; m <= kMaxM; ++m) ASSERT_EQ(smooth.candidate_for(m, kN, kK), table.lookup(kN, kK, m)) << m;
  // M = 1, and M inside buckets and just past their bounds: none of them (kMaxM, a miss, aside)
  // a multiple of any tile's rows (16, 32, 64, 128).
  const Case cases[] = {{1, "stream_t16"},      {2, "gemv_t8"},          {3, "gemv_t8"},
                        {5, "stream_t16_n32"},  {7, "stream_t16_n32"},   {9, "gemv_t16"},
                        {15, "gemv_t16"},       {17, "stream_t32_n64"},  {23, "stream_t32_n64"},
                        {25, "gemv_t32"},       {31, "gemv_t32"},        {33, "stream_t32"},
                        {39, "stream_t32"},     {41, "stream_t64"},      {63, "stream_t64"},
                        {65, "stream_t16_n64"}, {71, "stream_t16_n64"},  {73, "stream_t64_n64"},
                        {99, "stream_t64_n64"}, {101, lt_algo_id},       {127, lt_algo_id},
                        {129, "wgmma_128x256"}, {159, "wgmma_128x256"},  {161, "wgmma_128x128"},
                        {255, "wgmma_128x128"}, {257, "cublaslt"},       {299, "cublaslt"},
                        {301, "none"},          {kMaxM, "none"}};
  std::mt19937 rng(20261201);
  for (const Case& c : cases) {
    SCOPED_TRACE(cat("m=", c.m, " candidate ", c.candidate));
    ASSERT_EQ(smooth.candidate_for(c.m, kN, kK), c.candidate);
    const Problem p = make_problem(c.m, kN, kK, rng);
    const std::vector<uint16_t> want = run_bf16(lt, p);
    ASSERT_TRUE(matches_reference(want, p)) << "LtGemm itself";
    // Twice on the one workspace: the split-K and stream-K kernels must leave it zeroed.
    for (int rep = 0; rep < 2; ++rep) {
      const std::vector<uint16_t> got = run_bf16(smooth, p);
      ASSERT_TRUE(matches_reference(got, p)) << "run " << rep;
      ASSERT_TRUE(agree(got, want, p.ref.size())) << "run " << rep;
    }
  }
}

TEST_F(SmoothGemmTest, ShapesTheTableLacksAndFp32OutputRunOnCublasLt) {
  SmoothGemm smooth(make_table("cublaslt:0"), kMaxM);
  LtGemm lt;
  std::mt19937 rng(5);
  for (int m : {1, 77, kMaxM}) {
    SCOPED_TRACE(cat("m=", m));
    EXPECT_EQ(smooth.candidate_for(m, kMissN, kMissK), "none");
    const Problem p = make_problem(m, kMissN, kMissK, rng);
    const std::vector<uint16_t> got = run_bf16(smooth, p);
    ASSERT_TRUE(matches_reference(got, p));
    ASSERT_TRUE(agree(got, run_bf16(lt, p), p.ref.size()));
  }
  // fp32 output (the LM head): cuBLASLt's default even for a tabled shape and M. fp32 compute
  // and output: the only error is fp32 summation order over K = 1536 terms, far below 1e-3.
  const Problem p = make_problem(33, kN, kK, rng);
  DeviceBuffer<float> y(size_t(p.m + kPadRows) * p.n);
  poison(y);
  smooth.run(as_bf16(p.dx), as_bf16(p.dw), y.get(), GemmOut::kF32, p.m, p.n, p.k, nullptr);
  const std::vector<float> got = to_host(y, y.size());
  for (size_t i = 0; i < p.ref.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - p.ref[i]), 1e-3 * (std::fabs(p.ref[i]) + 1)) << "element " << i;
  }
  for (size_t i = p.ref.size(); i < got.size(); ++i) ASSERT_TRUE(std::isnan(got[i])) << "row >= M written";
}

// The backend captures steps in CUDA graphs: every kind of route must record into a graph and
// replay to the same result, with nothing planned or allocated at run time.
TEST_F(SmoothGemmTest, RoutesReplayInsideACudaGraph) {
  const std::string lt_algo_id = cat("cublaslt:", lt_index_for(128, kN, kK));
  SmoothGemm smooth(make_table(lt_algo_id), kMaxM);
  Stream stream;
  std::mt19937 rng(11);
  for (int m : {1, 5, 99, 127, 150, 200, 280, 333}) {
    SCOPED_TRACE(cat("m=", m, " candidate ", smooth.candidate_for(m, kN, kK)));
    const Problem p = make_problem(m, kN, kK, rng);
    // Warm-up outside the graph (cuBLASLt's default plans its M on first use), as the backend's
    // first step does before capture.
    ASSERT_TRUE(matches_reference(run_bf16(smooth, p, stream.get()), p));
    DeviceBuffer<uint16_t> y(size_t(m + kPadRows) * kN);
    cudaGraph_t graph = nullptr;
    XY_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    smooth.run(as_bf16(p.dx), as_bf16(p.dw), y.get(), GemmOut::kBF16, m, kN, kK, stream.get());
    XY_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      poison(y);
      XY_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
      XY_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
      ASSERT_TRUE(matches_reference(to_host(y, y.size()), p)) << "replay " << replay;
    }
    XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
    XY_CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

// pdl = true (GemmArgs::pdl) after a producer that lets its dependents launch early: the norm
// kernel writes x, every route of the table reads it. Family kernels then start while the norm
// runs and must wait for it before reading x; cuBLASLt routes launch plainly. On a stream and in
// a replayed graph (programmatic edges). x is poisoned before the norm runs, so a kernel that
// read it early would produce NaN. (gemm_check's PDL chains hold the producer back 20 µs so that
// the overlap surely happens; here the norm is short and the check is of the route plumbing.)
TEST_F(SmoothGemmTest, PdlRoutesReadWhatTheNormBeforeThemWrote) {
  const std::string lt_algo_id = cat("cublaslt:", lt_index_for(128, kN, kK));
  SmoothGemm smooth(make_table(lt_algo_id), kMaxM);
  Stream stream;
  std::mt19937 rng(17);
  for (int m : {1, 3, 12, 30, 55, 99, 127, 150, 280}) {
    SCOPED_TRACE(cat("m=", m, " candidate ", smooth.candidate_for(m, kN, kK)));
    // residual [m, kK] fp32, norm weight [kK]; x = norm(residual) is the GEMM's input.
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> residual_host(size_t(m) * kK);
    for (float& v : residual_host) v = u(rng);
    DeviceBuffer<float> residual = to_device(residual_host);
    const DeviceBuffer<uint16_t> norm_weight = to_device(random_bf16(kK, rng, 1.0f));
    const DeviceBuffer<uint16_t> w = to_device(random_bf16(size_t(kN) * kK, rng, 0.5f));
    DeviceBuffer<uint16_t> x(size_t(m) * kK), y(size_t(m + kPadRows) * kN);
    XY_CUDA_CHECK(cudaDeviceSynchronize());  // the copies above, before `stream` (non-blocking) reads them
    auto enqueue = [&] {
      XY_CUDA_CHECK(cudaMemsetAsync(x.get(), 0xff, x.bytes(), stream.get()));
      XY_CUDA_CHECK(cudaMemsetAsync(y.get(), 0xff, y.bytes(), stream.get()));
      // delta = null: the residual is only read, so every run sees the same x.
      launch_add_rms_norm(residual.get(), nullptr, as_bf16(norm_weight), nullptr, m, kK, 1e-5f,
                          reinterpret_cast<bf16*>(x.get()), stream.get());
      smooth.run(as_bf16(x), as_bf16(w), y.get(), GemmOut::kBF16, m, kN, kK, stream.get(), /*pdl=*/true);
    };
    // The reference from the x that the norm wrote in the first run (the norm is deterministic;
    // later runs must write the same x, checked bitwise).
    Problem p;
    auto check = [&](const char* how) {
      XY_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
      const std::vector<uint16_t> x_now = to_host(x, x.size());
      if (p.ref.empty()) {
        p.m = m, p.n = kN, p.k = kK;
        p.x = x_now;
        const std::vector<uint16_t> w_host = to_host(w, w.size());
        p.ref.assign(size_t(m) * kN, 0.0);
        for (int r = 0; r < m; ++r)
          for (int c = 0; c < kN; ++c) {
            double sum = 0;
            for (int i = 0; i < kK; ++i)
              sum += double(bf16_to_f32(p.x[size_t(r) * kK + i])) * double(bf16_to_f32(w_host[size_t(c) * kK + i]));
            p.ref[size_t(r) * kN + c] = sum;
          }
      }
      ASSERT_EQ(x_now, p.x) << how << ": the norm wrote a different x";
      ASSERT_TRUE(matches_reference(to_host(y, y.size()), p)) << how;
    };
    enqueue();  // also the warm-up outside the graph (cuBLASLt plans its M on first use)
    check("stream");
    cudaGraph_t graph = nullptr;
    XY_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    enqueue();
    XY_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      XY_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
      check(replay == 0 ? "graph replay 0" : "graph replay 1");
    }
    XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
    XY_CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

// --deterministic: the table is bypassed for cuBLASLt's batch-invariant path.
TEST_F(SmoothGemmTest, BatchInvariantModeBypassesTheTable) {
  SmoothGemm smooth(make_table("cublaslt:0"), kMaxM);
  smooth.set_batch_invariant(true);
  std::mt19937 rng(13);
  for (int m : {1, 33, 150}) {
    SCOPED_TRACE(cat("m=", m));
    EXPECT_EQ(smooth.candidate_for(m, kN, kK), "none");
    const Problem p = make_problem(m, kN, kK, rng);
    ASSERT_TRUE(matches_reference(run_bf16(smooth, p), p));
  }
}

// Table errors name the table, the shape, the bucket and the candidate.
TEST_F(SmoothGemmTest, BadTablesAreRejectedWithTheirPlace) {
  const auto error_of = [](meta::GemmTable table) -> std::string {
    try {
      SmoothGemm smooth(table, kMaxM);
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "";
  };
  meta::GemmTable unknown("d", "t.json");
  unknown.add_shape(kN, kK, {{4, "stream_t16"}, {8, "stream_t99"}});
  EXPECT_NE(error_of(unknown).find("t.json: shape n=768 k=1536, bucket max_m=8: candidate 'stream_t99' is unknown"),
            std::string::npos)
      << error_of(unknown);
  meta::GemmTable cannot_run("d", "t.json");
  cannot_run.add_shape(kMissN, kMissK, {{4, "stream_t16_n32"}});  // needs k % 256 == 0
  EXPECT_NE(error_of(cannot_run).find("candidate 'stream_t16_n32' cannot run the shape: k must be a multiple of 256"),
            std::string::npos)
      << error_of(cannot_run);
  meta::GemmTable wide("d", "t.json");
  wide.add_shape(kMissN, kMissK, {{4, "wgmma_128x256"}});  // n = 384 is not a multiple of 256
  EXPECT_NE(error_of(wide).find("n must be a multiple of 256"), std::string::npos) << error_of(wide);
  EXPECT_THROW(SmoothGemm(meta::GemmTable(), 0), InvalidArgument);
}

}  // namespace
}  // namespace xy::cuda
