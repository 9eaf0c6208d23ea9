#include "xyserve/tokenizer/normalizer.h"

#include <utf8proc.h>

#include <vector>

#include "xyserve/tokenizer/regex.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void normalize(std::string& text) const override {
    // Fast path: ASCII is invariant under every normalization form.
    bool ascii = true;
    for (char c : text) ascii &= static_cast<uint8_t>(c) < 0x80;
    if (ascii || text.empty()) return;
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(
        reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
        static_cast<utf8proc_ssize_t>(text.size()), &out,
        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | options_));
    if (n < 0) return;  // only on invalid input, which the caller has already repaired
    text.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);
  }

 private:
  int options_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
      const char32_t cp = utf8::next(text, i);
      utf8::append(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
    text = std::move(out);
  }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  // Hugging Face prepends only to non-empty segments.
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  explicit ReplaceNormalizer(ReplacePattern pattern) : pattern_(std::move(pattern)) {}
  void normalize(std::string& text) const override { pattern_.apply(text); }

 private:
  ReplacePattern pattern_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      size_t i = 0;
      while (i < end) {
        size_t j = i;
        if (!utf8::is_whitespace(utf8::next(text, j))) break;
        i = j;
      }
      begin = i;
    }
    if (right_) {
      while (end > begin) {
        size_t k = end - 1;
        while (k > begin && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
        size_t j = k;
        if (!utf8::is_whitespace(utf8::next(text, j))) break;
        end = k;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> items)
      : items_(std::move(items)) {}
  void normalize(std::string& text) const override {
    for (const auto& n : items_) n->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

}  // namespace

void ReplacePattern::apply(std::string& text) const {
  if (regex) {
    std::vector<std::pair<size_t, size_t>> matches;
    regex->find_all(text, matches);
    if (matches.empty()) return;
    std::string out;
    size_t prev = 0;
    for (auto [b, e] : matches) {
      out.append(text, prev, b - prev);
      out += content;
      prev = e;
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
    return;
  }
  if (literal.empty()) return;
  size_t pos = text.find(literal);
  if (pos == std::string::npos) return;
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  size_t prev = 0;
  while (pos != std::string::npos) {
    out.append(text, prev, pos - prev);
    out += content;
    prev = pos + literal.size();
    pos = text.find(literal, prev);
  }
  out.append(text, prev, std::string::npos);
  text = std::move(out);
}

ReplacePattern make_replace_pattern(const Json& j, const JsonPath& at) {
  ReplacePattern p;
  const Json& pattern = require(j, at, "pattern");
  const JsonPath pat = at.field("pattern");
  if (pattern.is_object() && pattern.contains("String")) {
    p.literal = require_string(pattern, pat, "String");
  } else if (pattern.is_object() && pattern.contains("Regex")) {
    p.regex = std::make_shared<Regex>(require_string(pattern, pat, "Regex"), pat.field("Regex"));
  } else {
    pat.fail("expected {\"String\": ...} or {\"Regex\": ...}");
  }
  p.content = require_string(j, at, "content");
  return p;
}

std::unique_ptr<Normalizer> make_normalizer(const Json& j, const JsonPath& at) {
  if (j.is_null()) return nullptr;
  const std::string type = require_string(j, at, "type");
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_DECOMPOSE);
  if (type == "NFKC")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(require_string(j, at, "prepend"));
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(make_replace_pattern(j, at));
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(optional_bool(j, at, "strip_left", true),
                                             optional_bool(j, at, "strip_right", true));
  }
  if (type == "Sequence") {
    const Json& items = require_array(j, at, "normalizers");
    std::vector<std::unique_ptr<Normalizer>> out;
    for (size_t i = 0; i < items.size(); ++i) {
      auto n = make_normalizer(items[i], at.field("normalizers").index(i));
      if (n) out.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(out));
  }
  at.field("type").fail(cat("unsupported normalizer type \"", type,
                            "\" (supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, "
                            "Strip, Sequence)"));
}

}  // namespace xy::tokenizer
