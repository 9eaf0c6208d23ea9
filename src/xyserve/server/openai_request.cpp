// /v1/completions bodies, and what both endpoints share after parsing (model resolution,
// sampling parameters). The chat body is in openai_chat_request.cpp.
#include "xyserve/server/openai_request.h"

#include <algorithm>

#include "xyserve/common/check.h"
#include "xyserve/server/openai_options.h"

namespace xy::server {
namespace {

std::vector<int32_t> read_token_prompt(const Json& ids, const std::string& param,
                                       const RequestLimits& limits) {
  if (ids.empty()) throw_invalid(param, cat("`", param, "` must not be empty"));
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    out.push_back(read_token_id(ids[i], index_param(param, i), limits));
  return out;
}

// prompt: "text" | ["text", ...] | [id, ...] | [[id, ...], ...]. The array's first element
// decides which form it is; every element must then have that form.
std::vector<Prompt> read_prompts(const Json& body, const RequestLimits& limits) {
  const Json* prompt = find_field(body, "prompt");
  if (!prompt) throw_invalid("prompt", "`prompt` is required");
  std::vector<Prompt> prompts;
  if (prompt->is_string()) {
    if (prompt->get_ref<const std::string&>().empty())
      throw_invalid("prompt", "`prompt` must not be empty");
    prompts.emplace_back(prompt->get<std::string>());
    return prompts;
  }
  if (!prompt->is_array())
    throw_invalid("prompt", cat("`prompt` must be a string, an array of strings, an array of "
                                "token ids or an array of arrays of token ids; found ",
                                json_kind(*prompt)));
  if (prompt->empty()) throw_invalid("prompt", "`prompt` must not be empty");
  const Json& first = (*prompt)[0];
  if (first.is_number()) {
    prompts.emplace_back(read_token_prompt(*prompt, "prompt", limits));
    return prompts;
  }
  for (size_t i = 0; i < prompt->size(); ++i) {
    const Json& item = (*prompt)[i];
    const std::string param = index_param("prompt", i);
    if (first.is_string()) {
      const std::string& text = as_string(item, param);
      if (text.empty()) throw_invalid(param, cat("`", param, "` must not be empty"));
      prompts.emplace_back(text);
    } else if (first.is_array()) {
      if (!item.is_array())
        throw_invalid(param, cat("`", param, "` must be an array of token ids; found ",
                                 json_kind(item)));
      prompts.emplace_back(read_token_prompt(item, param, limits));
    } else {
      throw_invalid(param, cat("`", param, "` must be a string, a token id or an array of "
                               "token ids; found ", json_kind(item)));
    }
  }
  return prompts;
}

}  // namespace

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kSystem: return "system";
    case Role::kDeveloper: return "developer";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
    case Role::kTool: return "tool";
  }
  return "user";
}

CompletionRequest parse_completion_request(std::string_view body_text,
                                           const RequestLimits& limits) {
  const Json body = parse_body(body_text);
  CompletionRequest r;
  r.model = read_model(body);
  r.prompts = read_prompts(body, limits);
  r.echo = read_bool(body, "echo", "echo").value_or(false);
  r.options = read_generation_options(body, limits);
  if (auto max_tokens = read_integer(body, "max_tokens", "max_tokens")) {
    check_min(*max_tokens, 1, "max_tokens");
    r.options.max_tokens = *max_tokens;
  }
  // Completions' logprobs is the number of alternatives (OpenAI caps it at 5, vLLM at the
  // server's max_logprobs).
  if (auto logprobs = read_integer(body, "logprobs", "logprobs")) {
    if (*logprobs < 0 || *logprobs > limits.max_logprobs)
      throw_invalid("logprobs", cat("`logprobs` must be in [0, ", limits.max_logprobs,
                                    "]; found ", *logprobs));
    r.options.logprobs = static_cast<int32_t>(*logprobs);
  }
  return r;
}

std::string resolve_model(const std::string& requested, std::span<const std::string> served) {
  XY_CHECK(!served.empty(), "the server serves no model");
  if (requested.empty()) return served.front();
  if (std::find(served.begin(), served.end(), requested) != served.end()) return requested;
  throw ApiException(model_not_found(requested));
}

meta::SamplingParams to_sampling_params(const GenerationOptions& o,
                                        const meta::SamplingParams& defaults) {
  meta::SamplingParams p = defaults;
  if (o.temperature) p.temperature = *o.temperature;
  if (o.top_p) p.top_p = *o.top_p;
  if (o.top_k) p.top_k = *o.top_k;
  if (o.min_p) p.min_p = *o.min_p;
  if (o.presence_penalty) p.presence_penalty = *o.presence_penalty;
  if (o.frequency_penalty) p.frequency_penalty = *o.frequency_penalty;
  if (o.repetition_penalty) p.repetition_penalty = *o.repetition_penalty;
  if (o.seed) p.seed = *o.seed;
  p.logprobs = o.logprobs;
  return p;
}

}  // namespace xy::server
