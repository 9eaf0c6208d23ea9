// Loading: malformed or unsupported tokenizer.json files fail with the file and JSON path;
// config fields; encode() is total over arbitrary bytes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include <utf8proc.h>

#include "tokenizer/reference_data.h"
#include "xyserve/common/error.h"
#include "xyserve/tokenizer/tokenizer.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

using testing::read_json_file;
using testing::tokenizer_dir;

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("xy_tok_load_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  std::filesystem::path path_;
};

// A small valid byte-level tokenizer.json, mutated by the tests.
nlohmann::json tiny_tokenizer() {
  return nlohmann::json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 5, "content": "<s>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                      "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
              "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4},
              "merges": ["a b", "Ġ ab"]}
  })");
}

// Loads `j` from a temp dir and returns the error message ("" when it loads).
std::string load_error(const nlohmann::json& j) {
  TempDir dir;
  dir.write("tokenizer.json", j.dump());
  try {
    Tokenizer::load(dir.path());
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerLoad, TinyTokenizerLoadsAndMerges) {
  TempDir dir;
  dir.write("tokenizer.json", tiny_tokenizer().dump());
  const auto tok = Tokenizer::load(dir.path());
  EXPECT_EQ(tok->encode("ab ab<s>"), (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{2, 4, 5}), "ab ab<s>");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{2, 4, 5}, true), "ab ab");
  EXPECT_EQ(tok->vocab_size(), 6);
  EXPECT_TRUE(tok->is_special(5));
  EXPECT_FALSE(tok->is_special(2));
}

TEST(TokenizerLoad, MissingFileNamesThePath) {
  TempDir dir;
  try {
    Tokenizer::load(dir.path());
    FAIL() << "expected ModelError";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir.path().string()), std::string::npos) << e.what();
  }
}

TEST(TokenizerLoad, BadJsonNamesTheFile) {
  TempDir dir;
  dir.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\",");
  try {
    Tokenizer::load(dir.path());
    FAIL() << "expected ModelError";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: invalid JSON"), std::string::npos)
        << e.what();
  }
}

TEST(TokenizerLoad, UnknownModelTypeNamesFieldAndType) {
  auto j = tiny_tokenizer();
  j["model"]["type"] = "Unigram";
  const std::string e = load_error(j);
  EXPECT_NE(e.find("tokenizer.json: model.type: unsupported model type \"Unigram\""),
            std::string::npos) << e;
}

TEST(TokenizerLoad, UnknownPreTokenizerTypeNamesItsJsonPath) {
  auto j = tiny_tokenizer();
  j["pre_tokenizer"] = nlohmann::json::parse(
      R"({"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Whitespace"}]})");
  const std::string e = load_error(j);
  EXPECT_NE(e.find("pre_tokenizer.pretokenizers[1].type: unsupported pre_tokenizer type "
                   "\"Whitespace\""),
            std::string::npos) << e;
}

TEST(TokenizerLoad, UnknownNormalizerDecoderAndPostProcessorNameTheirPaths) {
  auto j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "BertNormalizer"}}}}};
  EXPECT_NE(load_error(j).find("normalizer.normalizers[0].type: unsupported normalizer type"),
            std::string::npos) << load_error(j);
  j = tiny_tokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(load_error(j).find("decoder.type: unsupported decoder type \"WordPiece\""),
            std::string::npos) << load_error(j);
  j = tiny_tokenizer();
  j["post_processor"] = {{"type", "Fancy"}};
  EXPECT_NE(load_error(j).find("post_processor.type: unsupported post_processor type"),
            std::string::npos) << load_error(j);
}

TEST(TokenizerLoad, MalformedFieldsNameTheirPaths) {
  auto j = tiny_tokenizer();
  j["model"]["merges"][1] = "Ġ zz";
  EXPECT_NE(load_error(j).find("model.merges[1]: merge \"Ġ\" + \"zz\": token \"zz\" is not in "
                               "model.vocab"),
            std::string::npos) << load_error(j);
  j = tiny_tokenizer();
  j["model"].erase("vocab");
  EXPECT_NE(load_error(j).find("model.vocab: missing field"), std::string::npos) << load_error(j);
  j = tiny_tokenizer();
  j["added_tokens"][0]["id"] = "five";
  EXPECT_NE(load_error(j).find("added_tokens[0].id: expected an integer"), std::string::npos)
      << load_error(j);
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                        {"behavior", "Isolated"}};
  EXPECT_NE(load_error(j).find("pre_tokenizer.pattern.Regex: regex does not compile"),
            std::string::npos) << load_error(j);
}

TEST(TokenizerLoad, ConfigGivesBosEosAndChatTemplate) {
  const auto llama3 = Tokenizer::load(tokenizer_dir("llama3_1"));
  EXPECT_EQ(llama3->bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(llama3->bos_token_id(), 128000);
  EXPECT_EQ(llama3->eos_token(), "<|eot_id|>");
  EXPECT_EQ(llama3->eos_token_ids(), std::vector<int32_t>{128009});
  EXPECT_NE(llama3->chat_template().find("start_header_id"), std::string::npos);
  const auto qwen = Tokenizer::load(tokenizer_dir("qwen2_5"));
  EXPECT_FALSE(qwen->bos_token_id().has_value());
  EXPECT_EQ(qwen->eos_token_ids(), std::vector<int32_t>{151645});
  EXPECT_EQ(qwen->vocab_size(), 151665);
  const auto llama2 = Tokenizer::load(tokenizer_dir("llama2"));
  EXPECT_EQ(llama2->bos_token_id(), 1);
  EXPECT_EQ(llama2->chat_template(), "");
  EXPECT_EQ(llama2->encode("Hello", true), (std::vector<int32_t>{1, 22557}));
}

// Random bytes never crash encode(), and the ids decode back to the lossy reading of the
// bytes (Python's errors="replace") for the byte-level tokenizers.
TEST(TokenizerEncode, RandomBytesNeverCrashAndRoundTripAsLossyText) {
  for (const char* name : {"llama3_1", "qwen3", "llama2"}) {
    const auto tok = Tokenizer::load(tokenizer_dir(name));
    std::mt19937 rng(99);
    for (int trial = 0; trial < 2000; ++trial) {
      std::string bytes(rng() % 64, '\0');
      for (char& c : bytes) {
        // Mostly high bytes, so that broken sequences are frequent.
        c = static_cast<char>(rng() % 4 == 0 ? rng() % 128 : 128 + rng() % 128);
      }
      const auto ids = tok->encode(bytes);
      for (int32_t id : ids) ASSERT_LT(id, tok->vocab_size());
      const std::string lossy = utf8::repair(bytes);
      if (std::string(name) == "llama3_1") {  // no normalizer: exact round trip
        ASSERT_EQ(tok->decode(tok->encode(bytes, false)), lossy) << name << " trial " << trial;
      } else if (std::string(name) == "qwen3") {  // NFC normalizer: round trip to NFC
        utf8proc_uint8_t* nfc = nullptr;  // with a length: the bytes may hold NULs
        const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(lossy.data()),
                                    static_cast<utf8proc_ssize_t>(lossy.size()), &nfc,
                                    static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        ASSERT_GE(n, 0);
        const std::string expected(reinterpret_cast<const char*>(nfc), static_cast<size_t>(n));
        std::free(nfc);
        ASSERT_EQ(tok->decode(tok->encode(bytes, false)), expected) << name << " trial " << trial;
      }
    }
  }
}

TEST(Utf8, RepairMatchesMaximalSubpartRule) {
  // Cases from the Unicode standard's Table 3-8 discussion.
  EXPECT_EQ(utf8::repair("a\xF1\x80\x80" "b"), "a\xEF\xBF\xBD" "b");  // truncated: one U+FFFD
  EXPECT_EQ(utf8::repair("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");       // overlong: two
  EXPECT_EQ(utf8::repair("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8::repair("\xE2\x82\xAC"), "\xE2\x82\xAC");
  EXPECT_EQ(utf8::incomplete_tail_length("ab\xE2\x82"), 2u);
  EXPECT_EQ(utf8::incomplete_tail_length("ab\xE2\x82\xAC"), 0u);
  EXPECT_EQ(utf8::incomplete_tail_length("ab\xFF"), 0u);
}

}  // namespace
}  // namespace xy::tokenizer
