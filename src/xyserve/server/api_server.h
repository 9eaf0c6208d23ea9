// The OpenAI-compatible API over an engine: routes each HTTP exchange to its endpoint, checks
// the API key, parses and validates the body (openai_request.h), turns prompts and chat
// messages into token ids (tokenizer, chat template), and starts a GenerationJob for the
// generation endpoints. Every failure becomes an OpenAI error object with its HTTP status.
//
//   POST /v1/completions, POST /v1/chat/completions (stream or not), GET /v1/models,
//   GET /health, GET /metrics (Prometheus text), POST /tokenize, POST /detokenize (vLLM's).
//
// Once the engine is dead (engine.h), generation requests get 503 and /health answers 503
// with the engine's failure message; the requests it was running got 500 (generation_job.h).
//
// Threading: handle() runs on the exchange's strand, on any I/O thread; the class is
// thread-safe (immutable after construction, atomics and ServerMetrics inside).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xyserve/engine/engine.h"
#include "xyserve/server/http_server.h"
#include "xyserve/server/metrics.h"
#include "xyserve/server/openai_request.h"
#include "xyserve/tokenizer/chat/chat_template.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::server {

struct ApiConfig {
  std::vector<std::string> served_model_names;  // >= 1; the first is the default
  std::string model_root;                       // the model directory (for /v1/models)
  std::string api_key;                          // "" : no key needed
  int64_t max_model_len = 0;                    // prompt + output tokens, > 0
  int32_t num_kv_blocks = 0;                    // the engine's pool (for kv_cache_usage_perc)
  RequestLimits limits;
};

class OpenAiServer {
 public:
  // `chat_template` null: the model has none, and chat requests get a 400 saying so.
  OpenAiServer(engine::Engine& engine, const tokenizer::Tokenizer& tokenizer,
               std::optional<chat::ChatTemplate> chat_template, ApiConfig config);

  void handle(const std::shared_ptr<Exchange>& exchange);
  void record_http_status(int status) { metrics_.record_http_status(status); }

  // Generation requests whose response is not complete yet.
  int64_t num_active() const { return num_active_.load(); }
  // Health answers 503 from now on (load balancers stop sending).
  void set_draining() { draining_ = true; }

  std::string render_metrics() const;

 private:
  HttpResponse dispatch(const std::shared_ptr<Exchange>& exchange);
  void completions(const std::shared_ptr<Exchange>& exchange);
  void chat_completions(const std::shared_ptr<Exchange>& exchange);
  HttpResponse models() const;
  HttpResponse tokenize(const std::string& body) const;
  HttpResponse detokenize(const std::string& body) const;

  std::vector<int32_t> chat_prompt_ids(const ChatCompletionRequest& request) const;
  // Checks prompt length against the context and picks max_tokens (unset: the rest of the
  // context, as vLLM does). `param` names the prompt field in errors.
  int32_t check_context(int64_t num_prompt_tokens, std::optional<int64_t> max_tokens,
                        const std::string& param) const;
  engine::GenerationOptions engine_options(const GenerationOptions& options, int32_t max_tokens,
                                           int32_t choice_index) const;

  engine::Engine& engine_;
  const tokenizer::Tokenizer& tokenizer_;
  const std::optional<chat::ChatTemplate> chat_template_;
  const ApiConfig config_;
  const int64_t created_;  // Unix seconds at start-up (/v1/models)
  mutable ServerMetrics metrics_;
  std::atomic<int64_t> num_active_{0};
  std::atomic<bool> draining_{false};
};

}  // namespace xy::server
