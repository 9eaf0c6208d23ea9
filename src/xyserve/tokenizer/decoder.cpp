#include "xyserve/tokenizer/decoder.h"

#include "xyserve/tokenizer/normalizer.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  // Tokens whose characters are all in the byte table become those bytes; any other token
  // (an added token with characters outside it) contributes its own UTF-8. The bytes of
  // all tokens are then read as UTF-8 together, so characters can span tokens.
  void decode_chain(std::vector<std::string>& tokens, bool keep_raw_bytes) const override {
    const auto& table = utf8::ByteLevelTable::get();
    std::string bytes;
    std::string token_bytes;
    for (const std::string& t : tokens) {
      token_bytes.clear();
      bool all_mapped = true;
      size_t i = 0;
      while (i < t.size()) {
        if (utf8::valid_sequence_length(t, i) == 0) {
          all_mapped = false;
          break;
        }
        const int b = table.decode(utf8::next(t, i));
        if (b < 0) {
          all_mapped = false;
          break;
        }
        token_bytes.push_back(static_cast<char>(b));
      }
      bytes += all_mapped ? token_bytes : t;
    }
    tokens.assign(1, keep_raw_bytes ? std::move(bytes) : utf8::repair(bytes));
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  explicit ReplaceDecoder(ReplacePattern pattern) : pattern_(std::move(pattern)) {}
  void decode_chain(std::vector<std::string>& tokens, bool) const override {
    for (std::string& t : tokens) pattern_.apply(t);
  }

 private:
  ReplacePattern pattern_;
};

// Parses "<0xNN>" (exactly six bytes, two hex digits); -1 otherwise.
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder final : public Decoder {
 public:
  // A run of <0xNN> tokens becomes its bytes when they are valid UTF-8, else one U+FFFD per
  // byte (Hugging Face replaces the whole run, valid characters included).
  void decode_chain(std::vector<std::string>& tokens, bool) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_length = 0;
    auto flush = [&] {
      if (run_length == 0) return;
      if (utf8::is_valid(run)) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run_length; ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_length = 0;
    };
    for (std::string& t : tokens) {
      const int b = byte_token_value(t);
      if (b >= 0) {
        run.push_back(static_cast<char>(b));
        ++run_length;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
  bool joins_with_next(const std::string& token) const override {
    return byte_token_value(token) >= 0;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, bool) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  // Removes up to `start` leading and `stop` trailing copies of `content` from each token.
  void decode_chain(std::vector<std::string>& tokens, bool) const override {
    for (std::string& t : tokens) {
      size_t begin = 0, end = t.size();
      for (size_t k = 0; k < start_ && t.compare(begin, content_.size(), content_) == 0 &&
                         begin + content_.size() <= end;
           ++k)
        begin += content_.size();
      for (size_t k = 0; k < stop_ && end >= begin + content_.size() &&
                         t.compare(end - content_.size(), content_.size(), content_) == 0;
           ++k)
        end -= content_.size();
      t = t.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens, bool) const override {
    ReplacePattern p{replacement_, nullptr, " "};
    for (size_t i = 0; i < tokens.size(); ++i) {
      p.apply(tokens[i]);
      if (i == 0 && strip_first_ && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  void decode_chain(std::vector<std::string>& tokens, bool keep_raw_bytes) const override {
    for (const auto& d : items_) d->decode_chain(tokens, keep_raw_bytes);
  }
  bool joins_with_next(const std::string& token) const override {
    for (const auto& d : items_)
      if (d->joins_with_next(token)) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& j, const JsonPath& at) {
  if (j.is_null()) return nullptr;
  const std::string type = require_string(j, at, "type");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(make_replace_pattern(j, at));
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    const std::string content = require_string(j, at, "content");
    const int64_t start = require_int(j, at, "start"), stop = require_int(j, at, "stop");
    if (start < 0 || stop < 0) at.fail("Strip start/stop must be non-negative");
    return std::make_unique<StripDecoder>(content, static_cast<size_t>(start),
                                          static_cast<size_t>(stop));
  }
  if (type == "Metaspace") {
    bool strip_first = optional_bool(j, at, "add_prefix_space", true);
    if (j.contains("prepend_scheme")) strip_first = require_string(j, at, "prepend_scheme") != "never";
    return std::make_unique<MetaspaceDecoder>(optional_string(j, at, "replacement", "\u2581"),
                                              strip_first);
  }
  if (type == "Sequence") {
    const Json& items = require_array(j, at, "decoders");
    std::vector<std::unique_ptr<Decoder>> out;
    for (size_t i = 0; i < items.size(); ++i) {
      auto d = make_decoder(items[i], at.field("decoders").index(i));
      if (d) out.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(out));
  }
  at.field("type").fail(cat("unsupported decoder type \"", type,
                            "\" (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                            "Metaspace, Sequence)"));
}

}  // namespace xy::tokenizer
