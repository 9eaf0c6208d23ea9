// tokenizer.json "normalizer": rewrites each text segment (between added tokens) before
// pre-tokenization. Supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip,
// Sequence. Anything else fails at load.
#pragma once

#include <memory>
#include <string>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Precondition: text is valid UTF-8; it stays valid. Thread-safe.
  virtual void normalize(std::string& text) const = 0;
};

// nullptr for a JSON null. Throws xy::ModelError naming `at` for unknown types.
std::unique_ptr<Normalizer> make_normalizer(const Json& j, const JsonPath& at);

// Replace's `pattern` field ({"String": s} or {"Regex": r}) shared with the decoder.
class Regex;
struct ReplacePattern {
  std::string literal;              // when regex is null
  std::shared_ptr<Regex> regex;     // when the pattern is {"Regex": ...}
  std::string content;
  void apply(std::string& text) const;
};
ReplacePattern make_replace_pattern(const Json& j, const JsonPath& at);

}  // namespace xy::tokenizer
