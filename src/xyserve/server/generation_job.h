// One /v1/completions or /v1/chat/completions request in flight: its choices submitted to the
// engine, their stream events turned into SSE chunks (stream: true) or one response body, and
// its engine requests cancelled when the client goes away.
//
// Events reach the job without blocking an I/O thread: each RequestStream's listener (engine
// thread) posts one drain to the exchange's strand, which takes every queued event of every
// choice. The job keeps itself alive through those listeners until each choice's finishing
// event was taken, so an abandoned request still frees its KV blocks and is counted in the
// metrics.
//
// When the engine dies under a request, its choices finish with the engine's error and the
// response becomes that error: a 500 error body, or an error event ending the stream.
//
// Threading: start() and everything after it run on the exchange's strand.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xyserve/engine/engine.h"
#include "xyserve/server/http_server.h"
#include "xyserve/server/metrics.h"
#include "xyserve/server/openai_response.h"
#include "xyserve/server/openai_stream.h"

namespace xy::server {

enum class ApiKind { kCompletions, kChat };

struct JobChoice {
  std::vector<int32_t> prompt_ids;
  engine::GenerationOptions options;
  std::string echo_text;  // completions with echo: the prompt's text, prepended
};

struct JobSpec {
  ApiKind api = ApiKind::kCompletions;
  ResponseHeader header;
  std::vector<JobChoice> choices;  // in response order (prompt p's j-th choice at p * n + j)
  bool stream = false;
  bool include_usage = false;
  bool with_logprobs = false;
  int32_t num_top_logprobs = 0;
  int64_t num_prompt_tokens = 0;  // usage: each prompt counted once, as OpenAI counts it
};

// Everything a job needs from the server; outlives every job.
struct JobContext {
  engine::Engine* engine = nullptr;
  const tokenizer::Tokenizer* tokenizer = nullptr;
  ServerMetrics* metrics = nullptr;
  std::atomic<int64_t>* num_active = nullptr;
};

// Submits the choices and answers on `exchange` as they finish. Throws ApiException (400)
// when the engine refuses a choice (after cancelling the ones already submitted), or (503)
// when the engine is dead, before anything was sent. On the exchange's strand.
void start_generation_job(const JobContext& context, std::shared_ptr<Exchange> exchange, JobSpec spec);

}  // namespace xy::server
