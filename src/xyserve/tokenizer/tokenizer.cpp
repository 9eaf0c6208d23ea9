#include "xyserve/tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "xyserve/common/error.h"
#include "xyserve/tokenizer/added_tokens.h"
#include "xyserve/tokenizer/bpe_model.h"
#include "xyserve/tokenizer/decoder.h"
#include "xyserve/tokenizer/json_fields.h"
#include "xyserve/tokenizer/normalizer.h"
#include "xyserve/tokenizer/post_processor.h"
#include "xyserve/tokenizer/pre_tokenizer.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

Json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(cat(path.string(), ": cannot open file"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return Json::parse(buffer.str());
  } catch (const Json::parse_error& e) {
    throw ModelError(cat(path.string(), ": invalid JSON: ", e.what()));
  }
}

// bos_token / eos_token in tokenizer_config.json: a string, {"content": ...}, or null.
std::string config_token(const Json& config, const JsonPath& at, const std::string& key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) return require_string(*it, at.field(key), "content");
  at.field(key).fail(cat("expected a string or {\"content\": ...}, found ", json_kind(*it)));
}

// chat_template: a string, or a list of {"name", "template"} from which "default" is taken.
std::string config_chat_template(const Json& config, const JsonPath& at) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& t = (*it)[i];
      const JsonPath ti = at.field("chat_template").index(i);
      if (require_string(t, ti, "name") == "default") return require_string(t, ti, "template");
    }
    return "";
  }
  at.field("chat_template").fail(cat("expected a string or a list, found ", json_kind(*it)));
}

// The normalizer that the tokenizers library writes for a SentencePiece (legacy) Llama
// tokenizer: Prepend("▁") then Replace(" " -> "▁").
bool is_sentencepiece_legacy_normalizer(const Json& n) {
  if (!n.is_object() || n.value("type", "") != "Sequence") return false;
  const Json& items = n.value("normalizers", Json::array());
  return items.size() == 2 && items[0].value("type", "") == "Prepend" &&
         items[1].value("type", "") == "Replace";
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::filesystem::path& dir,
                                           const LoadOptions& options) {
  const std::filesystem::path json_path = dir / "tokenizer.json";
  const Json j = read_json(json_path);
  const JsonPath root{json_path.string(), ""};
  if (!j.is_object()) root.fail(cat("expected an object, found ", json_kind(j)));

  Json config = Json::object();
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) config = read_json(config_path);
  const JsonPath config_root{config_path.string(), ""};
  if (!config.is_object()) config_root.fail(cat("expected an object, found ", json_kind(config)));

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  if (auto it = j.find("truncation"); it != j.end() && !it->is_null()) {
    root.field("truncation").fail("truncation is not supported (the engine bounds lengths)");
  }
  if (auto it = j.find("padding"); it != j.end() && !it->is_null()) {
    root.field("padding").fail("padding is not supported (the engine batches without padding)");
  }
  t->model_ = std::make_unique<BpeModel>(require(j, root, "model"), root.field("model"));

  Json normalizer = j.value("normalizer", Json());
  Json pre_tokenizer = j.value("pre_tokenizer", Json());
  const std::string tokenizer_class = config.value("tokenizer_class", Json("")).is_string()
                                          ? config.value("tokenizer_class", std::string())
                                          : std::string();
  if (options.match_transformers &&
      (tokenizer_class == "LlamaTokenizer" || tokenizer_class == "LlamaTokenizerFast") &&
      is_sentencepiece_legacy_normalizer(normalizer) && pre_tokenizer.is_null()) {
    // transformers' LlamaTokenizer.__init__ (v5) replaces the file's pipeline; see LoadOptions.
    const bool add_prefix_space = optional_bool(config, config_root, "add_prefix_space", true);
    const bool legacy = optional_bool(config, config_root, "legacy", false);
    pre_tokenizer = Json{{"type", "Metaspace"},
                         {"replacement", "\u2581"},
                         {"prepend_scheme", !add_prefix_space ? "never" : legacy ? "always" : "first"},
                         {"split", false}};
    normalizer = Json();
  }
  t->normalizer_ = make_normalizer(normalizer, root.field("normalizer"));
  t->pre_tokenizer_ = make_pre_tokenizer(pre_tokenizer, root.field("pre_tokenizer"));
  t->decoder_ = make_decoder(j.value("decoder", Json()), root.field("decoder"));
  SpecialTokenWrap wrap =
      make_post_processor(j.value("post_processor", Json()), root.field("post_processor"));
  t->prefix_ids_ = std::move(wrap.prefix);
  t->suffix_ids_ = std::move(wrap.suffix);

  t->added_tokens_ = parse_added_tokens(j.value("added_tokens", Json()), root.field("added_tokens"));
  for (size_t i = 0; i < t->added_tokens_.size(); ++i) {
    t->added_by_id_.emplace(t->added_tokens_[i].id, i);
    t->added_by_content_.emplace(t->added_tokens_[i].content, t->added_tokens_[i].id);
  }
  t->raw_matcher_ = std::make_unique<AddedTokenMatcher>(t->added_tokens_, false);
  t->normalized_matcher_ = std::make_unique<AddedTokenMatcher>(t->added_tokens_, true);

  t->chat_template_ = config_chat_template(config, config_root);
  t->bos_token_ = config_token(config, config_root, "bos_token");
  t->eos_token_ = config_token(config, config_root, "eos_token");
  if (!t->bos_token_.empty()) {
    t->bos_id_ = t->token_to_id(t->bos_token_);
    if (!t->bos_id_) config_root.field("bos_token").fail(cat("\"", t->bos_token_, "\" is not a token"));
  }
  if (!t->eos_token_.empty()) {
    auto id = t->token_to_id(t->eos_token_);
    if (!id) config_root.field("eos_token").fail(cat("\"", t->eos_token_, "\" is not a token"));
    t->eos_ids_.push_back(*id);
  }
  return t;
}

void Tokenizer::encode_segment(std::string& text, bool at_start, std::vector<int32_t>& out) const {
  thread_local std::vector<std::string> pieces;
  if (normalizer_) normalizer_->normalize(text);
  auto model_pass = [&](std::string_view s, bool first) {
    if (s.empty()) return;
    pieces.clear();
    pieces.emplace_back(s);
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces, first);
    for (const std::string& word : pieces) model_->tokenize(word, out);
  };
  if (normalized_matcher_->empty()) {
    model_pass(text, at_start);
    return;
  }
  std::vector<TextSegment> segments;
  normalized_matcher_->split(text, segments);
  for (const TextSegment& s : segments) {
    if (s.id >= 0) out.push_back(s.id);
    else model_pass(std::string_view(text).substr(s.begin, s.end - s.begin), at_start && s.begin == 0);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  std::string repaired;
  std::string_view text = input;
  if (!utf8::is_valid(input)) {
    repaired = utf8::repair(input);
    text = repaired;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special_tokens) out.insert(out.end(), prefix_ids_.begin(), prefix_ids_.end());
  thread_local std::vector<TextSegment> segments;
  segments.clear();
  raw_matcher_->split(text, segments);
  std::vector<TextSegment> local(segments);  // encode_segment may reuse the thread_local
  std::string segment;
  for (const TextSegment& s : local) {
    if (s.id >= 0) {
      out.push_back(s.id);
    } else if (s.end > s.begin) {
      segment.assign(text.substr(s.begin, s.end - s.begin));
      encode_segment(segment, s.begin == 0, out);
    }
  }
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

std::string Tokenizer::decode_impl(std::span<const int32_t> ids, bool skip_special_tokens,
                                   bool keep_raw_bytes) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    std::string token = id_to_token(id);
    if (token.empty()) continue;  // unknown id: Hugging Face drops it
    tokens.push_back(std::move(token));
  }
  std::string text;
  if (decoder_) {
    decoder_->decode_chain(tokens, keep_raw_bytes);
    for (const std::string& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  if (!keep_raw_bytes && !utf8::is_valid(text)) text = utf8::repair(text);
  return text;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return decode_impl(ids, skip_special_tokens, false);
}

std::string Tokenizer::decode_raw(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return decode_impl(ids, skip_special_tokens, true);
}

bool Tokenizer::joins_with_next(int32_t id) const {
  return decoder_ && decoder_->joins_with_next(id_to_token(id));
}

int64_t Tokenizer::vocab_size() const {
  int64_t n = model_->size();
  for (const AddedToken& t : added_tokens_) n = std::max<int64_t>(n, int64_t{t.id} + 1);
  return n;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end())
    return it->second;
  return model_->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end())
    return added_tokens_[it->second].content;
  return model_->id_to_token(id);
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_tokens_[it->second].special;
}

std::optional<int32_t> Tokenizer::bos_token_id() const { return bos_id_; }
std::vector<int32_t> Tokenizer::eos_token_ids() const { return eos_ids_; }

}  // namespace xy::tokenizer
