// A Hugging Face tokenizer.json tokenizer: byte-level BPE (Llama 3, Qwen2.5, Qwen3) and
// SentencePiece-style BPE with byte fallback (Llama 2 / Mistral), producing the ids that
// users of transformers.AutoTokenizer get.
//
// encode() pipeline, as Hugging Face runs it: (1) repair invalid UTF-8 (see below); (2) cut
// out added tokens with normalized=false from the raw text; (3) normalize each remaining
// segment and cut out added tokens with normalized=true; (4) pre-tokenize each segment into
// words; (5) BPE each word; (6) wrap with the post-processor's special tokens when
// add_special_tokens.
//
// Invalid UTF-8 given to encode() is read as Python's bytes.decode("utf-8", errors="replace")
// reads it (each maximal ill-formed subpart becomes U+FFFD): that is the str a Python user
// would have handed to Hugging Face. encode() accepts any byte string; the only error it can
// raise is xy::InvalidArgument when PCRE2 exceeds its match limits on pathological input
// (2 MB runs of one character encode fine).
//
// Threading: a loaded Tokenizer is immutable except for its internal word cache, which is
// locked; every const method is thread-safe. IncrementalDetokenizer is one per stream.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace xy::tokenizer {

class Normalizer;
class PreTokenizer;
class BpeModel;
class Decoder;
class AddedTokenMatcher;
struct AddedToken;

struct LoadOptions {
  // transformers (v5) rebuilds the pipeline of SentencePiece-style Llama tokenizers instead
  // of reading it from tokenizer.json: no normalizer, a Metaspace pre-tokenizer (split=false,
  // prepend "always" when legacy, else "first"). Its ids differ from the tokenizers library
  // on ~3% of strings (leading/repeated spaces, text after a special token). On by default:
  // what vLLM and SGLang users get. Off: exactly what tokenizer.json describes.
  bool match_transformers = true;
};

class Tokenizer {
 public:
  // dir/tokenizer.json, plus dir/tokenizer_config.json when present. Throws xy::ModelError
  // naming file and field (JSON path) for missing files, bad JSON and unsupported components.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& dir,
                                         const LoadOptions& options = {});
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Unknown ids are skipped, as Hugging Face does.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // max id + 1 over the model vocab and added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for an unknown id
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_token_id() const;
  std::vector<int32_t> eos_token_ids() const;
  const std::string& chat_template() const { return chat_template_; }
  std::string bos_token() const { return bos_token_; }
  std::string eos_token() const { return eos_token_; }

  // For IncrementalDetokenizer: decode without repairing ByteLevel's bytes, and whether a
  // token's text may still change with the tokens after it.
  std::string decode_raw(std::span<const int32_t> ids, bool skip_special_tokens) const;
  bool joins_with_next(int32_t id) const;

 private:
  Tokenizer();
  void encode_segment(std::string& text, bool at_start, std::vector<int32_t>& out) const;
  std::string decode_impl(std::span<const int32_t> ids, bool skip_special_tokens,
                          bool keep_raw_bytes) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_tokens_;
  std::unique_ptr<AddedTokenMatcher> raw_matcher_;         // normalized == false
  std::unique_ptr<AddedTokenMatcher> normalized_matcher_;  // normalized == true
  std::unordered_map<int32_t, size_t> added_by_id_;        // id -> index in added_tokens_
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;           // post-processor wrap
  std::string chat_template_, bos_token_, eos_token_;
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
};

// Streams the text of generated tokens. Each push() returns the text that became final with
// that token; the concatenation of all pushes and flush() equals
// decode(context ++ generated)[len(decode(context)):], where context is the tail of
// prompt_ids (so with no prompt it equals decode(generated)). Every returned piece is valid
// UTF-8: a character split over tokens (byte-level or <0xNN> byte fallback) comes out whole
// once complete. Not thread-safe; one per request stream.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens = true,
                         std::span<const int32_t> prompt_ids = {});
  std::string push(int32_t id);
  std::string flush();

 private:
  std::string take(bool final);

  const Tokenizer& tok_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // context tail + generated ids (skipped specials left out)
  size_t prefix_offset_ = 0;  // start of the decode window
  size_t read_offset_ = 0;    // ids before this are already emitted
};

}  // namespace xy::tokenizer
