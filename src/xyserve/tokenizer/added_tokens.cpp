#include "xyserve/tokenizer/added_tokens.h"

#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {

std::vector<AddedToken> parse_added_tokens(const Json& j, const JsonPath& at) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  if (!j.is_array()) at.fail(cat("expected an array, found ", json_kind(j)));
  for (size_t i = 0; i < j.size(); ++i) {
    const JsonPath a = at.index(i);
    AddedToken t;
    const int64_t id = require_int(j[i], a, "id");
    if (id < 0 || id > INT32_MAX) a.field("id").fail(cat("expected a non-negative id, found ", id));
    t.id = static_cast<int32_t>(id);
    t.content = require_string(j[i], a, "content");
    if (t.content.empty()) a.field("content").fail("empty added token");
    t.special = optional_bool(j[i], a, "special", false);
    t.lstrip = optional_bool(j[i], a, "lstrip", false);
    t.rstrip = optional_bool(j[i], a, "rstrip", false);
    t.single_word = optional_bool(j[i], a, "single_word", false);
    t.normalized = optional_bool(j[i], a, "normalized", !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens, bool normalized) {
  nodes_.emplace_back();
  for (const AddedToken& t : tokens) {
    if (t.normalized != normalized) continue;
    const int32_t index = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(&t);
    int32_t node = 0;
    for (char c : t.content) {
      const uint8_t b = static_cast<uint8_t>(c);
      int32_t child = -1;
      for (auto [byte, n] : nodes_[node].children)
        if (byte == b) child = n;
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    // A duplicate content keeps the first token, like a map built in order.
    if (nodes_[node].token < 0) nodes_[node].token = index;
    first_byte_[static_cast<uint8_t>(t.content[0])] = true;
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t& length) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(text[i]);
    int32_t child = -1;
    for (auto [byte, n] : nodes_[node].children)
      if (byte == b) child = n;
    if (child < 0) break;
    node = child;
    if (nodes_[node].token >= 0) {
      best = nodes_[node].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

namespace {

// Whether the text before `pos` ends with a word character (regex \w$).
bool ends_with_word(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  size_t k = pos - 1;
  while (k > 0 && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
  size_t i = k;
  return utf8::is_word_char(utf8::next(text, i));
}

bool starts_with_word(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  size_t i = pos;
  return utf8::is_word_char(utf8::next(text, i));
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<TextSegment>& out) const {
  size_t start_offset = 0;  // end of the last emitted segment
  size_t pos = 0;           // where the next search begins
  while (pos < text.size() && !tokens_.empty()) {
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    const int32_t index = longest_at(text, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = *tokens_[index];
    size_t start = pos, stop = pos + length;
    // The next search resumes after the raw match, as Hugging Face's find_iter does.
    pos = stop;
    if (token.single_word && (ends_with_word(text, start) || starts_with_word(text, stop))) {
      continue;
    }
    if (token.lstrip) {
      size_t k = start;
      while (k > start_offset) {
        size_t lead = k - 1;
        while (lead > 0 && (static_cast<uint8_t>(text[lead]) & 0xC0) == 0x80) --lead;
        size_t i = lead;
        if (!utf8::is_whitespace(utf8::next(text, i))) break;
        k = lead;
      }
      start = k;
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t i = stop;
        if (!utf8::is_whitespace(utf8::next(text, i))) break;
        stop = i;
      }
      pos = std::max(pos, stop);
    }
    if (start > start_offset) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < text.size() || text.empty()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace xy::tokenizer
