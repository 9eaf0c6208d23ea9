// Sharded = unsharded on the CPU (issue 8): the tensor-parallel CPU backend with N ranks (each
// its shard of the model, on its own thread, joined by the in-process communicator) against the
// unsharded CpuBackend, on tiny models of every architecture, for N = 1, 2, 4; with KV heads
// fewer than N (replicated), MQA, MHA, tied embeddings, and a vocabulary (509) that no N > 1
// divides.
//
// Logits: N = 1 is bitwise the unsharded result (one rank's sums are the whole sums). For N > 1
// the only difference is the order of fp32 additions: o_proj and down_proj sum their K inputs as
// N partial dot products added in rank order instead of one, so each such output moves by a few
// ulps of its terms' magnitude, and the logits inherit that through two layers. The bound,
// |logit_N - logit_1| <= 1e-6 + 1e-6 |logit_1|, is ~14x the largest difference measured on these
// models (1.2e-7, two ulps of logits of magnitude ~0.65, for every architecture and N); a
// sharding mistake (a wrong head, column, KV head or vocabulary row, a missing all-reduce) moves
// logits by the scale of the logits themselves (0.4-0.5 measured) and fails it at once.
// Greedy tokens through the engine (with prefix caching and speculative draft trees, which move
// KV slots on every rank) must be identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "engine/tiny_model.h"
#include "parallel/tp_test_models.h"
#include "xyserve/backend/cpu/cpu_tensor_parallel.h"
#include "xyserve/parallel/in_process_communicator.h"

namespace xy::parallel {
namespace {

using backend::cpu::CpuBackend;
using backend::cpu::CpuBackendOptions;
using testing::kTpVocab;
using testing::TpModel;
using testing::tp_weights;

constexpr int32_t kBlocks = 96;
constexpr int32_t kBlockSize = 16;

CpuBackendOptions options(int threads) {
  CpuBackendOptions o;
  o.num_kv_blocks = kBlocks;
  o.block_size = kBlockSize;
  o.num_threads = threads;
  return o;
}

std::unique_ptr<CpuBackend> whole_backend(const TpModel& m) {
  return std::make_unique<CpuBackend>(tp_weights(m), options(1));
}

std::unique_ptr<TensorParallelBackend> sharded_backend(const TpModel& m, int32_t size) {
  return backend::cpu::make_tensor_parallel_cpu_backend(tp_weights(m), options(size), size);
}

struct LogitsError {
  double max_abs_diff = 0, max_abs_logit = 0;
  int64_t num_outside = 0;
};

void accumulate(const std::vector<float>& whole, const std::vector<float>& sharded, LogitsError& e) {
  ASSERT_EQ(whole.size(), sharded.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    const double a = whole[i], b = sharded[i], d = std::abs(a - b);
    e.max_abs_diff = std::max(e.max_abs_diff, d);
    e.max_abs_logit = std::max(e.max_abs_logit, std::abs(a));
    e.num_outside += !(d <= 1e-6 + 1e-6 * std::abs(a));  // NaN counts as outside
  }
}

// Runs the same steps on the unsharded and the sharded backend: prefill chunks of three
// sequences (one chunk ending mid-prompt without logits), a draft-tree verify, then decodes
// past the mistral window (32) and several block boundaries. Returns the logits error.
LogitsError compare_logits(const TpModel& m, int32_t size) {
  auto whole = whole_backend(m);
  auto sharded = sharded_backend(m, size);
  EXPECT_EQ(sharded->vocab_size(), kTpVocab);
  EXPECT_EQ(sharded->num_kv_blocks(), kBlocks);
  const std::vector<meta::StepPlan> plans =
      testing::tp_test_steps(/*seed=*/uint64_t(size) * 100 + 1, kBlocks, kBlockSize, 30);
  LogitsError error;
  std::vector<float> want, got;
  for (const meta::StepPlan& plan : plans) {
    whole->forward(plan, want);
    sharded->forward(plan, got);
    if (size == 1) {
      EXPECT_EQ(want, got) << "one rank must be bitwise the unsharded backend";
    }
    accumulate(want, got, error);
  }
  return error;
}

// Greedy tokens of the engine on both backends: with prefix caching, and with n-gram draft trees.
void compare_greedy(const TpModel& m, int32_t size) {
  const auto prompts = testing::random_prompts(6, 1, 50, /*seed=*/21, kTpVocab);
  for (const bool speculative : {false, true}) {
    engine::EngineConfig config;
    if (speculative) {
      config.speculative_method = engine::SpeculativeMethod::kNgram;
      config.scheduler.num_speculative_tokens = 3;
      config.ngram.tree = true;
    }
    auto whole = whole_backend(m);
    auto sharded = sharded_backend(m, size);
    engine::Engine whole_engine(*whole, nullptr, config);
    engine::Engine sharded_engine(*sharded, nullptr, config);
    const auto want = testing::outputs_of(whole_engine.generate_batch(prompts, testing::greedy_options(24)));
    const auto got = testing::outputs_of(sharded_engine.generate_batch(prompts, testing::greedy_options(24)));
    EXPECT_EQ(got, want) << m.name() << " size " << size << (speculative ? " speculative trees" : "");
    if (speculative) {
      EXPECT_GT(sharded_engine.stats().scheduler.num_accepted_tokens, 0);
    }
  }
}

void expect_logits_close(const TpModel& m, int32_t size) {
  const LogitsError e = compare_logits(m, size);
  EXPECT_EQ(e.num_outside, 0) << m.name() << " size " << size << ": max |diff| " << e.max_abs_diff;
  EXPECT_GT(e.max_abs_logit, 1e-2) << "logits too small for the bound to mean anything";
  std::printf("[ tp logits ] %s size %d: max |diff| %.3g, max |logit| %.3g\n", m.name().c_str(), size,
              e.max_abs_diff, e.max_abs_logit);
}

class TensorParallelTest : public ::testing::TestWithParam<std::tuple<const char*, int32_t>> {
 protected:
  TpModel model() const { return {std::get<0>(GetParam()), 4, 2}; }
  int32_t size() const { return std::get<1>(GetParam()); }
};

TEST_P(TensorParallelTest, LogitsMatchUnsharded) { expect_logits_close(model(), size()); }

TEST_P(TensorParallelTest, GreedyTokensMatchUnsharded) { compare_greedy(model(), size()); }

INSTANTIATE_TEST_SUITE_P(ArchitecturesAndSizes, TensorParallelTest,
                         ::testing::Combine(::testing::Values("llama", "qwen2", "qwen3", "mistral"),
                                            ::testing::Values(1, 2, 4)));

TEST(TensorParallelHeadsTest, ReplicatedAndSplitKvHeadsMatchUnsharded) {
  for (const auto& [m, size] : {std::pair{TpModel{"llama", 4, 1}, 2},  // MQA: replicated
                                std::pair{TpModel{"llama", 4, 1}, 4},
                                std::pair{TpModel{"llama", 4, 4}, 2},  // MHA: two KV heads a rank
                                std::pair{TpModel{"llama", 8, 2}, 4},  // 2 query heads, 1 replicated KV
                                std::pair{TpModel{"qwen2", 4, 2, /*tied=*/true}, 4}}) {
    expect_logits_close(m, size);
    compare_greedy(m, size);
  }
}

// A rank backend that meets the others once, then fails on rank `failing` while the others wait
// in a second collective.
class FailingRank : public backend::Backend {
 public:
  FailingRank(Communicator& comm, int32_t failing) : comm_(comm), failing_(failing) {}
  void forward(const meta::StepPlan&, std::vector<float>& logits) override {
    float x = 1.0f;
    comm_.all_reduce_sum(&x, 1);
    if (comm_.rank() == failing_) throw InvalidArgument(cat("rank ", failing_, " failed"));
    comm_.all_reduce_sum(&x, 1);
    logits.assign(1, x);
  }
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan&,
                          meta::SamplingOutput&) override {
    std::vector<float> logits;
    forward(plan, logits);
  }
  int64_t vocab_size() const override { return 1; }
  int32_t num_kv_blocks() const override { return 1; }
  int32_t block_size() const override { return 16; }

 private:
  Communicator& comm_;
  int32_t failing_;
};

TEST(TensorParallelBackendTest, AFailingRanksErrorReachesTheCallerWithoutDeadlock) {
  for (const int32_t failing : {0, 2}) {
    TensorParallelBackend tp(tp_weights({"llama", 4, 2}), make_in_process_group(4),
                             [&](const ShardedWeights&, Communicator& comm) {
                               return std::make_unique<FailingRank>(comm, failing);
                             });
    std::vector<float> logits;
    try {
      tp.forward(meta::StepPlan{}, logits);
      ADD_FAILURE() << "no error";
    } catch (const GroupAborted& e) {
      ADD_FAILURE() << "the failing rank's error was lost: " << e.what();
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()), cat("rank ", failing, " failed"));
    }
    // The group stays aborted: later steps fail at once instead of hanging.
    EXPECT_THROW(tp.forward(meta::StepPlan{}, logits), GroupAborted);
  }
}

TEST(TensorParallelBackendTest, AFailingRankFactoryFailsTheConstructor) {
  auto make = [](const ShardedWeights& shard, Communicator& comm) -> std::unique_ptr<backend::Backend> {
    if (shard.info.rank == 1) throw ModelError("rank 1 could not load");
    return std::make_unique<FailingRank>(comm, -1);
  };
  EXPECT_THROW(TensorParallelBackend(tp_weights({"llama", 4, 2}), make_in_process_group(2), make), ModelError);
  // A model that does not split fails before any rank is built.
  EXPECT_THROW(TensorParallelBackend(tp_weights({"llama", 4, 2}), make_in_process_group(3), make),
               InvalidArgument);
}

}  // namespace
}  // namespace xy::parallel
