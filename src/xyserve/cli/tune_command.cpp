// `xyserve tune --model DIR`: measures every SmoothGEMM candidate for the model's linear-layer
// shapes on this GPU, over buckets of M, and writes the dispatch table (meta/gemm_table.h) that
// the CUDA backend loads (backend/cuda/smooth_gemm.h).
//
// Candidates per (shape, M): every kernel of the family that runs the shape (gemm.h), cuBLASLt's
// default (what `--gemm cublas` runs: its heuristic's first algorithm at that M) and the next
// --lt-algos algorithms of its heuristic ("cublaslt:<i>"). Each is timed at the bucket's upper M
// where the backend runs it: after the kernel before it in the layer. A CUDA graph of `iters`
// pairs [the kernel writing x (silu_mul for down, an RMSNorm for the others), the candidate
// reading x], our kernels launched with programmatic
// dependent launch as the backend launches them, cuBLASLt's plainly; its score is the pair's time
// less the norm's alone, per pair: what the GEMM adds to the step. Timed back to back instead,
// the stream-K kernels lost to cuBLASLt at M <= 16 (qkv 17.3 against 16.0 us) and the table kept
// cuBLASLt, while the same kernels after a norm made the decode step 1.009-1.017x faster
// (docs/PERFORMANCE.md, "the tuner's choice against the chain's"): with PDL they stream W while
// the norm runs, which back-to-back launches of one GEMM do not show. Otherwise as
// bench/cuda/gemm_bench.cu times (GEMM_NOTES.md): median of kReps replays, operands rotating over
// >= 3x L2 of weights so that weights are cold, as in serving. Before it is timed, each
// candidate's output (poisoned first) is compared with cuBLASLt's default; a mismatch is reported
// and the candidate is not ranked.
//
// Where the table goes: by default into the model directory, as
// meta::gemm_table_file_name(device) ("xyserve_gemm_table_NVIDIA_H200.json"), where the backend
// looks first. vLLM keeps its tuned kernel configs beside its code, keyed by shape and device
// name, because they ship inside a Python package that every model shares; a C++ binary has no
// such data directory, and the table belongs to the model's shapes on one kind of GPU, which is
// what the model directory and a device-keyed file name say. A read-only model directory takes
// --out and, later, the backend's table flag.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/cli/commands.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"
#include "xyserve/meta/gemm_table.h"
#include "xyserve/model/config.h"
#ifdef XY_HAVE_CUDA
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/gemm.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/lt_gemm.h"
#include "xyserve/backend/cuda/smooth_gemm.h"
#endif

namespace xy::cli {
namespace fs = std::filesystem;

namespace {

FlagSet tune_flags() {
  FlagSet f("tune",
            "Measures every SmoothGEMM candidate (our kernels and cuBLASLt's algorithms) for the\n"
            "model's linear layers on this GPU, over buckets of M, and writes the table that the\n"
            "CUDA backend dispatches from. Weights are random: only config.json is read.");
  f.add("model", "DIR", "", "model directory (config.json)");
  f.add("out", "FILE", "", "table to write (default: DIR/xyserve_gemm_table_<device>.json, where the backend looks)");
  f.add("m", "LIST", "1,2,4,8,16,24,32,48,64,96,128,192,256,384,512,768,1024,2048,4096,8192",
        "upper bounds of the M buckets, comma-separated; each is measured at its bound");
  f.add("device", "N", "0", "CUDA device index");
  f.add("lt-algos", "N", "3", "cuBLASLt heuristic algorithms to time besides its default");
  return f;
}

#ifdef XY_HAVE_CUDA

using bf16 = __nv_bfloat16;
using xy::cuda::DeviceBuffer;

constexpr int kReps = 5;               // timed graph replays per measurement; the median is kept
constexpr double kReplayUs = 2000;     // launches per graph: a replay of about this long
constexpr int kMinIters = 4, kMaxIters = 200;
constexpr int kRotateL2Multiple = 3;   // weights rotate over >= 3x the L2 (bench/cuda/gemm_bench.cu)
constexpr int kCheckedRows = 256;      // rows compared per candidate when M is larger
// Two bf16 roundings (2^-9 relative each) of the same fp32 sum, plus summation-order noise: the
// bound gemm_bench uses against cuBLASLt. |ours - cublaslt| <= kAgreeBound * (|cublaslt| + 1).
constexpr double kAgreeBound = 2e-2;
// A candidate whose warm single launch is slower than kPruneFactor x the best time so far plus
// kPruneSlackUs (a single launch's latency, absent in a graph) cannot win and is not timed.
constexpr double kPruneFactor = 3, kPruneSlackUs = 20;
// A candidate replaces cuBLASLt's default only when it is this much faster: medians of graph
// replays move by about 1% from run to run, and a tie is better served by the default, which
// re-plans for every M of the bucket.
constexpr double kMinGain = 0.98;
// A gemv_t<t> kernel takes ceil(M / t) passes over W (gemm.h). Past this many passes it reads W
// from memory several times where cuBLASLt reads it once, so it cannot win (in the last tunes it
// won only o at M <= 16, in one pass: bench/cuda/results/2026-11-25_h200_s3_tune*.txt), and at
// large M one launch takes tens of ms (gate_up, M = 8192: ~60 ms): it is not timed when
// M > kMaxGemvPasses * t.
constexpr int kMaxGemvPasses = 4;
// The predecessor norm's epsilon; any value serves, its output only has to be finite.
constexpr float kNormEps = 1e-5f;
// Random operands are copies of one pattern of this many values. It is prime (2^24 + 43) and
// larger than any row count, so no two rows of a matrix hold the same values.
constexpr size_t kPatternElems = (size_t(1) << 24) + 43;

std::vector<int> parse_m_list(const std::string& text) {
  std::vector<int> ms;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 1 || v > (1 << 20))
      throw InvalidArgument(cat("tune: --m: '", item, "' is not an M in [1, 1048576]"));
    ms.push_back(int(v));
  }
  if (ms.empty()) throw InvalidArgument("tune: --m: empty list");
  std::sort(ms.begin(), ms.end());
  ms.erase(std::unique(ms.begin(), ms.end()), ms.end());
  return ms;
}

// One GEMM shape of the model's layers; `layers` names the layers that share it ("o, down").
struct LinearShape {
  std::string layers;
  int n = 0, k = 0;
  bool after_silu_mul = false;  // down: its x is written by silu_mul, the others' by a norm (or attention)
};

// The linear layers of a decoder layer as the CUDA backend runs them: q, k and v as one GEMM
// (qkv), gate and up as one (gate_up). The LM head is left out: it has fp32 output, which
// SmoothGemm always gives to cuBLASLt.
std::vector<LinearShape> linear_shapes(const model::ModelConfig& c) {
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const struct {
    const char* name;
    int64_t n, k;
  } layers[] = {{"qkv", q + 2 * kv, c.hidden_size},
                {"o", c.hidden_size, q},
                {"gate_up", 2 * c.intermediate_size, c.hidden_size},
                {"down", c.hidden_size, c.intermediate_size}};
  std::vector<LinearShape> shapes;
  for (const auto& l : layers) {
    if (l.n < 1 || l.k < 1 || l.n > INT32_MAX || l.k > INT32_MAX)
      throw ModelError(cat("tune: layer ", l.name, " has shape n=", l.n, " k=", l.k, ", outside the GEMMs' int range"));
    auto same = std::find_if(shapes.begin(), shapes.end(), [&](const LinearShape& s) { return s.n == l.n && s.k == l.k; });
    if (same != shapes.end()) {
      same->layers += cat(", ", l.name);
    } else {
      shapes.push_back({l.name, int(l.n), int(l.k), std::string_view(l.name) == "down"});
    }
  }
  return shapes;
}

// Copies of a random pattern into device memory, from `start` in the pattern, wrapping. `Host`
// holds the bits of `Device` (uint16_t for bf16).
template <typename Device, typename Host>
void fill_from_pattern(Device* dst, size_t count, const std::vector<Host>& pattern, size_t start) {
  static_assert(sizeof(Device) == sizeof(Host));
  size_t done = 0, pos = start % pattern.size();
  while (done < count) {
    const size_t chunk = std::min(pattern.size() - pos, count - done);
    XY_CUDA_CHECK(cudaMemcpy(dst + done, pattern.data() + pos, chunk * sizeof(Host), cudaMemcpyHostToDevice));
    done += chunk;
    pos = 0;
  }
}

std::vector<uint16_t> random_pattern(uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<uint16_t> out(kPatternElems);
  for (auto& v : out) v = f32_to_bf16(u(rng));
  return out;
}

// Operand sets for one shape: x [max_m, k], w [n, k], y [max_m, n], `sets` of each, rotated so
// that no launch finds the weights of the previous one in L2; and the inputs of the norm that
// precedes each GEMM and writes its x (tune_shape), shared by the sets: in the backend they are
// activations, not weights. The backend's norm before qkv and gate_up adds the previous GEMM's
// output (delta) into the fp32 residual and writes it back; a zero delta gives the same memory
// traffic and leaves the residual as it was, so every norm writes the same rows of x. Shared, at
// small M they stay in L2 between the norms timed alone; in the pairs a GEMM's weights pass
// through L2 between two norms, as in the backend, where a GEMM that loads W evict-first (ours:
// gemm_ptx.cuh) leaves the norm's inputs in L2 and one that does not makes the next norm read
// them from memory: the score charges that to the GEMM, as the step does.
struct Operands {
  int sets = 0;
  std::vector<DeviceBuffer<bf16>> x, w, y;
  DeviceBuffer<float> residual;    // [max_m, k]
  DeviceBuffer<bf16> delta;        // [max_m, k], zero
  DeviceBuffer<bf16> norm_weight;  // [k], ones
  DeviceBuffer<bf16> gate_up;      // [max_m, 2k]: silu_mul's input, for a shape after_silu_mul
};

Operands make_operands(const LinearShape& s, int max_m, size_t l2_bytes, const std::vector<uint16_t>& x_pattern,
                       const std::vector<uint16_t>& w_pattern, const std::vector<float>& residual_pattern) {
  Operands o;
  const size_t act_elems = size_t(max_m) * size_t(s.k);
  o.residual.reset(act_elems);
  fill_from_pattern(o.residual.get(), act_elems, residual_pattern, 0);
  o.delta.reset(act_elems);
  XY_CUDA_CHECK(cudaMemset(o.delta.get(), 0, o.delta.bytes()));
  o.norm_weight.reset(size_t(s.k));
  const std::vector<uint16_t> ones(size_t(s.k), f32_to_bf16(1.0f));
  XY_CUDA_CHECK(cudaMemcpy(o.norm_weight.get(), ones.data(), o.norm_weight.bytes(), cudaMemcpyHostToDevice));
  if (s.after_silu_mul) {
    o.gate_up.reset(2 * act_elems);
    fill_from_pattern(o.gate_up.get(), 2 * act_elems, x_pattern, 0);
  }
  const size_t w_elems = size_t(s.n) * size_t(s.k);
  const size_t rotate = kRotateL2Multiple * l2_bytes;
  o.sets = int(std::max<size_t>(2, (rotate + 2 * w_elems - 1) / (2 * w_elems)));
  for (int i = 0; i < o.sets; ++i) {
    o.x.emplace_back(size_t(max_m) * size_t(s.k));
    o.w.emplace_back(w_elems);
    o.y.emplace_back(size_t(max_m) * size_t(s.n));
    fill_from_pattern(o.x.back().get(), o.x.back().size(), x_pattern, size_t(i) * 7919);
    fill_from_pattern(o.w.back().get(), w_elems, w_pattern, size_t(i) * 104729);
  }
  return o;
}

// Times launches on one stream with a pair of events.
class Timer {
 public:
  explicit Timer(cudaStream_t stream) : stream_(stream) {}

  // One launch, after the caller has warmed it up, in microseconds.
  double single_us(const std::function<void(int)>& launch, int set) {
    XY_CUDA_CHECK(cudaEventRecord(start_.get(), stream_));
    launch(set);
    XY_CUDA_CHECK(cudaEventRecord(stop_.get(), stream_));
    return elapsed_us();
  }

  // Median time per call of `launch` in a CUDA graph of `iters` calls cycling over `sets` operand
  // sets, over kReps replays after one warm-up replay.
  double graph_us(const std::function<void(int)>& launch, int iters, int sets) {
    cudaGraph_t graph = nullptr;
    XY_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      for (int i = 0; i < iters; ++i) launch(i % sets);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    XY_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    XY_CUDA_CHECK(inst);
    std::vector<double> per_launch;
    XY_CUDA_CHECK(cudaGraphLaunch(exec, stream_));  // warm-up replay
    for (int r = 0; r < kReps; ++r) {
      XY_CUDA_CHECK(cudaEventRecord(start_.get(), stream_));
      XY_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
      XY_CUDA_CHECK(cudaEventRecord(stop_.get(), stream_));
      per_launch.push_back(elapsed_us() / iters);
    }
    XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
    std::sort(per_launch.begin(), per_launch.end());
    return per_launch[per_launch.size() / 2];
  }

  // What `launch` adds to a sequence where it follows `before`: graph_us of `iters` pairs
  // [before, launch] less `before_us`, which must be graph_us(before, iters, sets) (same iters,
  // so that the graph's fixed cost per replay cancels too).
  double added_us(const std::function<void(int)>& before, double before_us, const std::function<void(int)>& launch,
                  int iters, int sets) {
    const double pair_us = graph_us(
        [&](int set) {
          before(set);
          launch(set);
        },
        iters, sets);
    return pair_us - before_us;
  }

 private:
  double elapsed_us() {
    XY_CUDA_CHECK(cudaEventSynchronize(stop_.get()));
    float ms = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&ms, start_.get(), stop_.get()));
    return 1e3 * double(ms);
  }
  cudaStream_t stream_;
  xy::cuda::Event start_{cudaEventDefault}, stop_{cudaEventDefault};
};

// The rows of y[m, n] compared with the reference: all of them up to kCheckedRows, else
// kCheckedRows rows spread from the first to the last (the last holds every tile's ragged tail).
std::vector<int> checked_rows(int m) {
  std::vector<int> rows;
  if (m <= kCheckedRows) {
    for (int r = 0; r < m; ++r) rows.push_back(r);
  } else {
    for (int i = 0; i < kCheckedRows; ++i) rows.push_back(int(int64_t(i) * (m - 1) / (kCheckedRows - 1)));
  }
  return rows;
}

std::vector<uint16_t> copy_rows(const bf16* y, int m, int n, const std::vector<int>& rows, cudaStream_t stream) {
  std::vector<uint16_t> host(rows.size() * size_t(n));
  XY_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (int(rows.size()) == m) {
    XY_CUDA_CHECK(cudaMemcpy(host.data(), y, host.size() * 2, cudaMemcpyDeviceToHost));
  } else {
    for (size_t i = 0; i < rows.size(); ++i) {
      XY_CUDA_CHECK(cudaMemcpy(host.data() + i * size_t(n), y + size_t(rows[i]) * size_t(n), size_t(n) * 2,
                               cudaMemcpyDeviceToHost));
    }
  }
  return host;
}

// max |a - b| / (|b| + 1); infinity when any element of `a` is NaN (never written).
double max_scaled_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double va = bf16_to_f32(a[i]), vb = bf16_to_f32(b[i]);
    const double d = std::fabs(va - vb) / (std::fabs(vb) + 1.0);
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  return worst;
}

struct Candidate {
  std::string id;
  std::function<void(int set)> launch;
  bool ours = false;  // a kernel of the family (not one of cuBLASLt's algorithms)
};

struct TuneContext {
  cudaStream_t stream = nullptr;
  size_t l2_bytes = 0;
  int lt_alternates = 0;
  std::vector<uint16_t> x_pattern, w_pattern;
  std::vector<float> residual_pattern;
  xy::cuda::LtGemm lt_default;
  xy::cuda::LtAlgoGemm lt_algos;
  std::vector<double> speedups;  // cuBLASLt default time / best time, every point
};

// Tokens per pass over W of a gemv kernel (gemm.h: kGemvT<t>); 0 for the other kernels.
int gemv_tokens(xy::cuda::GemmKernel kernel) {
  switch (kernel) {
    case xy::cuda::GemmKernel::kGemvT8: return 8;
    case xy::cuda::GemmKernel::kGemvT16: return 16;
    case xy::cuda::GemmKernel::kGemvT32: return 32;
    default: return 0;
  }
}

// Measures every candidate for shape `s` at each M of `ms`; returns one bucket per M and prints
// one line per M.
std::vector<meta::GemmBucket> tune_shape(const LinearShape& s, const std::vector<int>& ms, TuneContext& ctx) {
  const int max_m = ms.back();
  Operands ops = make_operands(s, max_m, ctx.l2_bytes, ctx.x_pattern, ctx.w_pattern, ctx.residual_pattern);
  // One workspace for every kernel, zeroed once: each kernel leaves it zero (gemm.h), and calls
  // are ordered on one stream, as in SmoothGemm.
  std::vector<xy::cuda::GemmKernel> kernels;
  size_t workspace_bytes = 0;
  for (xy::cuda::GemmKernel kernel : xy::cuda::all_gemm_kernels()) {
    if (*xy::cuda::gemm_unsupported_reason(kernel, 1, s.n, s.k) != '\0') continue;
    kernels.push_back(kernel);
    for (int m : ms) workspace_bytes = std::max(workspace_bytes, xy::cuda::gemm_workspace_bytes(kernel, m, s.n, s.k));
  }
  DeviceBuffer<uint8_t> workspace(workspace_bytes);
  if (workspace_bytes > 0) {
    XY_CUDA_CHECK(cudaMemset(workspace.get(), 0, workspace_bytes));
    XY_CUDA_CHECK(cudaDeviceSynchronize());
  }

  std::printf("\n%s: n=%d k=%d (%d operand sets, %zu kernels that run it)\n", s.layers.c_str(), s.n, s.k, ops.sets,
              kernels.size());
  // "ours": the fastest kernel of the family timed, winner or not (cuBLASLt's other algorithms
  // aside), so that how far our kernels are from winning shows where they lose.
  std::printf("%6s  %-15s %10s %12s %8s  %-20s %10s  %s\n", "M", "best", "us", "cublaslt us", "speedup", "ours",
              "ours us", "not ranked");
  Timer timer(ctx.stream);
  std::vector<meta::GemmBucket> buckets;
  for (int m : ms) {
    const std::vector<int> rows = checked_rows(m);
    // The kernel before the GEMM, writing its x: silu_mul over [m, 2k] for down, as in the layer
    // (cuda_backend.cu, run_layer); the backend's RMSNorm over [m, k] for the others: the real
    // predecessor of qkv and gate_up, and a stand-in for o's (attention or its merge), which
    // also writes the GEMM's whole x and lets dependents launch as it starts. A first version
    // put a norm before down too: over k = intermediate with one block a row it is a long,
    // narrow kernel at small M that PDL kernels hide under and cuBLASLt cannot, and the table it
    // gave put stream_t64 on down at M = 64, which made the decode step at batch 64 0.95x.
    auto before = [&](int set) {
      if (s.after_silu_mul) {
        xy::cuda::launch_silu_mul(ops.gate_up.get(), m, s.k, ops.x[size_t(set)].get(), ctx.stream);
        return;
      }
      xy::cuda::launch_add_rms_norm(ops.residual.get(), ops.delta.get(), ops.norm_weight.get(), nullptr, m, s.k,
                                    kNormEps, ops.x[size_t(set)].get(), ctx.stream);
    };
    auto launch_default = [&](int set) {
      ctx.lt_default.run(ops.x[size_t(set)].get(), ops.w[size_t(set)].get(), ops.y[size_t(set)].get(),
                         xy::cuda::GemmOut::kBF16, m, s.n, s.k, ctx.stream);
    };
    std::vector<Candidate> candidates;
    for (xy::cuda::GemmKernel kernel : kernels) {
      if (const int t = gemv_tokens(kernel); t > 0 && m > kMaxGemvPasses * t) continue;
      candidates.push_back({xy::cuda::gemm_kernel_name(kernel), [&, kernel, m](int set) {
                              xy::cuda::GemmArgs args{ops.x[size_t(set)].get(), ops.w[size_t(set)].get(),
                                                      ops.y[size_t(set)].get(), m, s.n, s.k,
                                                      workspace.get(), workspace.bytes()};
                              // As the backend launches the layer GEMMs (cuda_backend.cu): with
                              // programmatic dependent launch, which PDL-aware kernels use to
                              // stream weights while the norm before them runs.
                              args.pdl = true;
                              xy::cuda::gemm_launch(kernel, args, ctx.stream);
                            },
                            true});
    }
    // cuBLASLt's first heuristic algorithm is its default, timed below as the baseline.
    const std::vector<xy::cuda::LtAlgoGemm::Algo> algos = ctx.lt_algos.heuristic_algos(m, s.n, s.k);
    for (int i = 1; i <= ctx.lt_alternates && i < int(algos.size()); ++i) {
      if (!ctx.lt_algos.supports(algos[size_t(i)], m, s.n, s.k)) continue;
      const xy::cuda::LtAlgoGemm::Algo algo = algos[size_t(i)];
      candidates.push_back({xy::cuda::gemm_candidate_id({xy::cuda::GemmCandidate::Kind::kCublasLtAlgo, {}, i}),
                            [&, algo, m](int set) {
                              ctx.lt_algos.run(algo, ops.x[size_t(set)].get(), ops.w[size_t(set)].get(),
                                               ops.y[size_t(set)].get(), m, s.n, s.k, ctx.stream);
                            }});
    }

    // Baseline: warm (its plan is made outside the graph), timed, then the reference output.
    // One graph length for the norms alone and every pair of this M (a replay of about kReplayUs
    // for the baseline's pairs), so that the norms' time subtracts exactly.
    launch_default(0);
    const double probe_default = timer.single_us(launch_default, 1 % ops.sets);
    before(0);
    const double probe_norm = timer.single_us(before, 1 % ops.sets);
    const int iters = std::clamp(int(kReplayUs / std::max(probe_default + probe_norm, 1.0)), kMinIters, kMaxIters);
    const double norm_us = timer.graph_us(before, iters, ops.sets);
    const double default_us = timer.added_us(before, norm_us, launch_default, iters, ops.sets);
    before(0);
    launch_default(0);
    const std::vector<uint16_t> reference = copy_rows(ops.y[0].get(), m, s.n, rows, ctx.stream);

    std::string best_id = "cublaslt", not_ranked;
    double best_us = default_us;  // of the default and every candidate timed so far
    std::string winner_id;        // the fastest candidate, if it beats the default by kMinGain
    double winner_us = kMinGain * default_us;
    std::string ours_id;  // the fastest kernel of the family that was timed, if any
    double ours_us = INFINITY;
    for (const Candidate& c : candidates) {
      c.launch(0);  // warm: module load, kernel attributes, cuBLASLt's kernel selection
      const double probe = timer.single_us(c.launch, 1 % ops.sets);
      if (probe > kPruneFactor * best_us + kPruneSlackUs) continue;  // cannot win
      XY_CUDA_CHECK(cudaMemsetAsync(ops.y[0].get(), 0xFF, size_t(m) * size_t(s.n) * 2, ctx.stream));  // NaN
      before(0);  // as timed: our kernels launched with PDL after the norm that writes their x
      c.launch(0);
      const double diff = max_scaled_diff(copy_rows(ops.y[0].get(), m, s.n, rows, ctx.stream), reference);
      if (!(diff <= kAgreeBound)) {
        std::printf("  MISMATCH %s at M=%d: max |y - cublaslt| / (|cublaslt| + 1) = %.3g > %.3g\n", c.id.c_str(), m,
                    diff, kAgreeBound);
        not_ranked += cat(not_ranked.empty() ? "" : " ", c.id);
        continue;
      }
      const double us = timer.added_us(before, norm_us, c.launch, iters, ops.sets);
      best_us = std::min(best_us, us);
      if (c.ours && us < ours_us) {
        ours_id = c.id;
        ours_us = us;
      }
      if (us < winner_us) {
        winner_us = us;
        winner_id = c.id;
      }
    }
    if (!winner_id.empty()) best_id = winner_id;
    const double chosen_us = winner_id.empty() ? default_us : winner_us;
    char ours_us_text[32] = "-";
    if (!ours_id.empty()) std::snprintf(ours_us_text, sizeof ours_us_text, "%.2f", ours_us);
    std::printf("%6d  %-15s %10.2f %12.2f %7.2fx  %-20s %10s  %s\n", m, best_id.c_str(), chosen_us, default_us,
                default_us / chosen_us, ours_id.empty() ? "-" : ours_id.c_str(), ours_us_text, not_ranked.c_str());
    std::fflush(stdout);
    ctx.speedups.push_back(default_us / chosen_us);
    const auto round2 = [](double us) { return std::round(us * 100) / 100; };
    buckets.push_back({m, best_id, round2(chosen_us), round2(default_us)});
  }
  return buckets;
}

#endif  // XY_HAVE_CUDA

}  // namespace

int run_tune(const std::vector<std::string>& args) {
  FlagSet flags = tune_flags();
  flags.parse(args);
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
#ifndef XY_HAVE_CUDA
  throw InvalidArgument("tune: this xyserve was built without the CUDA backend (no nvcc): nothing to tune");
#else
  const fs::path model_dir = flags.require("model");
  const model::ModelConfig config = model::load_config(model_dir);
  const std::vector<LinearShape> shapes = linear_shapes(config);
  const std::vector<int> ms = parse_m_list(flags.get("m"));
  const int64_t lt_alternates = flags.get_int("lt-algos");
  if (lt_alternates < 0 || lt_alternates >= xy::cuda::kMaxLtHeuristicAlgos)
    throw InvalidArgument(cat("tune: --lt-algos must be in [0, ", xy::cuda::kMaxLtHeuristicAlgos - 1, "]"));
  const int64_t device = flags.get_int("device");
  if (device < 0 || device >= xy::cuda::device_count())
    throw InvalidArgument(cat("tune: --device ", device, ": ", xy::cuda::device_count(), " CUDA devices found"));

  XY_CUDA_CHECK(cudaSetDevice(int(device)));
  const xy::cuda::DeviceInfo info = xy::cuda::device_info(int(device));
  fs::path out = flags.get("out");
  if (out.empty()) out = model_dir / meta::gemm_table_file_name(info.name);
  {
    // Fail now, not after the measurements, when the table cannot be written.
    const fs::path probe = fs::path(out.string() + ".tmp");
    std::ofstream test(probe);
    if (!test) throw InvalidArgument(cat("tune: cannot write ", out.string(), " (pass --out FILE)"));
    test.close();
    fs::remove(probe);
  }
  int l2_bytes = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, int(device)));

  const auto t0 = std::chrono::steady_clock::now();
  xy::cuda::Stream stream;
  TuneContext ctx;
  ctx.stream = stream.get();
  ctx.l2_bytes = size_t(l2_bytes);
  ctx.lt_alternates = int(lt_alternates);
  ctx.x_pattern = random_pattern(1, 1.0f);
  // The norm's input: the x pattern's values, so its output has rows as distinct as x's.
  ctx.residual_pattern.reserve(ctx.x_pattern.size());
  for (uint16_t v : ctx.x_pattern) ctx.residual_pattern.push_back(bf16_to_f32(v));
  ctx.w_pattern = random_pattern(2, 0.05f);
  std::printf("tune: %s on %s (%d SMs, L2 %d MB); %zu shapes x %zu M buckets\n", model_dir.c_str(),
              info.name.c_str(), info.num_sms, l2_bytes >> 20, shapes.size(), ms.size());
  std::printf("timing: CUDA graph replays, median of %d, weights rotating over >= %d x L2; "
              "outputs checked against cuBLASLt's default (bound %.0e (|y| + 1))\n",
              kReps, kRotateL2Multiple, kAgreeBound);
  std::printf("timed: each GEMM after the kernel that writes its x in the layer (silu_mul before down, an RMSNorm "
              "over [M, K] before the others; ours with PDL, "
              "cuBLASLt plainly): us = graph of [that kernel, GEMM] pairs less that kernel alone, per pair; "
              "gemv_t<t> not timed past M = %d t\n",
              kMaxGemvPasses);

  meta::GemmTable table(info.name, out.string());
  for (const LinearShape& s : shapes) table.add_shape(s.n, s.k, tune_shape(s, ms, ctx));
  // The table must resolve as the backend will load it (every id known, every cuBLASLt index
  // listed again by the heuristic) before it is written.
  { xy::cuda::SmoothGemm resolved(table, ms.back()); }
  table.save(out);

  double log_sum = 0, worst = INFINITY;
  for (double r : ctx.speedups) {
    log_sum += std::log(r);
    worst = std::min(worst, r);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nbest against cuBLASLt's default over %zu points: geometric mean %.3fx, lowest %.3fx\n",
              ctx.speedups.size(), std::exp(log_sum / double(ctx.speedups.size())), worst);
  std::printf("wrote %s (%.1f s)\n", out.c_str(), seconds);
  return 0;
#endif
}

}  // namespace xy::cli
