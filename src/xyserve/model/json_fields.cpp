#include "xyserve/model/json_fields.h"

#include <fstream>
#include <sstream>

#include "xyserve/common/error.h"

namespace xy::model {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw ModelError(cat(path.string(), ": file not found"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(cat(path.string(), ": cannot open for reading"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ModelError(cat(path.string(), ": read error"));
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    throw ModelError(cat(path.string(), ": invalid JSON: ", e.what()));
  }
}

std::string describe_json(const nlohmann::json& value) {
  constexpr size_t kMaxChars = 80;
  std::string text = value.dump();
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

JsonFields::JsonFields(const nlohmann::json& object, std::string source, std::string prefix)
    : object_(&object), source_(std::move(source)), prefix_(std::move(prefix)) {
  if (!object.is_object()) {
    const std::string where =
        prefix_.empty() ? std::string() : cat(": field '", prefix_.substr(0, prefix_.size() - 1), "'");
    throw ModelError(cat(source_, where, ": expected a JSON object, found ", describe_json(object)));
  }
}

const nlohmann::json* JsonFields::get(std::string_view name) const {
  auto it = object_->find(name);
  if (it == object_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonFields::contains_key(std::string_view name) const {
  return object_->find(name) != object_->end();
}

bool JsonFields::has(std::string_view name) const { return get(name) != nullptr; }

void JsonFields::fail(std::string_view name, std::string_view expected) const {
  const nlohmann::json* value = get(name);
  throw ModelError(cat(source_, ": field '", prefix_, name, "': expected ", expected, ", found ",
                       value ? describe_json(*value) : std::string("nothing (missing)")));
}

void JsonFields::fail_message(std::string_view name, std::string_view message) const {
  throw ModelError(cat(source_, ": field '", prefix_, name, "': ", message));
}

namespace {
// "a positive integer", and the upper bound only when that is what was broken.
std::string int_expectation(int64_t min_value, int64_t max_value = INT64_MAX) {
  std::string out = min_value == 1   ? "a positive integer"
                    : min_value == 0 ? "a non-negative integer"
                                     : cat("an integer >= ", min_value);
  if (max_value != INT64_MAX) out += cat(" of at most ", max_value);
  return out;
}
}  // namespace

std::optional<int64_t> JsonFields::optional_int(std::string_view name, int64_t min_value,
                                                int64_t max_value) const {
  const std::string expected = int_expectation(min_value);
  const nlohmann::json* value = get(name);
  if (!value) return std::nullopt;
  int64_t v = 0;
  if (value->is_number_integer()) {
    if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t(INT64_MAX)) {
      fail(name, expected);
    }
    v = value->get<int64_t>();
  } else if (value->is_number_float()) {
    // Some tools write integral fields as floats (4096.0); accept exact integers only.
    const double d = value->get<double>();
    if (!(d >= -9.0e15 && d <= 9.0e15) || double(int64_t(d)) != d) fail(name, expected);
    v = int64_t(d);
  } else {
    fail(name, expected);
  }
  if (v < min_value) fail(name, expected);
  if (v > max_value) fail(name, int_expectation(min_value, max_value));
  return v;
}

int64_t JsonFields::require_int(std::string_view name, int64_t min_value,
                                int64_t max_value) const {
  std::optional<int64_t> v = optional_int(name, min_value, max_value);
  if (!v) fail(name, int_expectation(min_value));
  return *v;
}

std::optional<double> JsonFields::optional_number(std::string_view name) const {
  const nlohmann::json* value = get(name);
  if (!value) return std::nullopt;
  if (!value->is_number()) fail(name, "a number");
  return value->get<double>();
}

std::optional<bool> JsonFields::optional_bool(std::string_view name) const {
  const nlohmann::json* value = get(name);
  if (!value) return std::nullopt;
  if (!value->is_boolean()) fail(name, "true or false");
  return value->get<bool>();
}

std::optional<std::string> JsonFields::optional_string(std::string_view name) const {
  const nlohmann::json* value = get(name);
  if (!value) return std::nullopt;
  if (!value->is_string()) fail(name, "a string");
  return value->get<std::string>();
}

std::string JsonFields::require_string(std::string_view name) const {
  std::optional<std::string> v = optional_string(name);
  if (!v) fail(name, "a string");
  return *v;
}

std::optional<JsonFields> JsonFields::optional_object(std::string_view name) const {
  const nlohmann::json* value = get(name);
  if (!value) return std::nullopt;
  if (!value->is_object()) fail(name, "an object");
  return JsonFields(*value, source_, cat(prefix_, name, "."));
}

}  // namespace xy::model
