// Typed reads of fields from a JSON object that came from a file (config.json, a safetensors
// header, an index), with errors that name the file, the field, what was expected and what was
// found: `config.json: field 'num_attention_heads': expected a positive integer, found "abc"`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace xy::model {

// Reads and parses a JSON file; throws ModelError naming the file if it is missing, unreadable
// or not valid JSON (with the parser's byte position).
nlohmann::json read_json_file(const std::filesystem::path& path);

// A short rendering of a JSON value for error messages (long values are cut).
std::string describe_json(const nlohmann::json& value);

// A view of one JSON object and the file it came from. `source` is what messages start with
// (usually the file's path). Absent and null fields read as std::nullopt: Hugging Face configs
// write `null` for "not set" (e.g. `"sliding_window": null`).
class JsonFields {
 public:
  // Throws ModelError if `object` is not a JSON object.
  // `prefix` is put before field names in messages ("rope_scaling." for a nested object).
  JsonFields(const nlohmann::json& object, std::string source, std::string prefix = "");

  bool has(std::string_view name) const;           // present and not null
  bool contains_key(std::string_view name) const;  // present, possibly null
  const nlohmann::json* get(std::string_view name) const;  // null if absent or null
  const std::string& source() const { return source_; }

  // Required fields throw ModelError when absent.
  int64_t require_int(std::string_view name, int64_t min_value = 1,
                      int64_t max_value = INT64_MAX) const;
  std::string require_string(std::string_view name) const;

  std::optional<int64_t> optional_int(std::string_view name, int64_t min_value = 0,
                                      int64_t max_value = INT64_MAX) const;
  std::optional<double> optional_number(std::string_view name) const;
  std::optional<bool> optional_bool(std::string_view name) const;
  std::optional<std::string> optional_string(std::string_view name) const;

  // A field of this object that is itself an object.
  std::optional<JsonFields> optional_object(std::string_view name) const;

  // Throws ModelError: "<source>: field '<name>': expected <expected>, found <value>".
  [[noreturn]] void fail(std::string_view name, std::string_view expected) const;
  // Throws ModelError: "<source>: field '<name>': <message>".
  [[noreturn]] void fail_message(std::string_view name, std::string_view message) const;

 private:
  const nlohmann::json* object_;
  std::string source_;
  std::string prefix_;
};

}  // namespace xy::model
