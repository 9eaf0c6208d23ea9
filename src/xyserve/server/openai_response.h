// Response bodies of /v1/completions and /v1/chat/completions, built from what the engine
// has for each choice: its text, its tokens with logprobs, why it finished. Shapes follow
// OpenAI's API reference (text_completion, chat.completion, chat.completion.chunk) with
// vLLM's `stop_reason` added to each choice.
//
// Every string put into a response is valid UTF-8 (a byte-level token may be half a
// character; invalid bytes become U+FFFD), so dump() on the result never throws. Chat
// logprobs keep a token's raw bytes in "bytes", as OpenAI does for exactly this reason.
//
// Thread safety: free functions are pure; a stream object belongs to one request's thread.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace xy::server {

using Json = nlohmann::ordered_json;

enum class FinishReason { kStop, kLength, kToolCalls, kAbort };
std::string_view finish_reason_name(FinishReason reason);  // "stop", "length", ...

// What made a choice stop (vLLM's stop_reason): nothing (EOS, or not stopped), the stop
// token id, or the stop string matched.
using StopReason = std::variant<std::monostate, int32_t, std::string>;

struct TopLogprob {
  std::string token;  // the token's text (raw bytes; may be part of a UTF-8 character)
  float logprob = 0;  // natural log; -inf is written as -9999.0 (JSON has no infinity)
};

// One token of a choice with its logprob and the top alternatives.
struct TokenLogprobs {
  std::string token;               // raw bytes of the token's text
  std::optional<float> logprob;    // nullopt only for an echoed prompt's first token
  std::vector<TopLogprob> top;     // the top-k alternatives, best first (k = requested count)
};

// One finished choice of a non-streaming response.
struct ChoiceOutput {
  std::string text;                              // generated text (without an echoed prompt)
  std::vector<TokenLogprobs> logprobs;           // one per generated token, when requested
  std::optional<std::string> reasoning_content;  // chat: a reasoning model's thinking
  FinishReason finish_reason = FinishReason::kStop;
  StopReason stop_reason;
};

// The prompt of a completions choice when echo is set: prepended to its text (and logprobs).
struct EchoedPrompt {
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per prompt token, the first without a logprob
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// The fields every response and chunk of one request repeats.
struct ResponseHeader {
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;    // the served model name
};

// prefix + 32 random hex digits ("chatcmpl-3f9c...").
std::string make_response_id(std::string_view prefix, std::mt19937_64& rng);

// `text` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string valid_utf8(std::string_view text);

// Non-streaming bodies. Choice i gets "index": i; the caller orders choices (for several
// prompts with n each, prompt p's j-th choice is p * n + j, as OpenAI orders them).
// `echo` is empty or has one entry per choice. `with_logprobs`: write each choice's logprobs
// (else "logprobs": null).
Json completion_response(const ResponseHeader& header, std::span<const ChoiceOutput> choices,
                         std::span<const EchoedPrompt> echo, bool with_logprobs,
                         const Usage& usage);
Json chat_response(const ResponseHeader& header, std::span<const ChoiceOutput> choices,
                   bool with_logprobs, const Usage& usage);

// The logprobs objects in each API's own shape.
// completions: {"tokens", "token_logprobs", "top_logprobs": [{text: logprob}], "text_offset"}
// with offsets in characters (code points) from `first_offset`.
Json completion_logprobs(std::span<const TokenLogprobs> tokens, int64_t first_offset);
// chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{...}]}]}
Json chat_logprobs(std::span<const TokenLogprobs> tokens);

// {"prompt_tokens", "completion_tokens", "total_tokens"}.
Json usage_json(const Usage& usage);
// null, the stop token id, or the stop string.
Json stop_reason_json(const StopReason& reason);

// Characters (code points) in `text` as a Python str would count them after decoding with
// errors="replace": text_offset's unit.
int64_t count_chars(std::string_view text);

}  // namespace xy::server
