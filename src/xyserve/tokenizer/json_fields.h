// Typed access to tokenizer.json fields with errors that name the file and the JSON path
// ("tokenizer.json: pre_tokenizer.pretokenizers[1].type: expected string, found number").
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "xyserve/common/error.h"

namespace xy::tokenizer {

using Json = nlohmann::json;

// Where a JSON value sits: the file and the path inside it. Passed down by the factories so
// that every error can say where it comes from.
struct JsonPath {
  std::string file;
  std::string path;

  JsonPath field(const std::string& key) const {
    return {file, path.empty() ? key : path + "." + key};
  }
  JsonPath index(size_t i) const { return {file, cat(path, "[", i, "]")}; }

  [[noreturn]] void fail(const std::string& what) const {
    throw ModelError(cat(file, ": ", path.empty() ? "<root>" : path, ": ", what));
  }
};

inline const char* json_kind(const Json& j) { return j.type_name(); }

// The member `key` of object j; fails when missing (or null, unless allow_null).
inline const Json& require(const Json& j, const JsonPath& at, const std::string& key) {
  if (!j.is_object()) at.fail(cat("expected an object, found ", json_kind(j)));
  auto it = j.find(key);
  if (it == j.end()) at.field(key).fail("missing field");
  return *it;
}

inline std::string require_string(const Json& j, const JsonPath& at, const std::string& key) {
  const Json& v = require(j, at, key);
  if (!v.is_string()) at.field(key).fail(cat("expected a string, found ", json_kind(v)));
  return v.get<std::string>();
}

// Optional members: absent or null gives the fallback.
inline bool optional_bool(const Json& j, const JsonPath& at, const std::string& key,
                          bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) at.field(key).fail(cat("expected a boolean, found ", json_kind(*it)));
  return it->get<bool>();
}

inline std::string optional_string(const Json& j, const JsonPath& at, const std::string& key,
                                   const std::string& fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) at.field(key).fail(cat("expected a string, found ", json_kind(*it)));
  return it->get<std::string>();
}

inline int64_t require_int(const Json& j, const JsonPath& at, const std::string& key) {
  const Json& v = require(j, at, key);
  if (!v.is_number_integer()) at.field(key).fail(cat("expected an integer, found ", json_kind(v)));
  return v.get<int64_t>();
}

inline const Json& require_array(const Json& j, const JsonPath& at, const std::string& key) {
  const Json& v = require(j, at, key);
  if (!v.is_array()) at.field(key).fail(cat("expected an array, found ", json_kind(v)));
  return v;
}

}  // namespace xy::tokenizer
