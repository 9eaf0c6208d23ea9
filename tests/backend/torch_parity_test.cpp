// CpuBackend against the independent PyTorch reference (tools/torch_forward.py) on tiny random
// checkpoints of every architecture, and the exact invariances the engine relies on: chunked
// prefill = one-step prefill = token by token, and batched = alone, bitwise.
//
// Metric: for a sequence, max |ours - torch| / max |torch| over all positions and the whole
// vocabulary; torch runs in float64, we in fp32 from bf16 weights (the same bf16 values).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/run_json.h"
#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::backend::cpu {
namespace {

namespace fs = std::filesystem;

constexpr int kPromptLen = 40;
constexpr int kGreedyLen = 64;
constexpr int32_t kBlockSize = 4;  // small, so a sequence spans many shuffled blocks
constexpr double kMaxRelError = 1e-4;

struct ParityCase {
  std::string name;
  model::ModelConfig config;
};

void PrintTo(const ParityCase& c, std::ostream* os) { *os << c.name; }

std::vector<ParityCase> parity_cases() {
  std::vector<ParityCase> cases;
  {  // GQA 4/2, llama3 rope scaling with every band (high, smoothed, low) in head_dim 16
    auto c = model::preset_config("llama", "tiny");
    c.rope.scaling = model::RopeScalingType::kLlama3;
    c.rope.factor = 4.0;
    c.rope.low_freq_factor = 1.0;
    c.rope.high_freq_factor = 4.0;
    c.rope.original_max_position = 256;
    cases.push_back({"llama_llama3rope", c});
  }
  {
    auto c = model::preset_config("llama", "tiny");
    c.rope.scaling = model::RopeScalingType::kLinear;
    c.rope.factor = 2.5;
    c.tie_word_embeddings = true;
    cases.push_back({"llama_linear_rope_tied", c});
  }
  {  // q/k/v bias; the second layer windowed (Qwen's max_window_layers rule)
    auto c = model::preset_config("qwen2", "tiny");
    c.sliding_window = {0, 12};
    cases.push_back({"qwen2_bias_window", c});
  }
  cases.push_back({"qwen3_qk_norm", model::preset_config("qwen3", "tiny")});
  {  // every layer windowed, window well inside the prompt
    auto c = model::preset_config("mistral", "tiny");
    c.sliding_window.assign(size_t(c.num_layers), 9);
    cases.push_back({"mistral_window", c});
  }
  return cases;
}

struct TorchResult {
  std::vector<std::vector<double>> logits;
  std::vector<int32_t> greedy;
};

// Runs tools/torch_forward.py; on failure returns false with its stderr in `error`.
bool run_torch(const fs::path& model_dir, const std::vector<int32_t>& tokens, int greedy,
               TorchResult& out, std::string& error) {
  std::string ids;
  for (int32_t t : tokens) {
    if (!ids.empty()) ids += ',';
    ids += std::to_string(t);
  }
  const std::string cmd = cat("/usr/bin/python3 ", XY_SOURCE_DIR, "/tools/torch_forward.py --model '",
                              model_dir.string(), "' --tokens ", ids, " --greedy ", greedy);
  nlohmann::json j;
  if (!testing::run_json(cmd, model_dir / "torch_stderr.txt", j, error)) return false;
  out.logits = j.at("logits").get<std::vector<std::vector<double>>>();
  out.greedy = j.at("greedy").get<std::vector<int32_t>>();
  return true;
}

// Builds plans for one request at a time, owning a shuffled block table.
class SequenceRunner {
 public:
  SequenceRunner(CpuBackend& backend, int32_t max_len, uint64_t seed) : backend_(backend) {
    const int32_t num_blocks = (max_len + kBlockSize - 1) / kBlockSize;
    std::vector<int32_t> ids(static_cast<size_t>(backend.num_kv_blocks()));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::shuffle(ids.begin(), ids.end(), rng);
    blocks_.assign(ids.begin(), ids.begin() + num_blocks);
  }

  // Feeds `tokens` as the next rows of the sequence; returns logits of the last `logit_rows`.
  std::vector<float> feed(std::span<const int32_t> tokens, int32_t logit_rows) {
    meta::StepPlan plan;
    plan.block_size = kBlockSize;
    meta::ScheduledRequest r;
    r.request_id = 7;
    r.num_computed_tokens = computed_;
    r.num_new_tokens = int32_t(tokens.size());
    r.num_logits_rows = logit_rows;
    r.block_table.assign(
        blocks_.begin(),
        blocks_.begin() + (computed_ + r.num_new_tokens + kBlockSize - 1) / kBlockSize);
    plan.requests.push_back(r);
    for (size_t i = 0; i < tokens.size(); ++i) {
      plan.token_ids.push_back(tokens[i]);
      plan.positions.push_back(computed_ + int32_t(i));
    }
    std::vector<float> logits;
    backend_.forward(plan, logits);
    computed_ += r.num_new_tokens;
    return logits;
  }

 private:
  CpuBackend& backend_;
  std::vector<int32_t> blocks_;
  int32_t computed_ = 0;
};

double max_rel_error(const std::vector<float>& ours, const std::vector<std::vector<double>>& ref,
                     int64_t vocab) {
  double max_diff = 0, max_ref = 0;
  for (size_t p = 0; p < ref.size(); ++p) {
    for (int64_t v = 0; v < vocab; ++v) {
      max_diff = std::max(
          max_diff, std::fabs(double(ours[p * size_t(vocab) + size_t(v)]) - ref[p][size_t(v)]));
      max_ref = std::max(max_ref, std::fabs(ref[p][size_t(v)]));
    }
  }
  return max_diff / max_ref;
}

int32_t argmax_row(const float* row, int64_t vocab) {
  return int32_t(std::max_element(row, row + vocab) - row);  // first maximum: lowest id
}

class TorchParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(TorchParity, LogitsAndGreedyContinuationMatchTorch) {
  const ParityCase& pc = GetParam();
  const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" / pc.name;
  model::write_random_checkpoint(pc.config, dir, /*seed=*/1234);
  const auto weights = model::load_model(dir);
  const int64_t vocab = weights->config.vocab_size;

  std::mt19937 rng(99);
  std::vector<int32_t> prompt(kPromptLen);
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(vocab));

  TorchResult ref;
  std::string error;
  ASSERT_TRUE(run_torch(dir, prompt, kGreedyLen, ref, error)) << error;
  ASSERT_EQ(ref.logits.size(), size_t(kPromptLen));
  ASSERT_EQ(ref.greedy.size(), size_t(kGreedyLen));

  CpuBackendOptions options;
  options.block_size = kBlockSize;
  options.num_kv_blocks = (kPromptLen + kGreedyLen) / kBlockSize + 8;
  options.num_threads = 2;
  const int32_t max_len = kPromptLen + kGreedyLen;

  // 1. The whole prompt in one step, logits for every row.
  CpuBackend one_step(*weights, options);
  SequenceRunner seq(one_step, max_len, 1);
  const std::vector<float> full = seq.feed(prompt, kPromptLen);
  const double err = max_rel_error(full, ref.logits, vocab);
  EXPECT_LE(err, kMaxRelError) << pc.name << ": one-step prefill, max|a-b|/max|ref|";
  std::printf("[ parity ] %-24s one-step prefill max|a-b|/max|ref| = %.3g\n", pc.name.c_str(), err);

  // 2. The same prompt in uneven chunks, and 3. token by token: bitwise equal to 1.
  for (int32_t chunk : {7, 1}) {
    CpuBackend backend(*weights, options);
    SequenceRunner s(backend, max_len, 100 + uint64_t(chunk));
    std::vector<float> got;
    for (int32_t b = 0; b < kPromptLen; b += chunk) {
      const int32_t n = std::min(chunk, kPromptLen - b);
      const auto l = s.feed(std::span(prompt).subspan(size_t(b), size_t(n)), n);
      got.insert(got.end(), l.begin(), l.end());
    }
    ASSERT_EQ(got.size(), full.size());
    EXPECT_EQ(0, std::memcmp(got.data(), full.data(), full.size() * sizeof(float)))
        << pc.name << ": prefill in chunks of " << chunk << " differs from one step";
  }

  // 4. Greedy continuation with the KV cache, one token per step, against torch's recompute.
  std::vector<int32_t> generated;
  int32_t next = argmax_row(full.data() + size_t(kPromptLen - 1) * size_t(vocab), vocab);
  for (int i = 0; i < kGreedyLen; ++i) {
    generated.push_back(next);
    if (i + 1 == kGreedyLen) break;
    const int32_t tok[] = {next};
    const auto l = seq.feed(tok, 1);
    next = argmax_row(l.data(), vocab);
  }
  EXPECT_EQ(generated, ref.greedy) << pc.name << ": greedy continuation";
  // A continuation stuck on one token would make the comparison weak. Untied random models
  // wander; a tied one repeats its last token (the residual stream is dominated by the token's
  // own embedding, which the tied head scores highest), so only its logits are a real check.
  std::vector<int32_t> distinct = generated;
  std::sort(distinct.begin(), distinct.end());
  const auto num_distinct = std::unique(distinct.begin(), distinct.end()) - distinct.begin();
  std::printf("[ parity ] %-24s greedy: %d tokens, %d distinct\n", pc.name.c_str(), kGreedyLen,
              int(num_distinct));
  if (!pc.config.tie_word_embeddings) {
    EXPECT_GE(num_distinct, 8) << pc.name
                               << ": greedy continuation too uniform to be a useful check";
  }
}

// Past 512 positions the KV span of a row is split into pieces that the work list merges by
// log-sum-exp: the merged result must still match torch's plain softmax.
TEST(TorchParityLong, SplitKvSpansMatchTorchPastTheSplitSize) {
  constexpr int32_t kLong = 1100;
  for (const char* arch : {"llama", "mistral"}) {
    const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" / (std::string("long_parity_") + arch);
    model::write_random_checkpoint(model::preset_config(arch, "tiny"), dir, /*seed=*/4321);
    const auto weights = model::load_model(dir);
    const int64_t vocab = weights->config.vocab_size;
    std::mt19937 rng(7);
    std::vector<int32_t> prompt(kLong);
    for (auto& t : prompt) t = int32_t(rng() % uint32_t(vocab));
    TorchResult ref;
    std::string error;
    ASSERT_TRUE(run_torch(dir, prompt, 1, ref, error)) << error;
    CpuBackendOptions options;
    options.block_size = kBlockSize;
    options.num_kv_blocks = kLong / kBlockSize + 8;
    options.num_threads = 2;
    CpuBackend backend(*weights, options);
    SequenceRunner seq(backend, kLong + 1, 5);
    const std::vector<float> full = seq.feed(prompt, kLong);
    const double err = max_rel_error(full, ref.logits, vocab);
    EXPECT_LE(err, kMaxRelError) << arch;
    std::printf("[ parity ] long %-19s %d tokens max|a-b|/max|ref| = %.3g\n", arch, kLong, err);
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, TorchParity, ::testing::ValuesIn(parity_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace xy::backend::cpu
