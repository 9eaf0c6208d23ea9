// Streaming detokenization. The text of a token can depend on its neighbours (a character
// split over byte-level tokens or <0xNN> byte-fallback tokens; a decoder that strips the
// first space of the text), so we decode a short window [prefix_offset, end) and emit what
// it adds past [prefix_offset, read_offset), as vLLM does, and hold back while the window
// ends inside a character or a byte-fallback run.
#include "xyserve/tokenizer/tokenizer.h"

#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {
// Prompt tokens kept as context: enough for any decoder's look-behind (a 4-byte character
// over 4 tokens, a leading space stripped from the first token).
constexpr size_t kContextTokens = 6;
}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens,
                                               std::span<const int32_t> prompt_ids)
    : tok_(tok), skip_special_tokens_(skip_special_tokens) {
  for (int32_t id : prompt_ids)
    if (!(skip_special_tokens_ && tok_.is_special(id))) ids_.push_back(id);
  if (ids_.size() > kContextTokens) ids_.erase(ids_.begin(), ids_.end() - kContextTokens);
  prefix_offset_ = 0;
  read_offset_ = ids_.size();
}

std::string IncrementalDetokenizer::push(int32_t id) {
  // A skipped special token contributes nothing; keeping it out of the window also keeps a
  // decoder's "first token" rule (Strip) on the same token in both decodes below.
  if (skip_special_tokens_ && tok_.is_special(id)) return "";
  ids_.push_back(id);
  if (tok_.joins_with_next(id)) return "";
  return take(false);
}

std::string IncrementalDetokenizer::flush() { return take(true); }

std::string IncrementalDetokenizer::take(bool final) {
  if (read_offset_ >= ids_.size()) return "";
  const std::span<const int32_t> all(ids_);
  // Raw bytes (ByteLevel not yet repaired), so that a character cut at the end shows up as
  // an incomplete tail rather than as U+FFFD.
  const std::string text = tok_.decode_raw(all.subspan(prefix_offset_), skip_special_tokens_);
  if (!final && utf8::incomplete_tail_length(text) > 0) return "";  // wait for the rest
  const std::string before =
      tok_.decode_raw(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  // Bytes of `before` already emitted: all but a truncated character at its end, which only
  // a prompt can leave there and which the generated tokens complete.
  size_t emitted = before.size() - utf8::incomplete_tail_length(before);
  if (text.compare(0, emitted, before, 0, emitted) != 0) {
    // The new tokens changed earlier text (a <0xNN> run continued from the prompt). Emit
    // from the first difference on a character boundary, so that nothing is lost.
    if (!final) return "";
    size_t common = 0;
    while (common < emitted && common < text.size() && text[common] == before[common]) ++common;
    while (common > 0 && (static_cast<uint8_t>(text[common]) & 0xC0) == 0x80) --common;
    emitted = common;
  }
  std::string out = utf8::repair(std::string_view(text).substr(emitted));
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return out;
}

}  // namespace xy::tokenizer
