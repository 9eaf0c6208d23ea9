#include "xyserve/server/api_server.h"

#include <chrono>
#include <random>

#include "xyserve/server/generation_job.h"
#include "xyserve/server/openai_fields.h"
#include "xyserve/server/router.h"
#include "xyserve/server/sse.h"

namespace xy::server {
namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::mt19937_64& id_rng() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng;
}

HttpResponse json_response(int status, const Json& body) {
  HttpResponse r;
  r.status = status;
  r.body = json_text(body);
  return r;
}

HttpResponse error_response(const ApiError& e) { return json_response(e.http_status, error_body(e)); }

}  // namespace

OpenAiServer::OpenAiServer(engine::Engine& engine, const tokenizer::Tokenizer& tokenizer,
                           std::optional<chat::ChatTemplate> chat_template, ApiConfig config)
    : engine_(engine), tokenizer_(tokenizer), chat_template_(std::move(chat_template)),
      config_(std::move(config)), created_(unix_now()),
      metrics_(config_.served_model_names.empty() ? "" : config_.served_model_names.front()) {}

void OpenAiServer::handle(const std::shared_ptr<Exchange>& exchange) {
  HttpResponse r;
  try {
    r = dispatch(exchange);
  } catch (const ApiException& e) {
    r = error_response(e.error());
  } catch (const InvalidArgument& e) {
    r = error_response(ApiError{400, e.what(), "invalid_request_error", "", ""});
  } catch (const std::exception& e) {
    r = error_response(internal_error(e.what()));
  }
  if (r.status != 0) exchange->reply(std::move(r));
}

// Returns the response, or one with status 0 when a generation job answers on its own.
HttpResponse OpenAiServer::dispatch(const std::shared_ptr<Exchange>& exchange) {
  const HttpRequestView& req = exchange->request();
  const RouteResult route_result = route(req.method, req.target);
  if (route_result.status == 404)
    return error_response(unsupported_endpoint(req.method, std::string(target_path(req.target))));
  if (route_result.status == 405) {
    HttpResponse r = error_response(ApiError{405, cat("Method ", req.method, " is not allowed for ",
                                                      target_path(req.target), "; use ",
                                                      route_result.allow),
                                             "invalid_request_error", "", "method_not_allowed"});
    r.headers.emplace_back("Allow", route_result.allow);
    return r;
  }
  const Endpoint endpoint = *route_result.endpoint;
  if (!config_.api_key.empty() && needs_api_key(endpoint)) {
    const std::string expected = "Bearer " + config_.api_key;
    if (req.authorization.empty())
      return error_response(ApiError{401, "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                                     "invalid_request_error", "", "invalid_api_key"});
    if (req.authorization != expected)
      return error_response(ApiError{401, "Incorrect API key provided.", "invalid_request_error", "",
                                     "invalid_api_key"});
  }
  switch (endpoint) {
    case Endpoint::kCompletions:
      completions(exchange);
      return HttpResponse{0, "", "", {}};
    case Endpoint::kChatCompletions:
      chat_completions(exchange);
      return HttpResponse{0, "", "", {}};
    case Endpoint::kModels:
      return models();
    case Endpoint::kHealth: {
      HttpResponse r;
      r.status = draining_ ? 503 : 200;
      r.content_type = "text/plain";
      if (std::optional<std::string> failure = engine_.failure()) {
        r.status = 503;
        r.body = cat("engine failed: ", *failure, "\n");
      }
      return r;
    }
    case Endpoint::kMetrics: {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = render_metrics();
      return r;
    }
    case Endpoint::kTokenize:
      return tokenize(req.body);
    case Endpoint::kDetokenize:
      return detokenize(req.body);
  }
  return error_response(internal_error("unrouted endpoint"));
}

int32_t OpenAiServer::check_context(int64_t num_prompt_tokens, std::optional<int64_t> max_tokens,
                                    const std::string& param) const {
  const int64_t len = config_.max_model_len;
  if (num_prompt_tokens >= len) {
    throw ApiException(ApiError{400, cat("This model's maximum context length is ", len,
                                         " tokens. However, your request has ", num_prompt_tokens,
                                         " input tokens. Please reduce the length of the input."),
                                "invalid_request_error", param, "context_length_exceeded"});
  }
  if (!max_tokens) return int32_t(len - num_prompt_tokens);
  if (num_prompt_tokens + *max_tokens > len) {
    throw ApiException(ApiError{400, cat("This model's maximum context length is ", len,
                                         " tokens. However, you requested ", num_prompt_tokens + *max_tokens,
                                         " tokens (", num_prompt_tokens, " in the input, ", *max_tokens,
                                         " in the completion). Please reduce the length of the input or completion."),
                                "invalid_request_error", "max_tokens", "context_length_exceeded"});
  }
  return int32_t(*max_tokens);
}

engine::GenerationOptions OpenAiServer::engine_options(const GenerationOptions& o, int32_t max_tokens,
                                                       int32_t choice_index) const {
  engine::GenerationOptions e;
  e.sampling = to_sampling_params(o, meta::SamplingParams{});
  // n > 1 with a seed: each choice its own generator, seeded seed + index (vLLM's
  // parallel sampling), so choices differ and each is reproducible.
  if (o.seed) e.sampling.seed = *o.seed + uint64_t(choice_index);
  e.max_tokens = max_tokens;
  e.ignore_eos = o.ignore_eos;
  e.stop_token_ids = o.stop_token_ids;
  e.stop = o.stop;
  e.skip_special_tokens = o.skip_special_tokens;
  return e;
}

void OpenAiServer::completions(const std::shared_ptr<Exchange>& exchange) {
  CompletionRequest req = parse_completion_request(exchange->request().body, config_.limits);
  JobSpec spec;
  spec.api = ApiKind::kCompletions;
  spec.header = ResponseHeader{make_response_id("cmpl-", id_rng()), unix_now(),
                               resolve_model(req.model, config_.served_model_names)};
  if (req.echo && req.options.logprobs >= 0)
    throw_invalid("echo", "`echo` together with `logprobs` is not supported (prompt logprobs are not computed)");
  spec.stream = req.options.stream;
  spec.include_usage = req.options.include_usage;
  spec.with_logprobs = req.options.logprobs >= 0;
  spec.num_top_logprobs = std::max(req.options.logprobs, 0);
  for (size_t p = 0; p < req.prompts.size(); ++p) {
    std::vector<int32_t> ids;
    std::string text;
    const std::string param = req.prompts.size() == 1 ? "prompt" : index_param("prompt", p);
    if (const auto* s = std::get_if<std::string>(&req.prompts[p])) {
      ids = tokenizer_.encode(*s, /*add_special_tokens=*/true);
      text = *s;
      if (ids.empty()) throw_invalid(param, "the prompt encodes to no tokens");
    } else {
      ids = std::get<std::vector<int32_t>>(req.prompts[p]);
      if (req.echo) text = tokenizer_.decode(ids, false);
    }
    const int32_t max_tokens = check_context(int64_t(ids.size()), req.options.max_tokens, param);
    spec.num_prompt_tokens += int64_t(ids.size());
    for (int32_t j = 0; j < req.options.n; ++j) {
      JobChoice c;
      c.prompt_ids = ids;
      c.options = engine_options(req.options, max_tokens, j);
      if (req.echo) c.echo_text = text;
      spec.choices.push_back(std::move(c));
    }
  }
  JobContext ctx{&engine_, &tokenizer_, &metrics_, &num_active_};
  start_generation_job(ctx, exchange, std::move(spec));
}

std::vector<int32_t> OpenAiServer::chat_prompt_ids(const ChatCompletionRequest& req) const {
  if (!chat_template_) {
    throw ApiException(ApiError{400, "this model has no chat template (tokenizer_config.json has no "
                                     "`chat_template`); use /v1/completions",
                                "invalid_request_error", "messages", ""});
  }
  chat::ChatTemplateInputs in;
  in.messages = to_template_messages(req.messages);
  in.tools = req.tools.is_array() && !req.tools.empty() ? req.tools : Json();
  in.add_generation_prompt = req.add_generation_prompt && !req.continue_final_message;
  in.extra = req.chat_template_kwargs.is_object() ? req.chat_template_kwargs : Json::object();
  in.bos_token = tokenizer_.bos_token();
  in.eos_token = tokenizer_.eos_token();
  std::string text;
  try {
    text = chat::apply_chat_template(*chat_template_, in);
  } catch (const Error& e) {  // raise_exception in the template: the messages are not accepted
    throw ApiException(ApiError{400, cat("chat template: ", e.what()), "invalid_request_error", "messages", ""});
  }
  if (req.continue_final_message && !req.messages.empty() && req.messages.back().content) {
    // Cut after the final message's text, so the model continues it (transformers does the same).
    const std::string& last = *req.messages.back().content;
    const size_t at = last.empty() ? std::string::npos : text.rfind(last);
    if (at != std::string::npos) text.resize(at + last.size());
  }
  // The template writes BOS itself; encoding with special tokens would add a second one.
  return tokenizer_.encode(text, /*add_special_tokens=*/false);
}

void OpenAiServer::chat_completions(const std::shared_ptr<Exchange>& exchange) {
  ChatCompletionRequest req = parse_chat_request(exchange->request().body, config_.limits);
  JobSpec spec;
  spec.api = ApiKind::kChat;
  spec.header = ResponseHeader{make_response_id("chatcmpl-", id_rng()), unix_now(),
                               resolve_model(req.model, config_.served_model_names)};
  const std::vector<int32_t> ids = chat_prompt_ids(req);
  if (ids.empty()) throw_invalid("messages", "the rendered chat prompt encodes to no tokens");
  const int32_t max_tokens = check_context(int64_t(ids.size()), req.options.max_tokens, "messages");
  spec.stream = req.options.stream;
  spec.include_usage = req.options.include_usage;
  spec.with_logprobs = req.options.logprobs >= 0;
  spec.num_top_logprobs = req.top_logprobs;
  spec.num_prompt_tokens = int64_t(ids.size());
  for (int32_t j = 0; j < req.options.n; ++j) {
    JobChoice c;
    c.prompt_ids = ids;
    c.options = engine_options(req.options, max_tokens, j);
    spec.choices.push_back(std::move(c));
  }
  JobContext ctx{&engine_, &tokenizer_, &metrics_, &num_active_};
  start_generation_job(ctx, exchange, std::move(spec));
}

HttpResponse OpenAiServer::models() const {
  Json data = Json::array();
  for (const std::string& name : config_.served_model_names) {
    data.push_back(Json{{"id", name},
                        {"object", "model"},
                        {"created", created_},
                        {"owned_by", "xyserve"},
                        {"root", config_.model_root},
                        {"parent", nullptr},
                        {"max_model_len", config_.max_model_len}});
  }
  return json_response(200, Json{{"object", "list"}, {"data", std::move(data)}});
}

// vLLM's /tokenize: {"prompt": "...", "add_special_tokens": true} or a chat request's
// {"messages": [...]} (rendered through the template, add_special_tokens false by default).
HttpResponse OpenAiServer::tokenize(const std::string& body) const {
  const Json j = parse_body(body);
  if (auto model = read_string(j, "model", "model")) resolve_model(*model, config_.served_model_names);
  std::vector<int32_t> ids;
  if (find_field(j, "messages")) {
    const ChatCompletionRequest chat = parse_chat_request(body, config_.limits);
    ids = chat_prompt_ids(chat);
  } else {
    const auto prompt = read_string(j, "prompt", "prompt");
    if (!prompt) throw_invalid("prompt", "`prompt` (a string) or `messages` is required");
    const bool special = read_bool(j, "add_special_tokens", "add_special_tokens").value_or(true);
    ids = tokenizer_.encode(*prompt, special);
  }
  return json_response(200, Json{{"count", ids.size()},
                                 {"max_model_len", config_.max_model_len},
                                 {"tokens", ids},
                                 {"token_strs", nullptr}});
}

HttpResponse OpenAiServer::detokenize(const std::string& body) const {
  const Json j = parse_body(body);
  if (auto model = read_string(j, "model", "model")) resolve_model(*model, config_.served_model_names);
  const Json* tokens = find_field(j, "tokens");
  if (!tokens) throw_invalid("tokens", "`tokens` (a list of token ids) is required");
  if (!tokens->is_array()) throw_invalid("tokens", cat("`tokens` must be a list of integers; found ", json_kind(*tokens)));
  RequestLimits limits = config_.limits;
  limits.vocab_size = tokenizer_.vocab_size();
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const int64_t id = as_integer((*tokens)[i], index_param("tokens", i));
    if (id < 0 || id >= limits.vocab_size)
      throw_invalid(index_param("tokens", i), cat("token id ", id, " is outside the vocabulary [0, ", limits.vocab_size, ")"));
    ids.push_back(int32_t(id));
  }
  return json_response(200, Json{{"prompt", valid_utf8(tokenizer_.decode(ids, false))}});
}

std::string OpenAiServer::render_metrics() const {
  const engine::EngineStats s = engine_.stats();
  EngineGauges g;
  g.num_running = s.num_running;
  g.num_waiting = s.num_waiting;
  // Before the first step the engine has published no stats (0 free blocks): the pool is empty.
  if (s.scheduler.num_steps > 0 && config_.num_kv_blocks > 0)
    g.kv_cache_usage = 1.0 - double(s.num_free_blocks) / double(config_.num_kv_blocks);
  g.prefix_cache_queries = s.kv.num_query_tokens;
  g.prefix_cache_hits = s.kv.num_hit_tokens;
  g.num_draft_tokens = s.scheduler.num_draft_tokens;
  g.num_accepted_tokens = s.scheduler.num_accepted_tokens;
  g.num_preemptions = s.scheduler.num_preemptions;
  return metrics_.render(g);
}

}  // namespace xy::server
