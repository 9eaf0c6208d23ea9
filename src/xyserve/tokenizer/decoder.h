// tokenizer.json "decoder": turns token strings back into text. Supported: ByteLevel,
// Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence. Each stage maps a list of token
// strings to a new list, as Hugging Face's decode_chain does; the result is their join.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // keep_raw_bytes: ByteLevel leaves its bytes as they are instead of replacing ill-formed
  // UTF-8 with U+FFFD, so that a streaming caller can see a truncated character. Thread-safe.
  virtual void decode_chain(std::vector<std::string>& tokens, bool keep_raw_bytes) const = 0;
  // True when the text of `token` may still change with the tokens after it (ByteFallback's
  // <0xNN> groups): a streaming caller must not emit past it yet.
  virtual bool joins_with_next(const std::string& token) const { return false; }
};

// nullptr for a JSON null. Throws xy::ModelError naming `at` for unknown types.
std::unique_ptr<Decoder> make_decoder(const Json& j, const JsonPath& at);

}  // namespace xy::tokenizer
