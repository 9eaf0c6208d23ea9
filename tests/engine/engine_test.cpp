// The engine as its users meet it: stop strings held back while streaming, cancellation that
// frees blocks within a step, concurrent submission from several threads, and a 500-request
// stress run under a KV budget that forces preemption.
#include <gtest/gtest.h>

#include <thread>

#include "engine/tiny_model.h"
#include "tokenizer/reference_data.h"
#include "xyserve/engine/stop_string_matcher.h"

namespace xy::engine {
namespace {

using testing::greedy_options;
using testing::outputs_of;
using testing::random_prompts;
using testing::tiny_backend;

TEST(StopStringMatcherTest, NeverEmitsAPartialStopStringAndCutsAtTheFirst) {
  std::mt19937_64 rng(21);
  const std::string alphabet = "abc";
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    for (int i = 0, n = 1 + int(rng() % 30); i < n; ++i) text += alphabet[rng() % 3];
    std::vector<std::string> stops = {std::string(1 + rng() % 3, 'a') + "b", "cab"};
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, text.find(s));
    const std::string expected = text.substr(0, cut);
    StopStringMatcher m(stops);
    std::string streamed;
    for (size_t pos = 0; pos < text.size() && !m.stopped();) {
      const size_t len = 1 + rng() % 4;
      streamed += m.push(text.substr(pos, len));
      pos += len;
      ASSERT_EQ(expected.compare(0, streamed.size(), streamed), 0) << "emitted past the cut: " << text;
    }
    streamed += m.flush();
    EXPECT_EQ(streamed, expected) << text;
    EXPECT_EQ(m.stopped(), cut != std::string::npos);
    if (m.stopped()) {
      EXPECT_EQ(text.find(m.matched()), cut) << "matched " << m.matched() << " in " << text;
    }
  }
}

TEST(EngineTest, StopStringsAreHeldBackAcrossTokens) {
  const auto tok = tokenizer::Tokenizer::load(tokenizer::testing::tokenizer_dir("qwen2_5"));
  auto backend = tiny_backend("llama");
  Engine engine(*backend, tok.get(), {});
  const auto prompts = random_prompts(6, 5, 20, 22);
  int checked = 0;
  for (const auto& prompt : prompts) {
    const GenerationResult full = engine.generate_batch({prompt}, greedy_options(40))[0];
    if (full.text.size() < 12) continue;
    // A stop string that straddles token boundaries, somewhere in the middle of the text.
    const std::string stop = full.text.substr(full.text.size() / 2, 5);
    GenerationOptions options = greedy_options(40);
    options.stop = {stop};
    engine.start();
    const auto h = engine.submit(prompt, options);
    std::string streamed;
    const std::string expected = full.text.substr(0, full.text.find(stop));
    while (true) {
      const StreamEvent e = h.stream->next();
      streamed += e.text;
      ASSERT_EQ(expected.compare(0, streamed.size(), streamed), 0) << "streamed past the stop";
      if (e.finished) {
        EXPECT_EQ(e.finish_reason, sched::FinishReason::kStop);
        EXPECT_EQ(e.stop_string, stop);
        break;
      }
    }
    engine.stop();
    EXPECT_EQ(streamed, expected);
    ++checked;
  }
  EXPECT_GT(checked, 2);
}

TEST(EngineTest, CancelFreesBlocksWithinAStep) {
  auto backend = tiny_backend("qwen2");
  EngineConfig config;
  config.enable_prefix_caching = false;
  Engine engine(*backend, nullptr, config);
  const auto prompts = random_prompts(4, 30, 60, 23);
  std::vector<Engine::Handle> handles;
  for (const auto& p : prompts) handles.push_back(engine.submit(p, greedy_options(200)));
  for (int i = 0; i < 3; ++i) engine.step();
  const int32_t free_before = engine.scheduler().kv_cache().num_free_blocks();
  engine.cancel(handles[1].id);
  engine.cancel(handles[3].id);
  engine.step();
  EXPECT_EQ(engine.scheduler().num_running(), 2);
  EXPECT_GT(engine.scheduler().kv_cache().num_free_blocks(), free_before);
  for (const int i : {1, 3}) {
    StreamEvent e;
    do e = handles[size_t(i)].stream->next(); while (!e.finished);
    EXPECT_EQ(e.finish_reason, sched::FinishReason::kAbort);
  }
  engine.cancel(handles[0].id);
  engine.cancel(handles[2].id);
  engine.step();
  EXPECT_EQ(engine.scheduler().kv_cache().num_free_blocks(), engine.scheduler().kv_cache().num_blocks());
}

TEST(EngineTest, ConcurrentSubmitFromSeveralThreadsMatchesSequentialRuns) {
  auto backend = tiny_backend("qwen3");
  Engine engine(*backend, nullptr, {});
  const auto prompts = random_prompts(24, 3, 40, 24);
  const auto expected = outputs_of(engine.generate_batch(prompts, greedy_options(12)));
  engine.start();
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = size_t(t); i < prompts.size(); i += 4) {
        const auto h = engine.submit(prompts[i], greedy_options(12));
        while (true) {
          const StreamEvent e = h.stream->next();
          got[i].insert(got[i].end(), e.token_ids.begin(), e.token_ids.end());
          if (e.finished) break;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  engine.stop();
  EXPECT_EQ(got, expected);
}

TEST(EngineTest, StressWithPreemptionFinishesEveryRequestWithUnconstrainedOutputs) {
  std::mt19937_64 rng(25);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 500; ++i) {
    std::vector<int32_t> p(1 + rng() % 40);
    for (auto& t : p) t = int32_t(rng() % testing::kTinyVocab);
    prompts.push_back(p);
  }
  GenerationOptions options = greedy_options(1);
  auto run = [&](int32_t num_blocks, bool caching, std::vector<int64_t>* preemptions) {
    auto backend = tiny_backend("mistral", num_blocks, 8);
    EngineConfig config;
    config.enable_prefix_caching = caching;
    config.scheduler.max_num_batched_tokens = 256;
    config.scheduler.max_num_seqs = 64;
    config.scheduler.long_prefill_token_threshold = 48;
    Engine engine(*backend, nullptr, config);
    std::vector<Engine::Handle> handles;
    std::mt19937_64 len_rng(26);
    for (const auto& p : prompts) {
      GenerationOptions o = options;
      o.max_tokens = 1 + int32_t(len_rng() % 24);
      handles.push_back(engine.submit(p, o));
    }
    while (engine.step()) {
    }
    std::vector<std::vector<int32_t>> out;
    for (auto& h : handles) {
      std::vector<int32_t> ids;
      StreamEvent e;
      do {
        e = h.stream->next();
        ids.insert(ids.end(), e.token_ids.begin(), e.token_ids.end());
      } while (!e.finished);
      EXPECT_EQ(e.finish_reason, sched::FinishReason::kLength);
      out.push_back(ids);
    }
    if (preemptions) preemptions->push_back(engine.stats().scheduler.num_preemptions);
    engine.scheduler().kv_cache().reset_prefix_cache();
    engine.scheduler().kv_cache().check_invariants();
    EXPECT_EQ(engine.scheduler().kv_cache().num_free_blocks(), num_blocks);
    return out;
  };
  const auto expected = run(4096, false, nullptr);
  std::vector<int64_t> preemptions;
  EXPECT_EQ(run(24, false, &preemptions), expected);
  EXPECT_EQ(run(24, true, &preemptions), expected);
  for (auto p : preemptions) EXPECT_GT(p, 0);
}

}  // namespace
}  // namespace xy::engine
