// Parity with independent references on real tokenizer files and a 2,000+ string corpus:
// tokenizers.js (run here through node at suite set-up) for every tokenizer, and
// transformers.AutoTokenizer's ids for the SentencePiece one when its committed output
// (data/llama2_autotokenizer.json, made by tools/autotokenizer_reference.py) is present.
#include <gtest/gtest.h>
#include <unistd.h>

#include <map>

#include "tokenizer/reference_data.h"
#include "xyserve/tokenizer/tokenizer.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

using testing::load_corpus;
using testing::read_json_file;
using testing::source_dir;
using testing::tokenizer_dir;

struct TokenizerParityAccess;

class TokenizerParity : public ::testing::Test {
 protected:
  // ctest runs each test in its own process, so the reference runs only for the tokenizer
  // that a test needs, on first use.
  static void SetUpTestSuite() {
    out_dir_ = std::filesystem::temp_directory_path() /
               ("xy_tokenizer_ref_" + std::to_string(getpid()));
    std::filesystem::create_directories(out_dir_);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(out_dir_); }

  // Runs tools/tokenizer_reference.mjs (tokenizers.js in node) over the corpus; on failure
  // returns null and sets *error.
  static nlohmann::json reference(const std::string& name, std::string* error) {
    const auto corpus = source_dir() / "tests" / "tokenizer" / "data" / "corpus.json";
    const auto out = out_dir_ / (name + ".json");
    const std::string cmd = "XY_SOURCE_DIR='" + source_dir().string() + "' node '" +
                            (source_dir() / "tools" / "tokenizer_reference.mjs").string() +
                            "' '" + tokenizer_dir(name).string() + "' '" + corpus.string() +
                            "' '" + out.string() + "' 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
      *error = "reference command failed (rc " + std::to_string(rc) + "): " + cmd +
               "\n(node and `npm ci` in the repo are required)";
      return nlohmann::json();
    }
    return read_json_file(out);
  }

  // Compares ids (with and without special tokens) and decoded text, string by string.
  // Decoded text must equal the reference's, or, for byte-level tokenizers where the two
  // disagree, round-trip to the input (transformers' behaviour, REFERENCES.md).
  static void check_against(const std::string& name, const Tokenizer& tok,
                            const nlohmann::json& ref, bool compare_decode, bool byte_level) {
    const auto corpus = load_corpus();
    ASSERT_EQ(ref.size(), corpus.size()) << name;
    size_t ids_same = 0, ids_plain_same = 0, decode_same = 0, decode_skip_same = 0,
           decode_roundtrip_only = 0, reported = 0;
    for (size_t i = 0; i < corpus.size(); ++i) {
      const auto& r = ref[i];
      const auto ids = tok.encode(corpus[i]);
      const auto ids_plain = tok.encode(corpus[i], false);
      const bool same = ids == r["ids"].get<std::vector<int32_t>>();
      const bool plain_same = ids_plain == r["ids_no_special"].get<std::vector<int32_t>>();
      ids_same += same;
      ids_plain_same += plain_same;
      if ((!same || !plain_same) && reported++ < 8) {
        ADD_FAILURE() << name << " string #" << i << " " << nlohmann::json(r["text"]).dump()
                      << "\n  ours: " << nlohmann::json(ids).dump()
                      << "\n  ref:  " << r["ids"].dump();
      }
      if (!compare_decode || !r.contains("decoded")) continue;
      const std::string decoded = tok.decode(ids, false);
      const std::string decoded_skip = tok.decode(ids, true);
      const std::string text = r["text"].get<std::string>();
      if (decoded == r["decoded"].get<std::string>()) {
        ++decode_same;
      } else if (byte_level && tok.decode(ids_plain) == text) {
        ++decode_roundtrip_only;
      } else if (reported++ < 8) {
        ADD_FAILURE() << name << " decode #" << i << "\n  ours: " << nlohmann::json(decoded).dump()
                      << "\n  ref:  " << r["decoded"].dump();
      }
      if (decoded_skip == r["decoded_skip"].get<std::string>() ||
          (byte_level && decoded_skip == text)) {
        ++decode_skip_same;
      } else if (reported++ < 8) {
        ADD_FAILURE() << name << " decode(skip_special) #" << i
                      << "\n  ours: " << nlohmann::json(decoded_skip).dump()
                      << "\n  ref:  " << r["decoded_skip"].dump();
      }
    }
    const size_t n = corpus.size();
    std::printf("[%s] ids identical %zu/%zu, without specials %zu/%zu", name.c_str(), ids_same, n,
                ids_plain_same, n);
    if (compare_decode) {
      std::printf(", decode identical %zu/%zu (+%zu where the reference differs and ours "
                  "round-trips), decode(skip_special) ok %zu/%zu",
                  decode_same, n, decode_roundtrip_only, decode_skip_same, n);
    }
    std::printf("\n");
    EXPECT_EQ(ids_same, n) << name;
    EXPECT_EQ(ids_plain_same, n) << name;
    if (compare_decode) {
      EXPECT_EQ(decode_same + decode_roundtrip_only, n) << name;
      EXPECT_EQ(decode_skip_same, n) << name;
    }
  }

  void run_tokenizers_js(const std::string& name, bool byte_level) {
    std::string error;
    const nlohmann::json ref = reference(name, &error);
    ASSERT_TRUE(error.empty()) << error;
    LoadOptions options;
    options.match_transformers = false;  // tokenizers.js reads tokenizer.json as written
    const auto tok = Tokenizer::load(tokenizer_dir(name), options);
    check_against(name, *tok, ref, true, byte_level);
  }

  static inline std::filesystem::path out_dir_;
  friend struct TokenizerParityAccess;
};

TEST_F(TokenizerParity, Llama3MatchesTokenizersJs) { run_tokenizers_js("llama3_1", true); }
TEST_F(TokenizerParity, Qwen25MatchesTokenizersJs) { run_tokenizers_js("qwen2_5", true); }
TEST_F(TokenizerParity, Qwen3MatchesTokenizersJs) { run_tokenizers_js("qwen3", true); }
TEST_F(TokenizerParity, SentencePieceLlama2MatchesTokenizersJsWhenReadAsWritten) {
  run_tokenizers_js("llama2", false);
}

struct TokenizerParityAccess {
  static void check(const std::string& name, const Tokenizer& tok, const nlohmann::json& ref,
                    bool byte_level) {
    TokenizerParity::check_against(name, tok, ref, true, byte_level);
  }
};

// What users of vLLM and SGLang get: transformers.AutoTokenizer. Its output for the corpus
// is committed as data/<name>_autotokenizer.json (made on the GPU machine by
// tools/autotokenizer_reference.py; transformers 5.17.0, tokenizers 0.23.2). Required for the
// SentencePiece tokenizer, where transformers and tokenizers.js disagree; checked for the
// others when their file is present.
void check_autotokenizer(const std::string& name, bool required, bool byte_level) {
  const auto path = source_dir() / "tests" / "tokenizer" / "data" / (name + "_autotokenizer.json");
  if (!std::filesystem::exists(path)) {
    if (required) FAIL() << path << " is missing: run tools/autotokenizer_reference.py";
    std::printf("[%s/AutoTokenizer] no %s: not checked\n", name.c_str(), path.c_str());
    return;
  }
  const auto tok = Tokenizer::load(tokenizer_dir(name));
  TokenizerParityAccess::check(name + "/AutoTokenizer", *tok, read_json_file(path), byte_level);
}

TEST_F(TokenizerParity, SentencePieceLlama2MatchesAutoTokenizer) {
  check_autotokenizer("llama2", true, false);
}
TEST_F(TokenizerParity, ByteLevelTokenizersMatchAutoTokenizerWhenItsOutputIsPresent) {
  for (const char* name : {"llama3_1", "qwen2_5", "qwen3"}) check_autotokenizer(name, false, true);
}

}  // namespace
}  // namespace xy::tokenizer
