// tokenizer.json "added_tokens": tokens matched in the text before the model sees it.
// Matching follows Hugging Face's AddedVocabulary: leftmost-longest, non-overlapping; tokens
// with normalized=false are matched in the raw text, those with normalized=true in each
// normalized segment; lstrip/rstrip swallow the whitespace beside a match; single_word
// tokens only match between non-word characters.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// The "added_tokens" array; errors name file and index.
std::vector<AddedToken> parse_added_tokens(const Json& j, const JsonPath& at);

// A piece of the text: either an added token (id >= 0) or text for the model (id == -1).
struct TextSegment {
  size_t begin, end;
  int32_t id;
};

// Finds the added tokens of one kind (normalized or not) in a string.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `tokens` must outlive the matcher; only those with t.normalized == normalized are used.
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, bool normalized);

  bool empty() const { return tokens_.empty(); }

  // Cuts text into segments covering it. Empty text gives one empty text segment. Thread-safe.
  void split(std::string_view text, std::vector<TextSegment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // byte -> node index
    int32_t token = -1;                                 // index into tokens_ when terminal
  };
  // Longest token starting at text[pos]: index into tokens_ and its length, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t& length) const;

  std::vector<const AddedToken*> tokens_;
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
};

}  // namespace xy::tokenizer
