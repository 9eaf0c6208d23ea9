#include "xyserve/server/openai_error.h"

namespace xy::server {

void throw_invalid(const std::string& param, const std::string& message) {
  throw ApiException(ApiError{400, message, "invalid_request_error", param, ""});
}

nlohmann::ordered_json error_body(const ApiError& error) {
  nlohmann::ordered_json inner;
  inner["message"] = error.message;
  inner["type"] = error.type;
  inner["param"] = error.param.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(error.param);
  inner["code"] = error.code.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(error.code);
  nlohmann::ordered_json body;
  body["error"] = std::move(inner);
  return body;
}

ApiError model_not_found(const std::string& model) {
  // OpenAI answers an unknown model with 404, type invalid_request_error, code
  // model_not_found and this message form.
  return ApiError{404, cat("The model `", model, "` does not exist."), "invalid_request_error",
                  "model", "model_not_found"};
}

ApiError unsupported_endpoint(const std::string& method, const std::string& path) {
  return ApiError{404, cat("Invalid URL (", method, " ", path, ")"), "invalid_request_error", "",
                  ""};
}

ApiError internal_error(const std::string& message) {
  return ApiError{500, message, "server_error", "", ""};
}

ApiError server_overloaded(const std::string& message) {
  return ApiError{503, message, "server_error", "", "server_overloaded"};
}

ApiError engine_failed(const std::string& failure) {
  return ApiError{500, cat("engine failed: ", failure), "server_error", "", "engine_failed"};
}

ApiError engine_unavailable(const std::string& failure) {
  return ApiError{503, cat("engine failed: ", failure), "server_error", "", "engine_failed"};
}

}  // namespace xy::server
