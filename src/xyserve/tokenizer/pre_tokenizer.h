// tokenizer.json "pre_tokenizer": cuts a normalized segment into words that the model
// tokenizes independently. Supported: Split (String or Regex pattern, every behavior,
// invert), ByteLevel (add_prefix_space, use_regex with GPT-2's pattern), Metaspace, Sequence.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their refinement; empty pieces are dropped. `first_at_start` says
  // whether pieces[0] begins at offset 0 of the user's text (Metaspace prepend_scheme
  // "first" needs it). Preconditions: pieces are valid UTF-8. Thread-safe.
  virtual void pre_tokenize(std::vector<std::string>& pieces, bool first_at_start) const = 0;
};

// nullptr for a JSON null. Throws xy::ModelError naming `at` for unknown types.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const JsonPath& at);

}  // namespace xy::tokenizer
