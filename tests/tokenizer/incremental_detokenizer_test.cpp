// Streaming detokenization: every piece is valid UTF-8 and the pieces add up to decode().
#include <gtest/gtest.h>

#include <random>

#include "tokenizer/reference_data.h"
#include "xyserve/tokenizer/tokenizer.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

using testing::load_corpus;
using testing::tokenizer_dir;

// Random id sequences biased towards the hard cases: tokens that are parts of multi-byte
// characters (byte-level pieces, <0xNN> byte-fallback tokens), special tokens, and the ids
// of real text.
std::vector<int32_t> random_ids(const Tokenizer& tok, std::mt19937& rng,
                                const std::vector<int32_t>& byte_ids,
                                const std::vector<int32_t>& text_ids) {
  std::vector<int32_t> ids;
  const int n = std::uniform_int_distribution<int>(0, 40)(rng);
  for (int k = 0; k < n; ++k) {
    const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
    if (kind < 3 && !byte_ids.empty()) {
      ids.push_back(byte_ids[rng() % byte_ids.size()]);
    } else if (kind < 6 && !text_ids.empty()) {
      // A run of real text, so multi-byte characters are split over consecutive tokens.
      const size_t start = rng() % text_ids.size();
      const size_t len = std::min<size_t>(1 + rng() % 6, text_ids.size() - start);
      ids.insert(ids.end(), text_ids.begin() + start, text_ids.begin() + start + len);
    } else if (kind == 6) {
      // A special or added token.
      ids.push_back(static_cast<int32_t>(tok.vocab_size() - 1 - rng() % 16));
    } else {
      ids.push_back(static_cast<int32_t>(rng() % tok.vocab_size()));
    }
  }
  return ids;
}

class IncrementalDetokenizerTest : public ::testing::TestWithParam<const char*> {};

TEST_P(IncrementalDetokenizerTest, PiecesAreValidUtf8AndConcatenateToDecode) {
  const auto tok = Tokenizer::load(tokenizer_dir(GetParam()));
  std::vector<int32_t> byte_ids;  // byte-fallback tokens, or byte-level single-byte tokens
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    if (auto id = tok->token_to_id(name)) byte_ids.push_back(*id);
    std::string one(utf8::ByteLevelTable::get().encode(static_cast<uint8_t>(b)));
    if (b >= 0x80) {
      if (auto id = tok->token_to_id(one)) byte_ids.push_back(*id);
    }
  }
  std::vector<int32_t> text_ids;
  for (const std::string& s : load_corpus()) {
    const auto ids = tok->encode(s, false);
    text_ids.insert(text_ids.end(), ids.begin(), ids.end());
    if (text_ids.size() > 200000) break;
  }
  const auto corpus = load_corpus();
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 1500; ++trial) {
    const auto ids = random_ids(*tok, rng, byte_ids, text_ids);
    const bool skip = trial % 2 == 0;
    // A third of the trials stream after a real prompt, whose tail is context for the
    // first tokens (a prompt ending in a <0xNN> run is left out: its bytes would join the
    // generated ones, which a stream cannot take back).
    std::vector<int32_t> prompt;
    if (trial % 3 == 0) {
      prompt = tok->encode(corpus[rng() % corpus.size()], true);
      if (!prompt.empty() && tok->joins_with_next(prompt.back())) prompt.clear();
    }
    IncrementalDetokenizer detok(*tok, skip, prompt);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = detok.push(id);
      ASSERT_TRUE(utf8::is_valid(piece)) << GetParam() << " trial " << trial;
      streamed += piece;
    }
    const std::string rest = detok.flush();
    ASSERT_TRUE(utf8::is_valid(rest));
    streamed += rest;
    // Expected: the text the stream adds after the prompt context.
    std::vector<int32_t> context;
    for (int32_t id : prompt)
      if (!(skip && tok->is_special(id))) context.push_back(id);
    if (context.size() > 6) context.erase(context.begin(), context.end() - 6);
    std::vector<int32_t> all = context;
    all.insert(all.end(), ids.begin(), ids.end());
    const std::string full = tok->decode(all, skip);
    const std::string before = tok->decode(context, skip);
    ASSERT_EQ(full.compare(0, before.size(), before), 0) << "trial " << trial;
    ASSERT_EQ(streamed, full.substr(before.size()))
        << GetParam() << " trial " << trial << " ids " << ::testing::PrintToString(ids);
    if (prompt.empty()) {
      ASSERT_EQ(streamed, tok->decode(ids, skip));
    }
  }
}

TEST_P(IncrementalDetokenizerTest, HoldsBackAPartialCharacterUntilItCompletes) {
  const auto tok = Tokenizer::load(tokenizer_dir(GetParam()));
  // "😀" (F0 9F 98 80) as one token per byte: <0xNN> tokens for byte fallback, or the
  // byte-level characters that stand for each byte.
  std::vector<int32_t> ids;
  for (uint8_t b : {0xF0, 0x9F, 0x98, 0x80}) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto id = tok->token_to_id(name);
    if (!id) id = tok->token_to_id(std::string(utf8::ByteLevelTable::get().encode(b)));
    ASSERT_TRUE(id.has_value());
    ids.push_back(*id);
  }
  ids.push_back(*tok->token_to_id("!"));
  IncrementalDetokenizer detok(*tok, true);
  for (size_t k = 0; k + 1 < ids.size() - 1; ++k) EXPECT_EQ(detok.push(ids[k]), "") << k;
  std::string streamed = detok.push(ids[3]);
  streamed += detok.push(ids[4]);
  streamed += detok.flush();
  EXPECT_EQ(streamed, "\xF0\x9F\x98\x80!");
  EXPECT_EQ(tok->decode(ids), "\xF0\x9F\x98\x80!");
}

INSTANTIATE_TEST_SUITE_P(RealTokenizers, IncrementalDetokenizerTest,
                         ::testing::Values("llama3_1", "qwen2_5", "qwen3", "llama2"));

}  // namespace
}  // namespace xy::tokenizer
