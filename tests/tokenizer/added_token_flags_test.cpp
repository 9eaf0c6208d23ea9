// Added-token flags (lstrip, rstrip, single_word, normalized=true) checked against the Rust
// tokenizers library, on Qwen2.5's tokenizer.json with flags switched on for four tokens. No
// shipped file of ours sets them, and tokenizers.js ignores single_word, so the reference is
// data/qwen2_5_added_token_flags_tokenizers.json, made on the GPU machine with
// `tools/autotokenizer_reference.py --tokenizers-library` (tokenizers 0.23.2) on the file
// this test writes (set XY_KEEP_FLAGS_TOKENIZER=<dir> to keep a copy).
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "tokenizer/reference_data.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::tokenizer {
namespace {

TEST(AddedTokenFlags, LstripRstripSingleWordNormalizedMatchRustTokenizers) {
  auto j = testing::read_json_file(testing::tokenizer_dir("qwen2_5") / "tokenizer.json");
  for (auto& t : j["added_tokens"]) {
    const std::string content = t["content"];
    if (content == "<|im_start|>") t["lstrip"] = true;
    if (content == "<|im_end|>") t["rstrip"] = true;
    if (content == "<tool_call>") t["single_word"] = true;
    if (content == "<|fim_prefix|>") t["normalized"] = true;
  }
  const char* keep = std::getenv("XY_KEEP_FLAGS_TOKENIZER");
  const auto dir = keep ? std::filesystem::path(keep)
                        : std::filesystem::temp_directory_path() /
                              ("xy_tok_flags_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  const auto tok = Tokenizer::load(dir);
  if (!keep) std::filesystem::remove_all(dir);

  const auto corpus = testing::load_corpus();
  const auto ref = testing::read_json_file(testing::source_dir() / "tests" / "tokenizer" /
                                           "data" / "qwen2_5_added_token_flags_tokenizers.json");
  ASSERT_EQ(ref.size(), corpus.size());
  size_t same = 0, reported = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const auto ids = tok->encode(corpus[i]);
    if (ids == ref[i].get<std::vector<int32_t>>()) {
      ++same;
    } else if (reported++ < 8) {
      ADD_FAILURE() << "#" << i << " " << nlohmann::json(corpus[i]).dump()
                    << "\n  ours: " << nlohmann::json(ids).dump() << "\n  ref:  " << ref[i].dump();
    }
  }
  std::printf("[qwen2_5 + added-token flags] ids identical %zu/%zu\n", same, corpus.size());
  EXPECT_EQ(same, corpus.size());
}

}  // namespace
}  // namespace xy::tokenizer
