// tokenizer.json "post_processor": adds special tokens around an encoded sequence when
// add_special_tokens is set. Supported: TemplateProcessing (the "single" template),
// ByteLevel (offsets only: no change to ids), BertProcessing, RobertaProcessing, Sequence.
#pragma once

#include <cstdint>
#include <vector>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

// What a post-processor does to one sequence: ids before and ids after it. Composed at load,
// so encode() only copies two short vectors.
struct SpecialTokenWrap {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

// Throws xy::ModelError naming `at` for unknown types or malformed templates.
SpecialTokenWrap make_post_processor(const Json& j, const JsonPath& at);

}  // namespace xy::tokenizer
