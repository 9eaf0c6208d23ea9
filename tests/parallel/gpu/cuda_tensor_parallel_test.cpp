// The CUDA backend as a tensor-parallel rank (issue 8): sharded = unsharded on the GPU.
//
// 1. One GPU, N = 1, 2, 4 ranks joined by the device in-process communicator (the tests'
//    stand-in for NCCL, which refuses two ranks on one GPU: device_in_process_communicator.h),
//    CUDA graphs off (the stand-in cannot be captured), against the unsharded CudaBackend on the
//    same bf16 weights, over every plan feature, on tiny models with a vocabulary of 509 (no
//    N > 1 divides it), KV heads fewer than N (replicated), MQA, tied embeddings, q/k norms,
//    biases, sliding windows, and head_dim 16 (the CUDA-core attention kernel) and 64 (the
//    tensor-core kernels).
//    - N = 1 is bitwise the unsharded backend: the same kernels on the same shapes, and
//      collectives of one rank that change nothing.
//    - N > 1: per logits row, max_j |sharded - unsharded| <= 2e-2 * max_j |unsharded|. Both run
//      the same bf16 pipeline; they differ in where it rounds: each rank's o_proj and down_proj
//      partial sum is rounded to bf16 before the all-reduce (the unsharded GEMM rounds the whole
//      sum once), GEMMs of other shapes may take other cuBLASLt kernels (other split-K, so
//      other fp32 rounding before the bf16 one), and the attention KV split may differ (its rule
//      counts tasks x KV heads). Each is a bf16 rounding (2^-8 relative) carried through two
//      layers, the kind of difference tests/cuda/cuda_graph_test.cpp bounds at 2e-2 (row L2)
//      for a padded step's other GEMM rounding, where it estimates ~1e-3. A sharding mistake (a
//      wrong head, column, KV head or vocabulary row, a missing all-reduce) moves logits by the
//      scale of the logits, ~1 in this measure.
//    - Greedy tokens, sampled on the sharded backend's rank 0 over the gathered logits
//      (forward_and_sample), through a prefill and decode steps: equal to the unsharded argmax
//      wherever its top two logits are more than twice the bound apart (no rounding within the
//      bound can swap them), which must be most rows; agreement on the rest is reported.
//    And through the engine (scheduler, prefix cache, n-gram draft trees), greedy output is
//    reported against the unsharded engine's, its first tokens held to agree.
// 2. Real NCCL, one rank (make_nccl_group({0})), CUDA graphs ON: bitwise the unsharded backend,
//    logits and greedy engine output, with decode steps replayed from graphs that captured the
//    rank's collectives. With 2+ GPUs, N ranks over NCCL with graphs against the unsharded
//    backend within the bound above (skipped on one GPU).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/device_test_util.h"
#include "engine/tiny_model.h"
#include "parallel/gpu/device_in_process_communicator.h"
#include "parallel/tp_test_models.h"
#include "support/plan_feature_tour.h"
#include "support/plan_sequences.h"
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/cuda_tensor_parallel.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/parallel/nccl/nccl_communicator.h"
#include "xyserve/parallel/shard.h"

namespace xy::backend::cuda {
namespace {

namespace fs = std::filesystem;
using testing::kTpVocab;
using testing::TpModel;

constexpr int32_t kBlocks = 256;
constexpr int32_t kBlockSize = 16;
constexpr double kBound = 2e-2;  // per row: max |diff| / max |logit| (header)

// A model of the tensor-parallel tests (tp_test_models.h), written in bf16 as the GPU runs it;
// wide: head_dim 64, hidden 256, intermediate 512 (the tensor-core attention kernels: wgmma for
// prefill, the decode kernel for decodes) where the tiny preset's head_dim 16 runs the CUDA-core
// kernel.
struct CudaTpModel {
  TpModel base;
  bool wide = false;
  std::string name() const { return base.name() + (wide ? "_wide" : ""); }
};

void PrintTo(const CudaTpModel& m, std::ostream* os) { *os << m.name(); }

const model::ModelWeights& weights_of(const CudaTpModel& m) {
  static std::map<std::string, std::unique_ptr<model::ModelWeights>> cache;
  auto& w = cache[m.name()];
  if (!w) {
    model::ModelConfig c = m.base.config();
    if (m.wide) {
      c.head_dim = 64;
      c.hidden_size = 256;
      c.intermediate_size = 512;
    }
    const fs::path dir = fs::temp_directory_path() / ("xy_cuda_tp_test_" + m.name() + "_" + std::to_string(::getpid()));
    model::write_random_checkpoint(c, dir, /*seed=*/11, DType::kBF16);
    w = model::load_model(dir);
    fs::remove_all(dir);
  }
  return *w;
}

CudaBackendOptions options(bool cuda_graphs) {
  CudaBackendOptions o;
  o.num_kv_blocks = kBlocks;
  o.block_size = kBlockSize;
  o.max_num_tokens = 2048;
  o.max_logits_rows = 256;
  o.cuda_graphs = cuda_graphs;
  return o;
}

std::unique_ptr<CudaBackend> whole_backend(const CudaTpModel& m, bool cuda_graphs) {
  return std::make_unique<CudaBackend>(weights_of(m), options(cuda_graphs));
}

// `size` ranks on GPU 0, through the same factory as NCCL ranks, joined by the device
// in-process communicator; graphs off, since it cannot be captured.
std::unique_ptr<parallel::TensorParallelBackend> sharded_on_one_gpu(const CudaTpModel& m, int32_t size) {
  return make_tensor_parallel_cuda_backend(
      weights_of(m), options(false), parallel::make_device_in_process_group(size), std::vector<int>(size_t(size), 0),
      [](parallel::Communicator& comm, cudaStream_t stream) {
        static_cast<parallel::DeviceInProcessCommunicator&>(comm).set_stream(stream);
      });
}

int num_gpus() { return xy::cuda::device_count(); }

// ---- logits -----------------------------------------------------------------------------------

struct LogitsError {
  double max_rel = 0;          // over rows: max_j |got - want| / max_j |want|
  double max_abs_logit = 0;
  int64_t rows = 0, rows_outside = 0;
  bool bitwise = true;
};

void accumulate(const std::vector<float>& want, const std::vector<float>& got, int64_t vocab, LogitsError& e) {
  ASSERT_EQ(want.size(), got.size());
  e.bitwise = e.bitwise && std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0;
  for (size_t r = 0; r < want.size() / size_t(vocab); ++r) {
    double max_diff = 0, range = 0;
    for (size_t j = r * size_t(vocab); j < (r + 1) * size_t(vocab); ++j) {
      max_diff = std::max(max_diff, std::isfinite(got[j]) ? std::fabs(double(got[j]) - double(want[j])) : INFINITY);
      range = std::max(range, std::fabs(double(want[j])));
    }
    const double rel = max_diff / std::max(range, 1e-30);
    e.max_rel = std::max(e.max_rel, rel);
    e.max_abs_logit = std::max(e.max_abs_logit, range);
    e.rows += 1;
    e.rows_outside += !(rel <= kBound);  // NaN counts as outside
  }
}

using testing::StepRunner;

// The plan feature tour (support/plan_feature_tour.h) on sequences of its own.
void run_scenario(int64_t vocab, uint64_t seed, int repeats, const StepRunner& run) {
  testing::PlanSequences sc(vocab, seed, kBlocks, kBlockSize);
  testing::run_plan_feature_tour(sc, repeats, run);
}

LogitsError compare_logits(Backend& whole, Backend& sharded, uint64_t seed, int repeats = 2) {
  EXPECT_EQ(sharded.vocab_size(), whole.vocab_size());
  EXPECT_EQ(sharded.num_kv_blocks(), whole.num_kv_blocks());
  LogitsError error;
  std::vector<float> want, got;
  run_scenario(whole.vocab_size(), seed, repeats, [&](const meta::StepPlan& plan, const char* what) {
    SCOPED_TRACE(what);
    whole.forward(plan, want);
    sharded.forward(plan, got);
    accumulate(want, got, whole.vocab_size(), error);
  });
  return error;
}

// ---- greedy tokens ----------------------------------------------------------------------------

struct GreedyAgreement {
  int64_t rows = 0, decided = 0, equal = 0;
};

// A prefill of six prompts, then decode steps, teacher-forced: every sequence's next token is the
// unsharded backend's argmax, so both backends see the same inputs at every step. The sharded
// backend samples greedily (forward_and_sample: rank 0's sampler over the gathered logits); its
// token must be the unsharded argmax wherever the unsharded top two logits are more than
// 2 * kBound * max |logit| apart.
GreedyAgreement compare_greedy(Backend& whole, Backend& sharded, uint64_t seed, int num_decodes) {
  const int64_t vocab = whole.vocab_size();
  testing::PlanSequences seqs(vocab, seed, kBlocks, kBlockSize);
  for (auto& prompt : testing::random_prompts(6, 1, 60, seed, vocab)) seqs.seq(seqs.add_seq(0)).tokens = prompt;
  GreedyAgreement agreement;
  std::vector<float> logits;
  meta::SamplingOutput out;
  for (int step = 0; step <= num_decodes; ++step) {
    meta::StepPlan plan;
    plan.block_size = kBlockSize;
    for (int32_t i = 0; i < seqs.size(); ++i) {
      if (step == 0) seqs.add_rows(plan, i, int32_t(seqs.seq(i).tokens.size()), 1);
      else seqs.add_decode(plan, i);
    }
    meta::SamplingPlan sampling;
    sampling.rows.resize(size_t(plan.num_logits_rows()));
    for (meta::RowSampling& row : sampling.rows) row.params.temperature = 0.0f;
    whole.forward(plan, logits);
    sharded.forward_and_sample(plan, sampling, out);
    EXPECT_EQ(out.tokens.size(), size_t(seqs.size()));
    for (int32_t i = 0; i < seqs.size() && size_t(i) < out.tokens.size(); ++i) {
      const float* row = logits.data() + size_t(i) * size_t(vocab);
      int64_t best = 0, second = -1;  // lowest id on ties, as the samplers
      double range = 0;
      for (int64_t j = 0; j < vocab; ++j) {
        range = std::max(range, std::fabs(double(row[j])));
        if (j == 0) continue;
        if (row[j] > row[best]) {
          second = best;
          best = j;
        } else if (second < 0 || row[j] > row[second]) {
          second = j;
        }
      }
      const bool decided = double(row[best]) - double(row[second]) > 2.0 * kBound * range;
      agreement.rows += 1;
      agreement.decided += decided;
      agreement.equal += out.tokens[size_t(i)] == best;
      if (decided) {
        EXPECT_EQ(out.tokens[size_t(i)], best) << "step " << step << " sequence " << i;
      }
      seqs.seq(i).tokens.push_back(int32_t(best));  // the next step decodes it
    }
  }
  return agreement;
}

// ---- 1. one GPU, the device in-process communicator ---------------------------------------------

class OneGpuTensorParallel : public ::testing::TestWithParam<std::tuple<CudaTpModel, int32_t>> {
 protected:
  const CudaTpModel& model() const { return std::get<0>(GetParam()); }
  int32_t size() const { return std::get<1>(GetParam()); }
};

TEST_P(OneGpuTensorParallel, LogitsMatchUnsharded) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  auto whole = whole_backend(model(), false);
  auto sharded = sharded_on_one_gpu(model(), size());
  const LogitsError e = compare_logits(*whole, *sharded, /*seed=*/uint64_t(size()) * 100 + 1);
  testing::gpu_report(cat("[cuda tp logits] ", model().name(), " size ", size(), ": ", e.rows,
                          " rows, max |diff| / max |logit| ", e.max_rel, ", max |logit| ", e.max_abs_logit,
                          e.bitwise ? ", bitwise" : ""));
  EXPECT_GT(e.max_abs_logit, 1e-2) << "logits too small for the bound to mean anything";
  if (size() == 1) {
    EXPECT_TRUE(e.bitwise) << "one rank must be bitwise the unsharded backend";
  }
  EXPECT_EQ(e.rows_outside, 0) << "max |diff| / max |logit| " << e.max_rel;
}

TEST_P(OneGpuTensorParallel, GreedyTokensMatchUnshardedWhereDecided) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  auto whole = whole_backend(model(), false);
  auto sharded = sharded_on_one_gpu(model(), size());
  const GreedyAgreement g = compare_greedy(*whole, *sharded, /*seed=*/uint64_t(size()) * 10 + 3, /*num_decodes=*/12);
  testing::gpu_report(cat("[cuda tp greedy] ", model().name(), " size ", size(), ": ", g.equal, "/", g.rows,
                          " tokens equal; ", g.decided, " rows decided beyond the bound"));
  // The gap between the top two of 509 near-Gaussian logits is about exponential with mean
  // ~0.28 sigma, the margin (4% of a range of ~3.5 sigma) ~0.14 sigma: ~60% of rows are decided.
  // At least a third must be, or the check has no teeth.
  EXPECT_GE(g.decided * 3, g.rows) << "too few rows decided for the check to mean anything";
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<CudaTpModel, int32_t>>& info) {
  return std::get<0>(info.param).name() + "_size" + std::to_string(std::get<1>(info.param));
}

// {model, N}: KV heads split (h4 kv2 at 2), replicated (kv2 at 4, MQA at 2 and 4), MHA-like
// two KV heads a rank (h8 kv2 wide at 2: 4 query heads, 1 KV head), tied + bias (qwen2), q/k
// norms (qwen3), windows (mistral).
INSTANTIATE_TEST_SUITE_P(
    ModelsAndSizes, OneGpuTensorParallel,
    ::testing::Values(std::tuple{CudaTpModel{{"llama", 4, 2}}, 1}, std::tuple{CudaTpModel{{"llama", 4, 2}}, 2},
                      std::tuple{CudaTpModel{{"llama", 4, 2}}, 4}, std::tuple{CudaTpModel{{"llama", 4, 1}}, 2},
                      std::tuple{CudaTpModel{{"llama", 4, 1}}, 4},
                      std::tuple{CudaTpModel{{"qwen2", 4, 2, /*tied=*/true}}, 4},
                      std::tuple{CudaTpModel{{"qwen3", 4, 2}}, 2}, std::tuple{CudaTpModel{{"mistral", 4, 2}}, 2},
                      std::tuple{CudaTpModel{{"llama", 8, 2}, /*wide=*/true}, 1},
                      std::tuple{CudaTpModel{{"llama", 8, 2}, /*wide=*/true}, 2},
                      std::tuple{CudaTpModel{{"llama", 8, 2}, /*wide=*/true}, 4},
                      std::tuple{CudaTpModel{{"qwen3", 4, 2}, /*wide=*/true}, 2}),
    case_name);

// Greedy output of the engine (prefix cache on, n-gram draft trees) on 2 ranks against the
// unsharded engine: reported; the first token of each prompt (decided by one prefill, before
// any divergence can compound) must agree for most prompts, which a broken rank (agreement near
// chance, 1/509) cannot do.
TEST(OneGpuTensorParallelEngine, GreedyOutputAgainstTheUnshardedEngine) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  const CudaTpModel m{{"llama", 8, 2}, /*wide=*/true};
  const auto prompts = testing::random_prompts(8, 1, 60, /*seed=*/31, kTpVocab);
  engine::EngineConfig config;
  config.speculative_method = engine::SpeculativeMethod::kNgram;
  config.scheduler.num_speculative_tokens = 3;
  config.ngram.tree = true;
  auto whole = whole_backend(m, false);
  auto sharded = sharded_on_one_gpu(m, 2);
  engine::Engine whole_engine(*whole, nullptr, config);
  engine::Engine sharded_engine(*sharded, nullptr, config);
  const auto want = testing::outputs_of(whole_engine.generate_batch(prompts, testing::greedy_options(16)));
  const auto got = testing::outputs_of(sharded_engine.generate_batch(prompts, testing::greedy_options(16)));
  ASSERT_EQ(got.size(), want.size());
  int64_t tokens = 0, agreeing = 0, first_equal = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i].size(), want[i].size()) << "prompt " << i;
    size_t j = 0;
    while (j < want[i].size() && got[i][j] == want[i][j]) ++j;
    tokens += int64_t(want[i].size());
    agreeing += int64_t(j);
    first_equal += !want[i].empty() && got[i][0] == want[i][0];
  }
  testing::gpu_report(cat("[cuda tp engine] ", m.name(), " size 2 vs unsharded: tokens agree up to the first divergence ",
                          agreeing, "/", tokens, ", first tokens ", first_equal, "/", want.size(), ", accepted drafts ",
                          sharded_engine.stats().scheduler.num_accepted_tokens));
  EXPECT_GE(first_equal * 4, int64_t(want.size()) * 3);
}

// ---- 2. real NCCL -------------------------------------------------------------------------------

// One NCCL rank, built by hand to read its graph counters: its collectives (embedding and
// projection all-reduces, the logits all-gather) are captured in the decode graphs and replayed.
TEST(NcclTensorParallel, OneRankWithGraphsIsBitwiseTheUnshardedBackend) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  for (const CudaTpModel& m : {CudaTpModel{{"llama", 8, 2}, /*wide=*/true}, CudaTpModel{{"qwen2", 4, 2, /*tied=*/true}}}) {
    SCOPED_TRACE(m.name());
    auto comms = parallel::make_nccl_group({0});
    auto& nccl = static_cast<parallel::NcclCommunicator&>(*comms[0]);
    const parallel::ShardedWeights shard = parallel::shard_weights(weights_of(m), 0, 1);
    CudaBackendOptions o = options(true);
    o.communicator = &nccl;
    o.shard = shard.info;
    o.bind_communicator_stream = [&nccl](cudaStream_t stream) { nccl.set_stream(stream); };
    CudaBackend rank(shard.weights, o);
    auto whole = whole_backend(m, true);
    EXPECT_EQ(nccl.stream(), rank.stream());
    const LogitsError e = compare_logits(*whole, rank, /*seed=*/7, /*repeats=*/3);
    EXPECT_TRUE(e.bitwise) << "max |diff| / max |logit| " << e.max_rel;
    EXPECT_EQ(rank.cuda_graph_captures(), whole->cuda_graph_captures());
    EXPECT_EQ(rank.cuda_graph_replays(), whole->cuda_graph_replays());
    EXPECT_GE(rank.cuda_graph_captures(), 3) << "buckets 1, 2 and 4";
    EXPECT_GE(rank.cuda_graph_replays(), 6);
  }
}

// The factory's path (make_tensor_parallel_cuda_backend with one device) through the engine,
// graphs on: tokens and logprobs bitwise the unsharded engine's.
TEST(NcclTensorParallel, OneRankEngineIsBitwiseTheUnshardedEngine) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  const CudaTpModel m{{"qwen3", 4, 2}, /*wide=*/true};
  const auto prompts = testing::random_prompts(8, 1, 60, /*seed=*/41, kTpVocab);
  engine::GenerationOptions greedy = testing::greedy_options(20);
  greedy.sampling.logprobs = 0;
  auto whole = whole_backend(m, true);
  auto sharded = make_tensor_parallel_cuda_backend(weights_of(m), options(true), 1, {0});
  engine::Engine whole_engine(*whole, nullptr, {});
  engine::Engine sharded_engine(*sharded, nullptr, {});
  const auto want = whole_engine.generate_batch(prompts, greedy);
  const auto got = sharded_engine.generate_batch(prompts, greedy);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].output_ids, want[i].output_ids) << "prompt " << i;
    EXPECT_EQ(got[i].logprobs, want[i].logprobs) << "prompt " << i;
  }
}

// Every GPU a rank (the multi-GPU kinds only): NCCL's own sum order, graphs on.
TEST(NcclTensorParallel, EveryGpuARankMatchesUnsharded) {
  if (num_gpus() < 2) GTEST_SKIP() << "one GPU: no multi-rank NCCL run";
  const int32_t size = num_gpus() >= 4 ? 4 : 2;
  std::vector<int> devices;
  for (int d = 0; d < size; ++d) devices.push_back(d);
  for (const CudaTpModel& m : {CudaTpModel{{"llama", 8, 2}, /*wide=*/true}, CudaTpModel{{"llama", 4, 1}}}) {
    SCOPED_TRACE(m.name());
    auto whole = whole_backend(m, true);
    auto sharded = make_tensor_parallel_cuda_backend(weights_of(m), options(true), size, devices);
    XY_CUDA_CHECK(cudaSetDevice(0));
    const LogitsError e = compare_logits(*whole, *sharded, /*seed=*/5, /*repeats=*/3);
    testing::gpu_report(cat("[cuda tp nccl] ", m.name(), " size ", size, ": max |diff| / max |logit| ", e.max_rel));
    EXPECT_EQ(e.rows_outside, 0) << "max |diff| / max |logit| " << e.max_rel;
    auto whole2 = whole_backend(m, true);
    auto sharded2 = make_tensor_parallel_cuda_backend(weights_of(m), options(true), size, devices);
    XY_CUDA_CHECK(cudaSetDevice(0));
    const GreedyAgreement g = compare_greedy(*whole2, *sharded2, /*seed=*/9, /*num_decodes=*/12);
    testing::gpu_report(cat("[cuda tp nccl greedy] ", m.name(), " size ", size, ": ", g.equal, "/", g.rows,
                            " tokens equal; ", g.decided, " decided"));
  }
}

}  // namespace
}  // namespace xy::backend::cuda
