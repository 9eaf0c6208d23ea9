// A request's logits do not depend on the batch it runs in: the same requests run together in
// one step and each alone (on another backend, with other block ids) give bitwise equal logits.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::backend::cpu {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kBlockSize = 4;

struct Slice {
  int32_t request;  // index into the sequences
  int32_t num_new;  // rows this step
};

// Runs steps over several sequences, each with its own blocks taken from a shuffled pool.
class Batcher {
 public:
  Batcher(CpuBackend& backend, const std::vector<std::vector<int32_t>>& seqs, uint32_t seed)
      : backend_(backend), seqs_(seqs), computed_(seqs.size(), 0), tables_(seqs.size()) {
    std::vector<int32_t> ids(static_cast<size_t>(backend.num_kv_blocks()));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    size_t next = 0;
    for (size_t r = 0; r < seqs.size(); ++r) {
      const size_t n = (seqs[r].size() + kBlockSize - 1) / kBlockSize;
      tables_[r].assign(ids.begin() + ptrdiff_t(next), ids.begin() + ptrdiff_t(next + n));
      next += n;
    }
  }

  // One step with the given slices; every row gets logits.
  std::vector<float> step(const std::vector<Slice>& slices) {
    meta::StepPlan plan;
    plan.block_size = kBlockSize;
    for (const Slice& s : slices) {
      meta::ScheduledRequest r;
      r.request_id = s.request;
      r.num_computed_tokens = computed_[size_t(s.request)];
      r.num_new_tokens = s.num_new;
      r.first_row = plan.num_rows();
      r.num_logits_rows = s.num_new;
      r.block_table = tables_[size_t(s.request)];
      for (int32_t i = 0; i < s.num_new; ++i) {
        plan.token_ids.push_back(seqs_[size_t(s.request)][size_t(r.num_computed_tokens + i)]);
        plan.positions.push_back(r.num_computed_tokens + i);
      }
      computed_[size_t(s.request)] += s.num_new;
      plan.requests.push_back(r);
    }
    std::vector<float> logits;
    backend_.forward(plan, logits);
    return logits;
  }

 private:
  CpuBackend& backend_;
  std::vector<std::vector<int32_t>> seqs_;
  std::vector<int32_t> computed_;
  std::vector<std::vector<int32_t>> tables_;
};

TEST(CpuBackend, BatchedStepEqualsEachRequestAlone) {
  const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" / "batch_qwen2";
  auto config = model::preset_config("qwen2", "tiny");
  config.sliding_window = {0, 7};
  model::write_random_checkpoint(config, dir, 77);
  const auto weights = model::load_model(dir);
  const int64_t vocab = weights->config.vocab_size;

  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> seqs(4);
  const int lengths[] = {13, 21, 14, 30};
  for (size_t r = 0; r < seqs.size(); ++r) {
    for (int i = 0; i < lengths[r]; ++i) seqs[r].push_back(int32_t(rng() % uint32_t(vocab)));
  }
  CpuBackendOptions options;
  options.block_size = kBlockSize;
  options.num_kv_blocks = 40;
  options.num_threads = 2;

  // History steps then a mixed step: a fresh prefill (0), a decode (1), a chunk with a prefix
  // (2), and a long chunk crossing the window (3).
  const std::vector<std::vector<Slice>> batched_steps = {
      {{1, 20}, {2, 9}, {3, 3}},
      {{0, 13}, {1, 1}, {2, 5}, {3, 27}},
  };
  CpuBackend together(*weights, options);
  Batcher batched(together, seqs, 1);
  std::vector<std::vector<float>> batched_logits;
  for (const auto& s : batched_steps) batched_logits.push_back(batched.step(s));

  CpuBackend apart(*weights, options);
  Batcher alone(apart, seqs, 2);
  for (size_t step = 0; step < batched_steps.size(); ++step) {
    size_t row = 0;
    for (const Slice& s : batched_steps[step]) {
      const auto l = alone.step({s});
      ASSERT_EQ(0, std::memcmp(l.data(), batched_logits[step].data() + row * size_t(vocab),
                               l.size() * sizeof(float)))
          << "step " << step << " request " << s.request;
      row += size_t(s.num_new);
    }
  }
}

TEST(CpuBackend, WrongWeightShapeIsAModelErrorNamingTheTensor) {
  const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" / "shape_llama";
  const auto config = model::preset_config("llama", "tiny");
  model::write_random_checkpoint(config, dir, 3);
  auto weights = model::load_model(dir);
  weights->layers[1].o_proj.shape = {config.hidden_size, config.hidden_size + 1};
  CpuBackendOptions options;
  options.num_kv_blocks = 4;
  try {
    CpuBackend backend(*weights, options);
    FAIL() << "no error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find(weights->layers[1].o_proj.name), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace xy::backend::cpu

namespace xy::backend::cpu {
namespace {

// Past kv_split (512) positions a row's KV span is cut into pieces merged by log-sum-exp. The
// pieces are fixed by position, so feeding a long prompt in one step, in odd chunks, or a token
// at a time gives bitwise equal logits, with and without a sliding window.
TEST(CpuBackend, LongContextSplitSpansGiveTheSameLogitsHoweverThePromptIsChunked) {
  for (const char* arch : {"llama", "mistral"}) {
    const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" / (std::string("long_") + arch);
    model::write_random_checkpoint(model::preset_config(arch, "tiny"), dir, 91);
    const auto weights = model::load_model(dir);
    const int64_t vocab = weights->config.vocab_size;
    std::mt19937 rng(6);
    const int32_t n = 1300;
    std::vector<std::vector<int32_t>> seqs(1);
    for (int32_t i = 0; i < n; ++i) seqs[0].push_back(int32_t(rng() % uint32_t(vocab)));
    CpuBackendOptions options;
    options.block_size = kBlockSize;
    options.num_kv_blocks = n / kBlockSize + 8;
    options.num_threads = 2;

    // Logits of the last 3 rows, each way.
    auto last_rows = [&](const std::vector<int32_t>& chunks, uint32_t seed) {
      CpuBackend backend(*weights, options);
      Batcher b(backend, seqs, seed);
      std::vector<float> all;
      for (int32_t c : chunks) {
        const auto l = b.step({{0, c}});
        all.insert(all.end(), l.begin(), l.end());
      }
      return std::vector<float>(all.end() - 3 * vocab, all.end());
    };
    const auto whole = last_rows({n}, 1);
    std::vector<int32_t> odd = {511, 2, 300, 257};
    odd.push_back(n - 511 - 2 - 300 - 257);
    std::vector<int32_t> tail(1, n - 40);
    for (int i = 0; i < 40; ++i) tail.push_back(1);
    EXPECT_EQ(0, std::memcmp(whole.data(), last_rows(odd, 2).data(), whole.size() * sizeof(float))) << arch;
    EXPECT_EQ(0, std::memcmp(whole.data(), last_rows(tail, 3).data(), whole.size() * sizeof(float))) << arch;
  }
}

}  // namespace
}  // namespace xy::backend::cpu
