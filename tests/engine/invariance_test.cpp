// Exact invariances of greedy decoding on the fp32 CPU backend (DESIGN.md "Correctness"):
// batched = alone; any chunk size = unchunked; prefix cache on = off; speculation (chains and
// trees) on = off; a KV budget that forces preemption = unconstrained. Tokens must be bitwise
// identical, on tiny models of every architecture (mistral with a sliding window the prompts
// cross).
#include <gtest/gtest.h>

#include "engine/tiny_model.h"

namespace xy::engine {
namespace {

using testing::greedy_options;
using testing::outputs_of;
using testing::random_prompts;
using testing::tiny_backend;

class InvarianceTest : public ::testing::TestWithParam<const char*> {
 protected:
  std::vector<std::vector<int32_t>> run(const EngineConfig& config,
                                        const std::vector<std::vector<int32_t>>& prompts,
                                        int32_t max_tokens, EngineStats* stats = nullptr,
                                        int32_t num_kv_blocks = 512) {
    auto backend = tiny_backend(GetParam(), num_kv_blocks);
    Engine engine(*backend, nullptr, config);
    auto results = engine.generate_batch(prompts, greedy_options(max_tokens));
    for (const auto& r : results) EXPECT_EQ(r.output_ids.size(), size_t(max_tokens));
    if (stats) *stats = engine.stats();
    // Every block is free again once the prefix cache lets go of its blocks.
    engine.scheduler().kv_cache().reset_prefix_cache();
    engine.scheduler().kv_cache().check_invariants();
    EXPECT_EQ(engine.scheduler().kv_cache().num_free_blocks(), engine.scheduler().kv_cache().num_blocks());
    return outputs_of(results);
  }
  // Each prompt alone in a fresh engine with no prefix cache: the reference.
  std::vector<std::vector<int32_t>> run_alone(const std::vector<std::vector<int32_t>>& prompts,
                                              int32_t max_tokens) {
    EngineConfig config;
    config.enable_prefix_caching = false;
    std::vector<std::vector<int32_t>> out;
    for (const auto& p : prompts) out.push_back(run(config, {p}, max_tokens)[0]);
    return out;
  }
};

TEST_P(InvarianceTest, BatchedEqualsAlone) {
  const auto prompts = random_prompts(10, 1, 70, 11);
  EngineConfig config;
  config.enable_prefix_caching = false;
  EXPECT_EQ(run(config, prompts, 20), run_alone(prompts, 20));
}

TEST_P(InvarianceTest, AnyChunkSizeEqualsUnchunked) {
  const auto prompts = random_prompts(6, 20, 90, 12);
  EngineConfig unchunked;
  unchunked.enable_prefix_caching = false;
  unchunked.scheduler.enable_chunked_prefill = false;
  const auto expected = run(unchunked, prompts, 12);
  for (const int32_t chunk : {1, 7, 64}) {
    EngineConfig config;
    config.enable_prefix_caching = false;
    config.scheduler.long_prefill_token_threshold = chunk;
    EXPECT_EQ(run(config, prompts, 12), expected) << "chunk " << chunk;
  }
  // A small budget chunks too, across requests.
  EngineConfig budget;
  budget.enable_prefix_caching = false;
  budget.scheduler.max_num_batched_tokens = 9;
  EXPECT_EQ(run(budget, prompts, 12), expected);
}

TEST_P(InvarianceTest, PrefixCacheOnEqualsOff) {
  // Prompts sharing prefixes of varied lengths (block-aligned and not) with one another.
  std::mt19937_64 rng(13);
  std::vector<int32_t> base(80);
  for (auto& t : base) t = int32_t(rng() % testing::kTinyVocab);
  std::vector<std::vector<int32_t>> prompts;
  for (const int shared : {0, 5, 16, 17, 31, 32, 33, 48, 64, 79, 80, 80}) {
    std::vector<int32_t> p(base.begin(), base.begin() + shared);
    for (int j = 0, n = 1 + int(rng() % 20); j < n; ++j) p.push_back(int32_t(rng() % testing::kTinyVocab));
    prompts.push_back(p);
  }
  prompts.push_back(prompts[3]);  // an exact repeat
  EngineConfig off;
  off.enable_prefix_caching = false;
  const auto expected = run(off, prompts, 10);
  EngineConfig on;
  on.scheduler.max_num_seqs = 3;  // later requests find the earlier ones' blocks cached
  EngineStats stats;
  EXPECT_EQ(run(on, prompts, 10, &stats), expected);
  EXPECT_GT(stats.kv.num_hit_tokens, 0);
}

void expect_speculation_invariant(InvarianceTest* t, bool tree,
                                  const std::function<std::vector<std::vector<int32_t>>(
                                      const EngineConfig&, EngineStats*)>& run) {
  EngineConfig plain;
  plain.enable_prefix_caching = false;
  const auto expected = run(plain, nullptr);
  for (const int32_t k : {1, 3, 6}) {
    EngineConfig spec = plain;
    spec.speculative_method = SpeculativeMethod::kNgram;
    spec.scheduler.num_speculative_tokens = k;
    spec.ngram.tree = tree;
    EngineStats stats;
    EXPECT_EQ(run(spec, &stats), expected) << "k " << k;
    EXPECT_GT(stats.scheduler.num_accepted_tokens, 0) << "k " << k;
    EXPECT_GT(stats.scheduler.num_draft_tokens, stats.scheduler.num_accepted_tokens) << "k " << k;
  }
}

TEST_P(InvarianceTest, SpeculativeChainEqualsPlainDecoding) {
  const auto prompts = random_prompts(9, 4, 40, 14);
  expect_speculation_invariant(this, false, [&](const EngineConfig& c, EngineStats* s) {
    return run(c, prompts, 40, s);
  });
}

TEST_P(InvarianceTest, SpeculativeTreeEqualsPlainDecoding) {
  const auto prompts = random_prompts(9, 4, 40, 15);
  expect_speculation_invariant(this, true, [&](const EngineConfig& c, EngineStats* s) {
    return run(c, prompts, 40, s);
  });
}

TEST_P(InvarianceTest, PreemptedEqualsUnconstrained) {
  const auto prompts = random_prompts(12, 10, 60, 16);
  EngineConfig config;
  config.enable_prefix_caching = false;
  const auto expected = run(config, prompts, 30);
  for (const bool caching : {false, true}) {
    for (const bool spec : {false, true}) {
      EngineConfig tight = config;
      tight.enable_prefix_caching = caching;
      if (spec) {
        tight.speculative_method = SpeculativeMethod::kNgram;
        tight.scheduler.num_speculative_tokens = 3;
      }
      EngineStats stats;
      // 8 blocks of 16: at most two or three requests fit at once.
      EXPECT_EQ(run(tight, prompts, 30, &stats, 8), expected) << "caching " << caching << " spec " << spec;
      EXPECT_GT(stats.scheduler.num_preemptions, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, InvarianceTest,
                         ::testing::Values("llama", "qwen2", "qwen3", "mistral"));

}  // namespace
}  // namespace xy::engine
