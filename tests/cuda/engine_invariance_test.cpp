// The engine's invariances of greedy decoding (tests/engine/invariance_test.cpp on the CPU) on the
// CUDA backend, on small bf16 models of every architecture with head_dim 64 (the tensor-core
// attention kernel): batched = alone, chunked = unchunked, prefix cache on = off, speculation on
// = off, preempted = never preempted; and GPU greedy output against the CPU backend's.
//
// Two modes. Deterministic (CudaBackendOptions::deterministic: one GEMM algorithm per shape
// whatever M, attention split fixed by position): every invariance must hold EXACTLY, tokens and
// logprobs bitwise, as on the CPU, except speculation with branching draft trees (see below). Default (cuBLASLt's heuristic picks kernels and split-K per M;
// the attention split adapts to the batch): rows round differently with what shares their step,
// so bitwise equality is not expected and is not asserted; the test measures and reports, per
// invariance, the token agreement (tokens equal up to each request's first divergence, over all
// tokens) and the largest difference of the chosen tokens' logprobs before a divergence. The
// report goes to stdout and is appended to $XY_GPU_REPORT when set (scripts/gpu-check).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include "cuda/device_test_util.h"
#include "engine/tiny_model.h"
#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::engine {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kVocab = 1024;

// tiny preset of `arch` widened to head_dim 64 (4 heads, 2 KV heads), bf16, cached per process.
const model::ModelWeights& weights_of(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<model::ModelWeights>> cache;
  auto& w = cache[arch];
  if (!w) {
    model::ModelConfig c = model::preset_config(arch, "tiny", kVocab);
    c.head_dim = 64;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.num_layers = 2;
    const fs::path dir = fs::temp_directory_path() / ("xy_gpu_invariance_" + arch);
    model::write_random_checkpoint(c, dir, /*seed=*/5, DType::kBF16);
    w = model::load_model(dir);
  }
  return *w;
}

struct Output {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> logprobs;
};

enum class Device { kCpu, kCuda, kCudaDeterministic };

std::unique_ptr<backend::Backend> make_backend(Device d, const std::string& arch, int32_t num_blocks) {
  if (d == Device::kCpu) return std::make_unique<backend::cpu::CpuBackend>(
      weights_of(arch), backend::cpu::CpuBackendOptions{num_blocks, 16, 2});
  backend::cuda::CudaBackendOptions o;
  o.num_kv_blocks = num_blocks;
  o.block_size = 16;
  o.max_num_tokens = 2048;
  o.deterministic = d == Device::kCudaDeterministic;
  return std::make_unique<backend::cuda::CudaBackend>(weights_of(arch), o);
}

Output run(Device d, const std::string& arch, const EngineConfig& config,
           const std::vector<std::vector<int32_t>>& prompts, int32_t max_tokens, EngineStats* stats = nullptr,
           int32_t num_blocks = 512) {
  auto backend = make_backend(d, arch, num_blocks);
  Engine engine(*backend, nullptr, config);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.sampling.logprobs = 0;
  o.max_tokens = max_tokens;
  o.ignore_eos = true;
  Output out;
  for (auto& r : engine.generate_batch(prompts, o)) {
    EXPECT_EQ(r.output_ids.size(), size_t(max_tokens));
    out.tokens.push_back(r.output_ids);
    out.logprobs.push_back(r.logprobs);
  }
  if (stats) *stats = engine.stats();
  return out;
}

std::vector<std::vector<int32_t>> prompts_for(int n, int min_len, int max_len, uint64_t seed) {
  return testing::random_prompts(n, min_len, max_len, seed, kVocab);
}

struct Agreement {
  int64_t tokens = 0, agreeing = 0, identical_requests = 0, requests = 0;
  double max_logprob_diff = 0;
  bool bitwise = true;
  void add(const Output& ref, const Output& got) {
    for (size_t i = 0; i < ref.tokens.size(); ++i) {
      ++requests;
      const auto& a = ref.tokens[i];
      const auto& b = got.tokens[i];
      tokens += int64_t(a.size());
      size_t j = 0;
      while (j < a.size() && j < b.size() && a[j] == b[j]) {
        if (j < ref.logprobs[i].size() && j < got.logprobs[i].size()) {
          const double d = std::fabs(double(ref.logprobs[i][j]) - double(got.logprobs[i][j]));
          max_logprob_diff = std::max(max_logprob_diff, d);
          bitwise &= ref.logprobs[i][j] == got.logprobs[i][j];
        }
        ++j;
      }
      agreeing += int64_t(j);
      identical_requests += a == b ? 1 : 0;
      bitwise &= a == b;
    }
  }
  std::string line(const std::string& what) const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%-34s tokens agree %6.2f%% (%lld/%lld)  requests identical %lld/%lld  max |dlogprob| %.3g%s",
                  what.c_str(), tokens ? 100.0 * double(agreeing) / double(tokens) : 100.0, (long long)agreeing,
                  (long long)tokens, (long long)identical_requests, (long long)requests, max_logprob_diff,
                  bitwise ? "  bitwise" : "");
    return buf;
  }
};

void report(const std::string& text) { testing::gpu_report(text); }

// The five invariances of one architecture on one device; each reference is the plain run.
std::vector<std::pair<std::string, Agreement>> invariances(Device d, const std::string& arch) {
  std::vector<std::pair<std::string, Agreement>> out;
  EngineConfig plain;
  plain.enable_prefix_caching = false;
  {  // batched = alone
    const auto prompts = prompts_for(10, 1, 70, 11);
    const Output batched = run(d, arch, plain, prompts, 20);
    Output alone;
    for (const auto& p : prompts) {
      const Output one = run(d, arch, plain, {p}, 20);
      alone.tokens.push_back(one.tokens[0]);
      alone.logprobs.push_back(one.logprobs[0]);
    }
    Agreement a;
    a.add(alone, batched);
    out.emplace_back("batched = alone", a);
  }
  {  // chunked = unchunked
    const auto prompts = prompts_for(6, 20, 300, 12);
    EngineConfig unchunked = plain;
    unchunked.scheduler.enable_chunked_prefill = false;
    const Output expected = run(d, arch, unchunked, prompts, 12);
    Agreement a;
    for (const int32_t chunk : {1, 7, 64}) {
      EngineConfig c = plain;
      c.scheduler.long_prefill_token_threshold = chunk;
      a.add(expected, run(d, arch, c, prompts, 12));
    }
    EngineConfig budget = plain;
    budget.scheduler.max_num_batched_tokens = 9;
    a.add(expected, run(d, arch, budget, prompts, 12));
    out.emplace_back("chunked = unchunked", a);
  }
  {  // prefix cache on = off
    std::mt19937_64 rng(13);
    std::vector<int32_t> base(600);
    for (auto& t : base) t = int32_t(rng() % kVocab);
    std::vector<std::vector<int32_t>> prompts;
    for (const int shared : {0, 5, 16, 17, 33, 80, 511, 512, 513, 600, 600}) {
      std::vector<int32_t> p(base.begin(), base.begin() + shared);
      for (int j = 0, n = 1 + int(rng() % 20); j < n; ++j) p.push_back(int32_t(rng() % kVocab));
      prompts.push_back(p);
    }
    const Output expected = run(d, arch, plain, prompts, 10);
    EngineConfig on;
    on.scheduler.max_num_seqs = 3;
    EngineStats stats;
    Agreement a;
    a.add(expected, run(d, arch, on, prompts, 10, &stats));
    EXPECT_GT(stats.kv.num_hit_tokens, 0);
    out.emplace_back("prefix cache on = off", a);
  }
  // speculation on = off: chains, then trees (out[3] and out[4])
  for (const bool tree : {false, true}) {
    const auto prompts = prompts_for(9, 4, 40, 14);
    const Output expected = run(d, arch, plain, prompts, 40);
    Agreement a;
    for (const int32_t k : {1, 3, 6}) {
      EngineConfig spec = plain;
      spec.speculative_method = SpeculativeMethod::kNgram;
      spec.scheduler.num_speculative_tokens = k;
      spec.ngram.tree = tree;
      EngineStats stats;
      a.add(expected, run(d, arch, spec, prompts, 40, &stats));
      EXPECT_GT(stats.scheduler.num_draft_tokens, 0);
    }
    out.emplace_back(tree ? "speculation (trees) on = off" : "speculation (chains) on = off", a);
  }
  {  // preempted = never preempted
    const auto prompts = prompts_for(12, 10, 60, 16);
    const Output expected = run(d, arch, plain, prompts, 30);
    EngineConfig tight = plain;
    tight.enable_prefix_caching = true;
    EngineStats stats;
    Agreement a;
    a.add(expected, run(d, arch, tight, prompts, 30, &stats, 8));
    EXPECT_GT(stats.scheduler.num_preemptions, 0);
    out.emplace_back("preempted = never preempted", a);
  }
  return out;
}

class GpuInvariance : public ::testing::TestWithParam<const char*> {};

TEST_P(GpuInvariance, HoldExactlyInDeterministicMode) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  for (const auto& [what, a] : invariances(Device::kCudaDeterministic, GetParam())) {
    // Branching draft trees are the one case left out: a tree row meets its ancestors' keys in
    // tree-row order after the computed keys, so its softmax sums in a different order than
    // the same token decoded alone (tokens agree; logprobs differ in the last bits). Fixing it
    // needs a per-row key order in the attention kernels; measured and reported meanwhile.
    const bool exact_expected = what.find("trees") == std::string::npos;
    report(std::string("[gpu deterministic") + (exact_expected ? "" : "; trees: not bitwise yet") + "] " +
           GetParam() + ": " + a.line(what));
    if (exact_expected) {
      EXPECT_TRUE(a.bitwise) << what;
    } else {
      EXPECT_EQ(a.agreeing, a.tokens) << what;
    }
  }
}

TEST_P(GpuInvariance, AreMeasuredInDefaultMode) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  for (const auto& [what, a] : invariances(Device::kCuda, GetParam()))
    report(std::string("[gpu default; library GEMMs, adaptive split: not bitwise by design] ") + GetParam() +
           ": " + a.line(what));
}

TEST_P(GpuInvariance, GreedyOutputAgainstTheCpuBackend) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  const auto prompts = prompts_for(8, 5, 200, 21);
  EngineConfig plain;
  plain.enable_prefix_caching = false;
  const Output cpu = run(Device::kCpu, GetParam(), plain, prompts, 32);
  for (const Device d : {Device::kCuda, Device::kCudaDeterministic}) {
    Agreement a;
    const Output gpu = run(d, GetParam(), plain, prompts, 32);
    a.add(cpu, gpu);
    std::vector<int32_t> a_first;
    for (const auto& t : gpu.tokens) a_first.push_back(t[0]);
    report(std::string("[gpu bf16 vs cpu fp32] ") + GetParam() + ": " +
           a.line(d == Device::kCuda ? "default mode" : "deterministic mode"));
    // bf16 against fp32 diverges once two logits come within bf16 rounding of each other; random
    // weights seldom put the first token's top two that close, so a broken backend (agreement
    // near chance, 1/1024) is told from rounding by the first tokens.
    int first_equal = 0;
    for (size_t i = 0; i < prompts.size(); ++i) first_equal += cpu.tokens[i][0] == a_first[i] ? 1 : 0;
    EXPECT_GE(first_equal, int(prompts.size()) / 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, GpuInvariance, ::testing::Values("llama", "qwen2", "qwen3", "mistral"));

}  // namespace
}  // namespace xy::engine
