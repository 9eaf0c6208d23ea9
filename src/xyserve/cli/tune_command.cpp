// `xyserve tune --model DIR`: measures every SmoothGEMM candidate for the model's linear-layer
// shapes on this GPU, over buckets of M, and writes the dispatch table (meta/gemm_table.h) that
// the CUDA backend loads (backend/cuda/smooth_gemm.h).
//
// Candidates per (shape, M): every kernel of the family that runs the shape (gemm.h), cuBLASLt's
// default (what `--gemm cublas` runs: its heuristic's first algorithm at that M) and the next
// --lt-algos algorithms of its heuristic ("cublaslt:<i>"). Each is timed at the bucket's upper M
// as bench/cuda/gemm_bench.cu times (GEMM_NOTES.md): a CUDA graph of launches, median of kReps
// replays, operands rotating over >= 3x L2 of weights so that weights are cold, as in serving.
// Before it is timed, each candidate's output (poisoned first) is compared with cuBLASLt's
// default; a mismatch is reported and the candidate is not ranked.
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
      shapes.push_back({l.name, int(l.n), int(l.k)});
    }
  }
  return shapes;
}

// Copies of a random pattern into device memory, from `start` in the pattern, wrapping.
void fill_from_pattern(bf16* dst, size_t count, const std::vector<uint16_t>& pattern, size_t start) {
  size_t done = 0, pos = start % pattern.size();
  while (done < count) {
    const size_t chunk = std::min(pattern.size() - pos, count - done);
    XY_CUDA_CHECK(cudaMemcpy(dst + done, pattern.data() + pos, chunk * 2, cudaMemcpyHostToDevice));
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
// that no launch finds the weights of the previous one in L2.
struct Operands {
  int sets = 0;
  std::vector<DeviceBuffer<bf16>> x, w, y;
};

Operands make_operands(const LinearShape& s, int max_m, size_t l2_bytes, const std::vector<uint16_t>& x_pattern,
                       const std::vector<uint16_t>& w_pattern) {
  Operands o;
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

  // Median per-launch time of a CUDA graph of `iters` launches cycling over `sets` operand sets,
  // over kReps replays after one warm-up replay.
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
};

struct TuneContext {
  cudaStream_t stream = nullptr;
  size_t l2_bytes = 0;
  int lt_alternates = 0;
  std::vector<uint16_t> x_pattern, w_pattern;
  xy::cuda::LtGemm lt_default;
  xy::cuda::LtAlgoGemm lt_algos;
  std::vector<double> speedups;  // cuBLASLt default time / best time, every point
};

// Measures every candidate for shape `s` at each M of `ms`; returns one bucket per M and prints
// one line per M.
std::vector<meta::GemmBucket> tune_shape(const LinearShape& s, const std::vector<int>& ms, TuneContext& ctx) {
  const int max_m = ms.back();
  Operands ops = make_operands(s, max_m, ctx.l2_bytes, ctx.x_pattern, ctx.w_pattern);
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
  std::printf("%6s  %-15s %10s %12s %8s  %s\n", "M", "best", "us", "cublaslt us", "speedup", "not ranked");
  Timer timer(ctx.stream);
  std::vector<meta::GemmBucket> buckets;
  for (int m : ms) {
    const std::vector<int> rows = checked_rows(m);
    auto launch_default = [&](int set) {
      ctx.lt_default.run(ops.x[size_t(set)].get(), ops.w[size_t(set)].get(), ops.y[size_t(set)].get(),
                         xy::cuda::GemmOut::kBF16, m, s.n, s.k, ctx.stream);
    };
    std::vector<Candidate> candidates;
    for (xy::cuda::GemmKernel kernel : kernels) {
      candidates.push_back({xy::cuda::gemm_kernel_name(kernel), [&, kernel, m](int set) {
                              xy::cuda::GemmArgs args{ops.x[size_t(set)].get(), ops.w[size_t(set)].get(),
                                                      ops.y[size_t(set)].get(), m, s.n, s.k,
                                                      workspace.get(), workspace.bytes()};
                              // As the backend launches the layer GEMMs (cuda_backend.cu): with
                              // programmatic dependent launch, which PDL-aware kernels use to
                              // stream weights while the kernel before them ends.
                              args.pdl = true;
                              xy::cuda::gemm_launch(kernel, args, ctx.stream);
                            }});
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
    launch_default(0);
    const double probe_default = timer.single_us(launch_default, 1 % ops.sets);
    const auto iters_for = [](double probe_us) {
      return std::clamp(int(kReplayUs / std::max(probe_us, 1.0)), kMinIters, kMaxIters);
    };
    const double default_us = timer.graph_us(launch_default, iters_for(probe_default), ops.sets);
    launch_default(0);
    const std::vector<uint16_t> reference = copy_rows(ops.y[0].get(), m, s.n, rows, ctx.stream);

    std::string best_id = "cublaslt", not_ranked;
    double best_us = default_us;  // of the default and every candidate timed so far
    std::string winner_id;        // the fastest candidate, if it beats the default by kMinGain
    double winner_us = kMinGain * default_us;
    for (const Candidate& c : candidates) {
      c.launch(0);  // warm: module load, kernel attributes, cuBLASLt's kernel selection
      const double probe = timer.single_us(c.launch, 1 % ops.sets);
      if (probe > kPruneFactor * best_us + kPruneSlackUs) continue;  // cannot win
      XY_CUDA_CHECK(cudaMemsetAsync(ops.y[0].get(), 0xFF, size_t(m) * size_t(s.n) * 2, ctx.stream));  // NaN
      c.launch(0);
      const double diff = max_scaled_diff(copy_rows(ops.y[0].get(), m, s.n, rows, ctx.stream), reference);
      if (!(diff <= kAgreeBound)) {
        std::printf("  MISMATCH %s at M=%d: max |y - cublaslt| / (|cublaslt| + 1) = %.3g > %.3g\n", c.id.c_str(), m,
                    diff, kAgreeBound);
        not_ranked += cat(not_ranked.empty() ? "" : " ", c.id);
        continue;
      }
      const double us = timer.graph_us(c.launch, iters_for(probe), ops.sets);
      best_us = std::min(best_us, us);
      if (us < winner_us) {
        winner_us = us;
        winner_id = c.id;
      }
    }
    if (!winner_id.empty()) best_id = winner_id;
    const double chosen_us = winner_id.empty() ? default_us : winner_us;
    std::printf("%6d  %-15s %10.2f %12.2f %7.2fx  %s\n", m, best_id.c_str(), chosen_us, default_us,
                default_us / chosen_us, not_ranked.c_str());
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
  ctx.w_pattern = random_pattern(2, 0.05f);
  std::printf("tune: %s on %s (%d SMs, L2 %d MB); %zu shapes x %zu M buckets\n", model_dir.c_str(),
              info.name.c_str(), info.num_sms, l2_bytes >> 20, shapes.size(), ms.size());
  std::printf("timing: CUDA graph replays, median of %d, weights rotating over >= %d x L2; "
              "outputs checked against cuBLASLt's default (bound %.0e (|y| + 1))\n",
              kReps, kRotateL2Multiple, kAgreeBound);

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
