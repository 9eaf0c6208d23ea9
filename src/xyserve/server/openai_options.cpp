#include "xyserve/server/openai_options.h"

#include <limits>

namespace xy::server {
namespace {

std::optional<float> read_float_in(const Json& body, std::string_view key, double lo, double hi) {
  const std::string param(key);
  auto v = read_number(body, key, param);
  if (!v) return std::nullopt;
  check_range(*v, lo, hi, param);
  return static_cast<float>(*v);
}

void read_stop(const Json& body, GenerationOptions& options) {
  const Json* stop = find_field(body, "stop");
  if (!stop) return;
  // OpenAI caps stop at 4 sequences; vLLM has no cap, and neither do we.
  if (stop->is_string()) {
    if (!stop->get_ref<const std::string&>().empty()) options.stop.push_back(stop->get<std::string>());
    return;
  }
  if (!stop->is_array())
    throw_invalid("stop", cat("`stop` must be a string or an array of strings; found ",
                              json_kind(*stop)));
  for (size_t i = 0; i < stop->size(); ++i) {
    const std::string& s = as_string((*stop)[i], index_param("stop", i));
    // An empty stop string would match before any text; clients send "" to mean "none".
    if (!s.empty()) options.stop.push_back(s);
  }
}

}  // namespace

int32_t read_token_id(const Json& value, const std::string& param, const RequestLimits& limits) {
  const int64_t id = as_integer(value, param);
  const int64_t end = limits.vocab_size > 0 ? limits.vocab_size
                                            : int64_t{std::numeric_limits<int32_t>::max()} + 1;
  if (id < 0 || id >= end)
    throw_invalid(param, cat("`", param, "` must be a token id in [0, ", end, "); found ", id));
  return static_cast<int32_t>(id);
}

std::string read_model(const Json& body) { return read_string(body, "model", "model").value_or(""); }

void check_response_format(const Json& body) {
  const Json* format = find_field(body, "response_format");
  if (!format) return;
  if (!format->is_object())
    throw_invalid("response_format", cat("`response_format` must be an object; found ",
                                         json_kind(*format)));
  const auto type = read_string(*format, "type", "response_format.type");
  if (!type)
    throw_invalid("response_format.type", "`response_format.type` is required");
  if (*type == "text") return;
  if (*type == "json_object" || *type == "json_schema")
    throw_invalid("response_format.type",
                  cat("`response_format.type` \"", *type,
                      "\" is not supported by this server (no guided decoding); use \"text\""));
  throw_invalid("response_format.type",
                cat("`response_format.type` must be \"text\", \"json_object\" or "
                    "\"json_schema\"; found \"", *type, "\""));
}

GenerationOptions read_generation_options(const Json& body, const RequestLimits& limits) {
  GenerationOptions o;
  if (auto n = read_integer(body, "n", "n")) {
    if (*n < 1 || *n > limits.max_n)
      throw_invalid("n", cat("`n` must be in [1, ", limits.max_n, "]; found ", *n));
    o.n = static_cast<int32_t>(*n);
  }
  // best_of > n would sample extra choices and return the best; we return every choice we
  // sample, so only best_of == n (a no-op) is served.
  if (auto best_of = read_integer(body, "best_of", "best_of")) {
    if (*best_of != o.n)
      throw_invalid("best_of", cat("`best_of` is not supported unless it equals `n` (", o.n,
                                   "); found ", *best_of));
  }
  o.stream = read_bool(body, "stream", "stream").value_or(false);
  if (const Json* so = find_field(body, "stream_options")) {
    if (!so->is_object())
      throw_invalid("stream_options",
                    cat("`stream_options` must be an object; found ", json_kind(*so)));
    if (!o.stream)
      throw_invalid("stream_options", "`stream_options` is only allowed when `stream` is true");
    o.include_usage =
        read_bool(*so, "include_usage", "stream_options.include_usage").value_or(false);
  }
  read_stop(body, o);
  if (const Json* ids = find_field(body, "stop_token_ids")) {
    if (!ids->is_array())
      throw_invalid("stop_token_ids", cat("`stop_token_ids` must be an array of integers; found ",
                                          json_kind(*ids)));
    for (size_t i = 0; i < ids->size(); ++i)
      o.stop_token_ids.push_back(
          read_token_id((*ids)[i], index_param("stop_token_ids", i), limits));
  }
  o.ignore_eos = read_bool(body, "ignore_eos", "ignore_eos").value_or(false);
  o.skip_special_tokens =
      read_bool(body, "skip_special_tokens", "skip_special_tokens").value_or(true);

  o.temperature = read_float_in(body, "temperature", 0.0, 2.0);
  if (auto top_p = read_number(body, "top_p", "top_p")) {
    if (!(*top_p > 0.0 && *top_p <= 1.0))
      throw_invalid("top_p", cat("`top_p` must be in (0, 1]; found ", *top_p));
    o.top_p = static_cast<float>(*top_p);
  }
  if (auto top_k = read_integer(body, "top_k", "top_k")) {
    if (*top_k < -1 || *top_k > std::numeric_limits<int32_t>::max())
      throw_invalid("top_k", cat("`top_k` must be -1 (no limit) or at least 1; found ", *top_k));
    o.top_k = *top_k == 0 ? -1 : static_cast<int32_t>(*top_k);  // vLLM reads 0 as "no limit"
  }
  o.min_p = read_float_in(body, "min_p", 0.0, 1.0);
  o.presence_penalty = read_float_in(body, "presence_penalty", -2.0, 2.0);
  o.frequency_penalty = read_float_in(body, "frequency_penalty", -2.0, 2.0);
  if (auto rp = read_number(body, "repetition_penalty", "repetition_penalty")) {
    if (!(*rp > 0.0))
      throw_invalid("repetition_penalty",
                    cat("`repetition_penalty` must be greater than 0; found ", *rp));
    o.repetition_penalty = static_cast<float>(*rp);
  }
  if (auto seed = read_integer(body, "seed", "seed")) o.seed = static_cast<uint64_t>(*seed);
  read_string(body, "user", "user");  // validated, then ignored: we keep no per-user state
  check_response_format(body);
  return o;
}

}  // namespace xy::server
