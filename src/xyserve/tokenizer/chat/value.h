// The values a chat template computes with, modelled on the Python objects jinja2 sees:
// Undefined, None, bool, int, float, str, list, tuple, dict (insertion-ordered), namespace and
// callables. Lists and dicts are immutable once built (transformers renders in jinja2's
// ImmutableSandboxedEnvironment), so they are shared by pointer; a namespace is the one
// mutable object (`{% set ns.x = ... %}`).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "xyserve/common/error.h"

namespace xy::chat {

// A runtime error of template semantics (a TypeError, UndefinedError or raise_exception in
// jinja2). The renderer adds the line:col of the expression and rethrows it as xy::Error.
class TemplateError : public Error {
 public:
  using Error::Error;
};

class Value;
using ValueList = std::vector<Value>;

// Python dict: insertion-ordered; keys compare with Python equality (1 == 1.0 == True).
class Dict {
 public:
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
  const std::vector<std::pair<Value, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<Value, Value>> items_;
};

struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct Callable {
  std::string name;
  std::function<Value(const CallArgs&)> fn;
};

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kNamespace, kCallable
  };

  Value() : kind_(Kind::kUndefined) {}
  static Value undefined(std::string hint = "") {
    Value v;
    v.str_ = std::move(hint);
    return v;
  }
  static Value none() {
    Value v;
    v.kind_ = Kind::kNone;
    return v;
  }
  explicit Value(bool b) : kind_(Kind::kBool), int_(b) {}
  explicit Value(int64_t i) : kind_(Kind::kInt), int_(i) {}
  explicit Value(int i) : kind_(Kind::kInt), int_(i) {}
  explicit Value(double f) : kind_(Kind::kFloat), float_(f) {}
  explicit Value(std::string s) : kind_(Kind::kString), str_(std::move(s)) {}
  explicit Value(const char* s) : kind_(Kind::kString), str_(s) {}
  static Value list(ValueList items);
  static Value tuple(ValueList items);
  // A one-shot iterator (what jinja2's select/map/reverse/... return): it iterates like a
  // list but is always truthy, has no len() and cannot be printed or indexed.
  static Value generator(ValueList items);
  static Value dict(Dict d);
  static Value make_namespace(Dict d);
  static Value callable(std::string name, std::function<Value(const CallArgs&)> fn);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // Python's numbers.Number: bool is an int.
  bool is_number() const { return kind_ == Kind::kBool || kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence_like() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_generator() const { return kind_ == Kind::kList && generator_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // valid for bool and int
  double as_double() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return str_; }
  const std::string& undefined_hint() const { return str_; }
  const ValueList& as_list() const { return *list_; }  // list or tuple
  const Dict& as_dict() const { return *dict_; }       // dict or namespace
  Dict& namespace_dict() const { return *dict_; }
  const Callable& as_callable() const { return *callable_; }

  // Python truthiness; Undefined is falsy.
  bool truthy() const;
  // Python str() and repr(); Undefined prints as the empty string (jinja2's default Undefined).
  std::string str() const;
  std::string repr() const;
  // Python type name, for error messages ("str", "int", "list", "NoneType", ...).
  std::string type_name() const;

 private:
  Kind kind_;
  bool generator_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> callable_;
};

// Python ==, with jinja2's Undefined equal only to Undefined.
bool py_equal(const Value& a, const Value& b);
// Python ordering (<): numbers with numbers, str with str, list/tuple lexicographically;
// anything else throws xy::Error naming both types.
bool py_less(const Value& a, const Value& b);
// Python json.dumps(x, ensure_ascii, indent, separators, sort_keys). indent < 0 means None.
struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // the per-level indent string; nullopt means inline
  std::optional<std::pair<std::string, std::string>> separators;
  bool sort_keys = false;
};
std::string py_json_dumps(const Value& v, const JsonOptions& options);

}  // namespace xy::chat
