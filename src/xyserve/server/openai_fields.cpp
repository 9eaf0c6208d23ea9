#include "xyserve/server/openai_fields.h"

#include <cmath>
#include <string_view>

#include "xyserve/server/openai_error.h"

namespace xy::server {
namespace {

std::string strip_exception_id(const std::string& what) {
  // nlohmann prefixes "[json.exception.parse_error.101] "; a client has no use for it.
  if (!what.empty() && what[0] == '[') {
    const size_t close = what.find("] ");
    if (close != std::string::npos) return what.substr(close + 2);
  }
  return what;
}

std::string format_number(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return cat(static_cast<int64_t>(v));
  return cat(v);
}

}  // namespace

Json parse_body(std::string_view body) {
  // The callback sees each value's depth as the parser enters it, so a body of 10^6 '[' is
  // refused after 64 levels instead of building a value whose destructor or dump() recurses.
  const Json::parser_callback_t limit_depth = [](int depth, Json::parse_event_t event, Json&) {
    if (depth > kMaxJsonDepth &&
        (event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start))
      throw ApiException(ApiError{400, cat("JSON body nests deeper than ", kMaxJsonDepth,
                                           " levels"),
                                  "invalid_request_error", "", ""});
    return true;
  };
  Json value;
  try {
    value = Json::parse(body.begin(), body.end(), limit_depth);
  } catch (const Json::parse_error& e) {
    throw ApiException(ApiError{400, cat("Malformed JSON body: ", strip_exception_id(e.what())),
                                "invalid_request_error", "", ""});
  } catch (const Json::exception& e) {
    throw ApiException(ApiError{400, cat("Malformed JSON body: ", strip_exception_id(e.what())),
                                "invalid_request_error", "", ""});
  }
  if (!value.is_object())
    throw ApiException(ApiError{400, cat("The request body must be a JSON object; found ",
                                         json_kind(value)),
                                "invalid_request_error", "", ""});
  return value;
}

std::string json_kind(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "an integer";
    case Json::value_t::number_float: return "a number";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    default: return "a non-JSON value";
  }
}

const Json* find_field(const Json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> read_bool(const Json& obj, std::string_view key, const std::string& param) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean())
    throw_invalid(param, cat("`", param, "` must be a boolean; found ", json_kind(*v)));
  return v->get<bool>();
}

std::optional<std::string> read_string(const Json& obj, std::string_view key,
                                       const std::string& param) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  return as_string(*v, param);
}

const std::string& as_string(const Json& value, const std::string& param) {
  if (!value.is_string())
    throw_invalid(param, cat("`", param, "` must be a string; found ", json_kind(value)));
  return value.get_ref<const std::string&>();
}

std::optional<double> read_number(const Json& obj, std::string_view key,
                                  const std::string& param) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number())
    throw_invalid(param, cat("`", param, "` must be a number; found ", json_kind(*v)));
  const double d = v->get<double>();
  // 1e999 parses to infinity; no field accepts it.
  if (!std::isfinite(d)) throw_invalid(param, cat("`", param, "` must be a finite number"));
  return d;
}

int64_t as_integer(const Json& value, const std::string& param) {
  if (value.is_number_integer() && !value.is_number_unsigned()) return value.get<int64_t>();
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX))
      throw_invalid(param, cat("`", param, "` is out of range; found ", u));
    return static_cast<int64_t>(u);
  }
  if (value.is_number_float()) {
    const double d = value.get<double>();
    // 2^63 is the first double past int64; checking before the cast keeps it defined.
    if (std::isfinite(d) && d == std::floor(d) && d >= -9.2e18 && d <= 9.2e18)
      return static_cast<int64_t>(d);
    throw_invalid(param, cat("`", param, "` must be an integer; found ",
                             std::isfinite(d) ? format_number(d) : std::string("a non-finite number")));
  }
  throw_invalid(param, cat("`", param, "` must be an integer; found ", json_kind(value)));
}

std::optional<int64_t> read_integer(const Json& obj, std::string_view key,
                                    const std::string& param) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  return as_integer(*v, param);
}

void check_range(double value, double lo, double hi, const std::string& param) {
  if (!(value >= lo && value <= hi))
    throw_invalid(param, cat("`", param, "` must be in [", format_number(lo), ", ",
                             format_number(hi), "]; found ", format_number(value)));
}

void check_min(int64_t value, int64_t lo, const std::string& param) {
  if (value < lo)
    throw_invalid(param, cat("`", param, "` must be at least ", lo, "; found ", value));
}

std::string index_param(const std::string& param, size_t i) { return cat(param, "[", i, "]"); }

std::string field_param(const std::string& param, std::string_view key) {
  return param.empty() ? std::string(key) : cat(param, ".", key);
}

}  // namespace xy::server
