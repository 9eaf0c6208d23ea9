// Maps an HTTP method and target to an endpoint of the API, or says why none: 404 for a path
// the server does not have, 405 (with the methods it allows) for a known path and the wrong
// method. Pure; no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace xy::server {

enum class Endpoint {
  kCompletions,      // POST /v1/completions
  kChatCompletions,  // POST /v1/chat/completions
  kModels,           // GET /v1/models
  kHealth,           // GET /health
  kMetrics,          // GET /metrics
  kTokenize,         // POST /tokenize
  kDetokenize,       // POST /detokenize
};

struct RouteResult {
  std::optional<Endpoint> endpoint;  // set when status == 200
  int status = 200;                  // 200, 404 or 405
  std::string allow;                 // for 405: the Allow header ("POST")
};

// `target` is the request-target as sent ("/v1/models?x=1"); the query string is ignored, as
// is one trailing slash. HEAD is accepted wherever GET is.
RouteResult route(std::string_view method, std::string_view target);

// The path of `target` without query string or fragment.
std::string_view target_path(std::string_view target);

// Whether an endpoint needs the API key (when one is set): the /v1 ones, as vLLM guards them;
// health and metrics stay open for load balancers and scrapers.
bool needs_api_key(Endpoint endpoint);

}  // namespace xy::server
