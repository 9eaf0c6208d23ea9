// Typed reads of request-body fields. Every failure is a 400 ApiException whose param is the
// field's path ("messages[1].content[0].text") and whose message says expected vs found, so
// a client sees exactly which field to fix. Absent and null read the same (OpenAI's clients
// send null for "not set").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace xy::server {

using Json = nlohmann::ordered_json;

// Parses a request body. Malformed JSON -> 400 with the parse position; nesting deeper than
// kMaxJsonDepth -> 400 (bounds the recursion of every later walk over the value); a body that
// is not an object -> 400.
inline constexpr int kMaxJsonDepth = 64;
Json parse_body(std::string_view body);

// "a string", "an integer", ... for messages.
std::string json_kind(const Json& value);

// `key` of object `obj`, or nullptr when absent or null.
const Json* find_field(const Json& obj, std::string_view key);

// Field reads. `param` names the field in errors. Ranges are checked by the callers, which
// know the field's meaning; these check types only, and that an integer fits in int64.
std::optional<bool> read_bool(const Json& obj, std::string_view key, const std::string& param);
std::optional<std::string> read_string(const Json& obj, std::string_view key,
                                       const std::string& param);
// Accepts JSON numbers; a boolean or a numeric string is a type error.
std::optional<double> read_number(const Json& obj, std::string_view key,
                                  const std::string& param);
// Accepts integers and integral floats (2.0, as Pydantic's lax mode does); 2.5 is an error.
std::optional<int64_t> read_integer(const Json& obj, std::string_view key,
                                    const std::string& param);
// The same for a value already in hand.
int64_t as_integer(const Json& value, const std::string& param);
const std::string& as_string(const Json& value, const std::string& param);

// Range checks that fail with "`param` must be ...; found x".
void check_range(double value, double lo, double hi, const std::string& param);
void check_min(int64_t value, int64_t lo, const std::string& param);

std::string index_param(const std::string& param, size_t i);  // "stop[3]"
std::string field_param(const std::string& param, std::string_view key);  // "messages[0].role"

}  // namespace xy::server
