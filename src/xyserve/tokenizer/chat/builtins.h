// jinja2's runtime library as transformers configures it: attribute and item lookup with the
// sandbox's fallbacks, the filters and tests in use by chat templates, Python str/dict/list
// methods, and the globals (range, dict, namespace, joiner, raise_exception, strftime_now).
// All of these throw TemplateError; the renderer adds the position.
#pragma once

#include <string>
#include <string_view>

#include "xyserve/tokenizer/chat/value.h"

namespace xy::chat {

bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);

Value apply_filter(const std::string& name, const Value& target, const CallArgs& args);
bool apply_test(const std::string& name, const Value& target, const CallArgs& args);

// jinja2's SandboxedEnvironment.getattr: a Python attribute (a method of str/dict/list) first,
// then the item; missing is Undefined; any lookup on Undefined raises.
Value get_attr(const Value& obj, const std::string& name);
// SandboxedEnvironment.getitem: the item first, then (for a str key) the attribute.
Value get_item(const Value& obj, const Value& key);
// Python slicing of str, list and tuple; an absent bound is Value::undefined(kAbsentBound).
inline constexpr const char* kAbsentBound = "<absent slice bound>";
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

Value call_value(const Value& callee, const CallArgs& args);
// A global of jinja2's default namespace or of transformers; Undefined when there is none.
Value lookup_global(const std::string& name);

// Python iteration: list/tuple items, dict keys, str code points; Undefined is empty.
ValueList iterate(const Value& v);
// `item in container`.
bool contains(const Value& container, const Value& item);
// Python len(); throws for values without one.
int64_t py_len(const Value& v);

// Argument binding for builtins written like Python functions: the argument at position
// `index` or with keyword `name`, else Undefined.
const Value* find_arg(const CallArgs& args, size_t index, std::string_view name);

}  // namespace xy::chat
