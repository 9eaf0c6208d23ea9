#include "xyserve/server/sse.h"

namespace xy::server {

std::string json_text(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

std::string sse_event(const nlohmann::ordered_json& payload) {
  return "data: " + json_text(payload) + "\n\n";
}

std::string sse_done() { return "data: [DONE]\n\n"; }

std::string sse_comment(const std::string& text) {
  std::string line = text;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  return ": " + line + "\n\n";
}

}  // namespace xy::server
