// encode() is documented thread-safe (a shared, locked word cache): many threads encoding at
// once get exactly the single-threaded ids.
#include <gtest/gtest.h>

#include <thread>

#include "tokenizer/reference_data.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::tokenizer {
namespace {

TEST(TokenizerThreads, ConcurrentEncodeEqualsSequentialEncode) {
  const auto corpus = testing::load_corpus();
  for (const char* name : {"llama3_1", "llama2"}) {
    // Expected ids from a separate instance, so that its cache is not shared with the threads.
    const auto sequential = Tokenizer::load(testing::tokenizer_dir(name));
    std::vector<std::vector<int32_t>> expected;
    for (const auto& s : corpus) expected.push_back(sequential->encode(s));
    const auto shared = Tokenizer::load(testing::tokenizer_dir(name));
    constexpr int kThreads = 4;
    std::vector<int> mismatches(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        // Each thread walks the corpus from a different start, so cache fills interleave.
        for (size_t k = 0; k < corpus.size(); ++k) {
          const size_t i = (k + t * corpus.size() / kThreads) % corpus.size();
          mismatches[t] += shared->encode(corpus[i]) != expected[i];
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << name << " thread " << t;
  }
}

}  // namespace
}  // namespace xy::tokenizer
