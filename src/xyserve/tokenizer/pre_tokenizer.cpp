#include "xyserve/tokenizer/pre_tokenizer.h"

#include <algorithm>

#include "xyserve/tokenizer/regex.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

// GPT-2's pattern, which ByteLevel applies when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A segment of the input: [begin, end) and whether it is a pattern match.
struct Span {
  size_t begin, end;
  bool is_match;
};

// Applies `behavior` to the match/non-match cover of a piece (Hugging Face's
// NormalizedString::split) and appends the kept, non-empty parts to out.
void split_by_behavior(const std::string& piece, const std::vector<Span>& spans,
                       SplitBehavior behavior, std::vector<std::string>& out) {
  std::vector<std::pair<size_t, size_t>> kept;
  kept.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) kept.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans)
        if (!s.is_match) kept.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !kept.empty()) kept.back().second = s.end;
        else kept.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !kept.empty()) kept.back().second = s.end;
        else kept.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = spans.size(); k-- > 0;) {
        const Span& s = spans[k];
        if (s.is_match && !previous_match && !kept.empty()) kept.back().first = s.begin;
        else kept.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (auto [b, e] : kept)
    if (e > b) out.emplace_back(piece, b, e - b);
}

// Turns match ranges into a cover of [0, size) with match flags (inverted when asked).
void cover(size_t size, const std::vector<std::pair<size_t, size_t>>& matches, bool invert,
           std::vector<Span>& spans) {
  spans.clear();
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (b > prev) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < size || spans.empty()) spans.push_back({prev, size, invert});
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> regex, std::string literal, SplitBehavior behavior,
                    bool invert)
      : regex_(std::move(regex)), literal_(std::move(literal)), behavior_(behavior),
        invert_(invert) {}

  void pre_tokenize(std::vector<std::string>& pieces, bool) const override {
    thread_local std::vector<std::string> out;
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    thread_local std::vector<Span> spans;
    out.clear();
    for (const std::string& piece : pieces) {
      matches.clear();
      if (regex_) {
        regex_->find_all(piece, matches);
      } else if (!literal_.empty()) {
        for (size_t pos = piece.find(literal_); pos != std::string::npos;
             pos = piece.find(literal_, pos + literal_.size()))
          matches.emplace_back(pos, pos + literal_.size());
      }
      cover(piece.size(), matches, invert_, spans);
      split_by_behavior(piece, spans, behavior_, out);
    }
    pieces.swap(out);
  }

 private:
  std::unique_ptr<Regex> regex_;
  std::string literal_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void pre_tokenize(std::vector<std::string>& pieces, bool) const override {
    thread_local std::vector<std::string> split;
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    thread_local std::vector<Span> spans;
    if (add_prefix_space_) {
      for (std::string& p : pieces)
        if (!p.empty() && p[0] != ' ') p.insert(0, 1, ' ');
    }
    if (regex_) {
      split.clear();
      for (const std::string& piece : pieces) {
        matches.clear();
        regex_->find_all(piece, matches);
        cover(piece.size(), matches, false, spans);
        split_by_behavior(piece, spans, SplitBehavior::kIsolated, split);
      }
      pieces.swap(split);
    }
    // Map every byte to its printable stand-in so that BPE runs over characters.
    const auto& table = utf8::ByteLevelTable::get();
    std::string mapped;
    for (std::string& p : pieces) {
      mapped.clear();
      for (char c : p) mapped += table.encode(static_cast<uint8_t>(c));
      p.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}

  void pre_tokenize(std::vector<std::string>& pieces, bool first_at_start) const override {
    std::vector<std::string> out;
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::string text;
      for (char c : pieces[k]) {
        if (c == ' ') text += replacement_;
        else text += c;
      }
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && k == 0 && first_at_start);
      // Hugging Face prepends only when the piece does not already start with it.
      if (prepend && !text.empty() && text.rfind(replacement_, 0) != 0) text.insert(0, replacement_);
      if (!split_) {
        if (!text.empty()) out.push_back(std::move(text));
        continue;
      }
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t pos = text.find(replacement_); pos != std::string::npos;
           pos = text.find(replacement_, pos + replacement_.size()))
        matches.emplace_back(pos, pos + replacement_.size());
      std::vector<Span> spans;
      cover(text.size(), matches, false, spans);
      split_by_behavior(text, spans, SplitBehavior::kMergedWithNext, out);
    }
    pieces.swap(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> items)
      : items_(std::move(items)) {}
  void pre_tokenize(std::vector<std::string>& pieces, bool first_at_start) const override {
    for (const auto& p : items_) p->pre_tokenize(pieces, first_at_start);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

SplitBehavior parse_behavior(const std::string& s, const JsonPath& at) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  at.fail(cat("unknown split behavior \"", s, "\""));
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const JsonPath& at) {
  if (j.is_null()) return nullptr;
  const std::string type = require_string(j, at, "type");
  if (type == "Split") {
    const Json& pattern = require(j, at, "pattern");
    const JsonPath pat = at.field("pattern");
    std::unique_ptr<Regex> regex;
    std::string literal;
    if (pattern.is_object() && pattern.contains("Regex")) {
      regex = std::make_unique<Regex>(require_string(pattern, pat, "Regex"), pat.field("Regex"));
    } else if (pattern.is_object() && pattern.contains("String")) {
      literal = require_string(pattern, pat, "String");
    } else {
      pat.fail("expected {\"String\": ...} or {\"Regex\": ...}");
    }
    return std::make_unique<SplitPreTokenizer>(
        std::move(regex), std::move(literal),
        parse_behavior(require_string(j, at, "behavior"), at.field("behavior")),
        optional_bool(j, at, "invert", false));
  }
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (optional_bool(j, at, "use_regex", true)) regex = std::make_unique<Regex>(kGpt2Pattern, at);
    return std::make_unique<ByteLevelPreTokenizer>(optional_bool(j, at, "add_prefix_space", true),
                                                   std::move(regex));
  }
  if (type == "Metaspace") {
    std::string replacement = optional_string(j, at, "replacement", "\u2581");
    PrependScheme scheme = optional_bool(j, at, "add_prefix_space", true) ? PrependScheme::kAlways
                                                                          : PrependScheme::kNever;
    if (j.contains("prepend_scheme")) {
      const std::string s = require_string(j, at, "prepend_scheme");
      if (s == "always") scheme = PrependScheme::kAlways;
      else if (s == "first") scheme = PrependScheme::kFirst;
      else if (s == "never") scheme = PrependScheme::kNever;
      else at.field("prepend_scheme").fail(cat("unknown prepend_scheme \"", s, "\""));
    }
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme,
                                                   optional_bool(j, at, "split", true));
  }
  if (type == "Sequence") {
    const Json& items = require_array(j, at, "pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> out;
    for (size_t i = 0; i < items.size(); ++i) {
      auto p = make_pre_tokenizer(items[i], at.field("pretokenizers").index(i));
      if (p) out.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(out));
  }
  at.field("type").fail(cat("unsupported pre_tokenizer type \"", type,
                            "\" (supported: Split, ByteLevel, Metaspace, Sequence)"));
}

}  // namespace xy::tokenizer
