// The chunks of a streamed response, in the order OpenAI's clients expect:
//   chat:        per choice, a first chunk whose delta carries role "assistant"; content
//                deltas; a chunk with finish_reason; then, with include_usage, one chunk
//                with "choices": [] and the usage (every other chunk has "usage": null).
//   completions: text_completion chunks with text deltas, the last with finish_reason; then
//                the usage chunk as above.
// The SSE framing (and the final [DONE]) is in sse.h.
//
// Thread safety: one stream object per request, used by one thread.
#pragma once

#include <optional>
#include <vector>

#include "xyserve/server/openai_response.h"

namespace xy::server {

// New output of one choice since the last delta.
struct ChoiceDelta {
  int32_t index = 0;                           // the choice, 0..num_choices-1
  std::string text;                            // new text (may be empty)
  std::optional<std::string> reasoning_content;  // chat: new reasoning text
  std::vector<TokenLogprobs> logprobs;         // the new tokens, when logprobs were requested
  std::optional<FinishReason> finish_reason;   // set on the choice's last delta
  StopReason stop_reason;                      // with finish_reason
};

class CompletionStream {
 public:
  CompletionStream(ResponseHeader header, int32_t num_choices, bool with_logprobs,
                   bool include_usage);

  // The chunk for `delta`. Precondition: the choice has not finished.
  Json chunk(const ChoiceDelta& delta);
  // The usage chunk when include_usage, else nullopt. Precondition: called once, last.
  std::optional<Json> usage_chunk(const Usage& usage);

 private:
  ResponseHeader header_;
  bool with_logprobs_, include_usage_;
  std::vector<int64_t> text_offset_;  // per choice: characters streamed so far
  std::vector<bool> finished_;
  bool usage_sent_ = false;
};

class ChatStream {
 public:
  ChatStream(ResponseHeader header, int32_t num_choices, bool with_logprobs, bool include_usage);

  // The chunks for `delta`: the role chunk first when this is the choice's first delta, then
  // the content chunk (omitted when the delta carries nothing). Precondition: the choice has
  // not finished.
  std::vector<Json> chunks(const ChoiceDelta& delta);
  // The usage chunk when include_usage, else nullopt. Precondition: called once, last.
  std::optional<Json> usage_chunk(const Usage& usage);

 private:
  Json make_chunk(Json choice) const;

  ResponseHeader header_;
  bool with_logprobs_, include_usage_;
  std::vector<bool> role_sent_, finished_;
  bool usage_sent_ = false;
};

}  // namespace xy::server
