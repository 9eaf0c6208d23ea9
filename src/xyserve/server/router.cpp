#include "xyserve/server/router.h"

namespace xy::server {
namespace {

struct RouteEntry {
  std::string_view path;
  std::string_view method;
  Endpoint endpoint;
};

constexpr RouteEntry kRoutes[] = {
    {"/v1/completions", "POST", Endpoint::kCompletions},
    {"/v1/chat/completions", "POST", Endpoint::kChatCompletions},
    {"/v1/models", "GET", Endpoint::kModels},
    {"/health", "GET", Endpoint::kHealth},
    {"/metrics", "GET", Endpoint::kMetrics},
    {"/tokenize", "POST", Endpoint::kTokenize},
    {"/detokenize", "POST", Endpoint::kDetokenize},
};

}  // namespace

std::string_view target_path(std::string_view target) {
  const size_t end = target.find_first_of("?#");
  return end == std::string_view::npos ? target : target.substr(0, end);
}

RouteResult route(std::string_view method, std::string_view target) {
  std::string_view path = target_path(target);
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  for (const RouteEntry& r : kRoutes) {
    if (r.path != path) continue;
    if (method == r.method || (method == "HEAD" && r.method == "GET")) return {r.endpoint, 200, ""};
    return {std::nullopt, 405, std::string(r.method)};
  }
  return {std::nullopt, 404, ""};
}

bool needs_api_key(Endpoint endpoint) {
  switch (endpoint) {
    case Endpoint::kCompletions:
    case Endpoint::kChatCompletions:
    case Endpoint::kModels:
      return true;
    default:
      return false;
  }
}

}  // namespace xy::server
