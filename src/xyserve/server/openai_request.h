// Request bodies of POST /v1/completions and POST /v1/chat/completions, parsed into plain
// typed structs, validated as OpenAI validates them (ranges from the API reference; vLLM's
// extensions -- top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos, ... -- as vLLM's
// protocol accepts them). Pure functions: no I/O, no engine.
//
// Errors: every parser throws only ApiException (400, param = the field's path). Unknown fields
// are ignored, as OpenAI does; absent and null are the same.
//
// Thread safety: free functions over their arguments; safe on any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "xyserve/meta/sampling_params.h"
#include "xyserve/server/openai_error.h"

namespace xy::server {

// Server-side bounds that a request is checked against.
struct RequestLimits {
  int32_t max_n = 16;              // most choices per request (`n`)
  int32_t max_logprobs = 20;       // most top logprobs per token (OpenAI's documented cap)
  int64_t vocab_size = 0;          // token ids must be < this; 0: not checked here
};

// Fields both endpoints share. Optional sampling fields stay unset when the client did not send
// them, so the server can fill them from the model's generation_config as vLLM does.
struct GenerationOptions {
  std::optional<int64_t> max_tokens;      // >= 1; unset: up to the context length
  int32_t n = 1;                          // choices to return, 1..limits.max_n
  bool stream = false;                    // answer with SSE chunks
  bool include_usage = false;             // stream_options.include_usage (only with stream)
  std::vector<std::string> stop;          // stop strings (empty strings dropped)
  std::vector<int32_t> stop_token_ids;    // extra stop tokens (vLLM)
  bool ignore_eos = false;                // keep generating past EOS (vLLM; benchmarks)
  bool skip_special_tokens = true;        // detokenize without special tokens (vLLM)
  int32_t logprobs = -1;                  // -1: none; k >= 0: chosen token + top k
  std::optional<float> temperature;       // [0, 2]; 0: greedy
  std::optional<float> top_p;             // (0, 1]
  std::optional<int32_t> top_k;           // -1 or >= 1 (0 is read as -1, as vLLM)
  std::optional<float> min_p;             // [0, 1]
  std::optional<float> presence_penalty;  // [-2, 2]
  std::optional<float> frequency_penalty; // [-2, 2]
  std::optional<float> repetition_penalty;  // > 0 (vLLM's bound is (0, 2])
  std::optional<uint64_t> seed;           // any int64 (negative kept as its bit pattern)
};

// One prompt of /v1/completions: text, or token ids sent pre-tokenized.
using Prompt = std::variant<std::string, std::vector<int32_t>>;

struct CompletionRequest {
  std::string model;            // as sent; "" when absent (the server picks its default)
  std::vector<Prompt> prompts;  // >= 1, none empty; a list of n strings is n prompts
  bool echo = false;            // prepend the prompt to each choice's text
  GenerationOptions options;
};

enum class Role { kSystem, kDeveloper, kUser, kAssistant, kTool };
std::string_view role_name(Role role);

// An assistant's call of a tool, as sent back in a later turn.
struct ToolCall {
  std::string id;         // "call_..."; "" when absent
  std::string name;       // function.name
  std::string arguments;  // function.arguments: a JSON-encoded string, as OpenAI sends it
};

struct ChatMessage {
  Role role = Role::kUser;
  // Text content; a list of {"type": "text", "text"} parts is joined with "\n" (vLLM's
  // "string" content format). nullopt: content null, allowed only for assistant messages.
  std::optional<std::string> content;
  std::optional<std::string> name;               // participant name
  std::optional<std::string> tool_call_id;       // tool messages: the call answered
  std::vector<ToolCall> tool_calls;              // assistant messages
  std::optional<std::string> reasoning_content;  // assistant messages of reasoning models
};

struct ChatCompletionRequest {
  std::string model;                  // as sent; "" when absent
  std::vector<ChatMessage> messages;  // >= 1
  nlohmann::ordered_json tools;       // array of {"type": "function", ...}, or null
  nlohmann::ordered_json tool_choice; // "none" | "auto" | "required" | {function}, or null
  nlohmann::ordered_json chat_template_kwargs;  // object, or null
  bool add_generation_prompt = true;  // end the prompt with the assistant header
  bool continue_final_message = false;  // extend the last (assistant) message instead
  int32_t top_logprobs = 0;           // with logprobs: true, alternatives per token
  GenerationOptions options;          // max_completion_tokens preferred over max_tokens
};

// Parse a body. Throws ApiException (400) on malformed JSON, a wrong type or a value out of
// range, naming the field.
CompletionRequest parse_completion_request(std::string_view body, const RequestLimits& limits);
ChatCompletionRequest parse_chat_request(std::string_view body, const RequestLimits& limits);

// The served name to use for `requested`: the first served name when requested is "", else
// requested itself if served. Throws ApiException (404 model_not_found) otherwise.
// Precondition: served is not empty.
std::string resolve_model(const std::string& requested, std::span<const std::string> served);

// The engine's sampling parameters: the request's fields over `defaults` (the model's
// generation_config, or SamplingParams{}).
meta::SamplingParams to_sampling_params(const GenerationOptions& options,
                                        const meta::SamplingParams& defaults);

// The messages as the chat template reads them: [{"role", "content", ...}], with tool-call
// arguments decoded from their JSON string into an object when they parse (templates such as
// Llama 3.1's apply `| tojson` to them, which vLLM supports the same way).
nlohmann::ordered_json to_template_messages(const std::vector<ChatMessage>& messages);

}  // namespace xy::server
