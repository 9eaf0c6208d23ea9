// OpenAI-style API errors: what the server answers when a request cannot be served as sent.
// The body has OpenAI's shape (platform.openai.com/docs/guides/error-codes):
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature" | null,
//              "code": "..." | null}}
// so that OpenAI's client libraries raise their usual exception types on our errors.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "xyserve/common/error.h"

namespace xy::server {

struct ApiError {
  int http_status = 400;                         // HTTP status of the response
  std::string message;                           // for a person: the field, expected vs found
  std::string type = "invalid_request_error";    // OpenAI's error type
  std::string param;                             // offending field ("messages[2].role"); "" -> null
  std::string code;                              // machine-readable code; "" -> null
};

// Thrown by the request parsers; the only exception they let out. Derives from
// xy::InvalidArgument so that a caller that only knows xy::Error still sees a user error.
class ApiException : public InvalidArgument {
 public:
  explicit ApiException(ApiError error)
      : InvalidArgument(error.message), error_(std::move(error)) {}
  const ApiError& error() const { return error_; }

 private:
  ApiError error_;
};

// 400 invalid_request_error naming `param`.
[[noreturn]] void throw_invalid(const std::string& param, const std::string& message);

// The body for an error: {"error": {...}} with "param"/"code" null when empty.
nlohmann::ordered_json error_body(const ApiError& error);

// Errors that do not come from a request body, in OpenAI's wording.
ApiError model_not_found(const std::string& model);                // 404
ApiError unsupported_endpoint(const std::string& method, const std::string& path);  // 404
ApiError internal_error(const std::string& message);               // 500
ApiError server_overloaded(const std::string& message);            // 503
// The engine died (engine::EngineDeadError, whose message is `failure`): the requests that it
// was running get 500, later ones 503 until the process restarts. Message "engine failed: ...".
ApiError engine_failed(const std::string& failure);                // 500
ApiError engine_unavailable(const std::string& failure);           // 503

}  // namespace xy::server
