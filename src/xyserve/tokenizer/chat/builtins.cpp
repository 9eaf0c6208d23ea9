// Lookup, iteration, Python methods and globals. Filters live in filters.cpp, tests in tests.cpp.
#include "xyserve/tokenizer/chat/builtins.h"

#include <ctime>

#include "xyserve/tokenizer/chat/text.h"

namespace xy::chat {

const Value* find_arg(const CallArgs& args, size_t index, std::string_view name) {
  if (index < args.positional.size()) return &args.positional[index];
  for (const auto& [k, v] : args.keyword)
    if (k == name) return &v;
  return nullptr;
}

namespace {

const Value kNoneValue = Value::none();

std::string str_arg(const CallArgs& args, size_t index, std::string_view name, const char* fn) {
  const Value* v = find_arg(args, index, name);
  if (!v || !v->is_string())
    throw TemplateError(cat(fn, "() argument '", name, "' must be str, not ", v ? v->type_name() : "missing"));
  return v->as_string();
}

int64_t int_arg(const CallArgs& args, size_t index, std::string_view name, int64_t fallback) {
  const Value* v = find_arg(args, index, name);
  if (!v || v->is_none()) return fallback;
  if (!v->is_int() && !v->is_bool()) throw TemplateError(cat("argument '", name, "' must be int, not ", v->type_name()));
  return v->as_int();
}

// Python str.format with automatic or explicit field numbers and keyword fields; format
// specs and conversions are refused rather than approximated.
std::string py_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      throw TemplateError("str.format: single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string::npos) throw TemplateError("str.format: single '{' encountered in format string");
    const std::string field = fmt.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!.[") != std::string::npos)
      throw TemplateError(cat("str.format: field '{", field, "}' uses a format spec, conversion or lookup, which is not supported"));
    const Value* v = nullptr;
    if (field.empty()) {
      v = auto_index < args.positional.size() ? &args.positional[auto_index] : nullptr;
      ++auto_index;
    } else if (field.find_first_not_of("0123456789") == std::string::npos) {
      const size_t k = std::stoul(field);
      v = k < args.positional.size() ? &args.positional[k] : nullptr;
    } else {
      for (const auto& [name, val] : args.keyword)
        if (name == field) v = &val;
    }
    if (!v) throw TemplateError(cat("str.format: no argument for field '{", field, "}'"));
    out += v->str();
    i = close;
  }
  return out;
}

bool py_startswith(const std::string& s, const Value& prefix, bool ends) {
  auto one = [&](const Value& p) {
    if (!p.is_string()) throw TemplateError(cat(ends ? "endswith" : "startswith", " first arg must be str or a tuple of str"));
    const std::string& x = p.as_string();
    if (x.size() > s.size()) return false;
    return ends ? s.compare(s.size() - x.size(), x.size(), x) == 0 : s.compare(0, x.size(), x) == 0;
  };
  if (prefix.is_tuple()) {
    for (const Value& p : prefix.as_list())
      if (one(p)) return true;
    return false;
  }
  return one(prefix);
}

// Code point index of the first/last occurrence of sub, or -1.
int64_t py_find(const std::string& s, const std::string& sub, bool last) {
  const size_t hit = last ? s.rfind(sub) : s.find(sub);
  if (hit == std::string::npos) return -1;
  return static_cast<int64_t>(count_code_points(std::string_view(s).substr(0, hit)));
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts the replacement around every code point
    const std::u32string cps = decode_utf8(s);
    int64_t n = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || n < count) {
        out += repl;
        ++n;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t hit = s.find(old, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += repl;
    pos = hit + old.size();
    ++n;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

bool all_cps(const std::string& s, bool (*pred)(char32_t)) {
  const std::u32string cps = decode_utf8(s);
  if (cps.empty()) return false;
  for (char32_t c : cps)
    if (!pred(c)) return false;
  return true;
}

Value string_method(const std::string& s, const std::string& name) {
  auto method = [&](auto fn) { return Value::callable("str." + name, [s, fn](const CallArgs& a) { return fn(s, a); }); };
  auto chars_of = [](const CallArgs& a) -> std::optional<std::string> {
    const Value* c = find_arg(a, 0, "chars");
    if (!c || c->is_none()) return std::nullopt;
    if (!c->is_string()) throw TemplateError("strip arg must be None or str");
    return c->as_string();
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return method([chars_of, left, right](const std::string& s, const CallArgs& a) {
      const auto chars = chars_of(a);
      return Value(py_strip(s, chars ? &*chars : nullptr, left, right));
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool reverse = name == "rsplit";
    return method([reverse](const std::string& s, const CallArgs& a) {
      const Value* sep = find_arg(a, 0, "sep");
      const int64_t maxsplit = int_arg(a, 1, "maxsplit", -1);
      std::optional<std::string> sep_s;
      if (sep && !sep->is_none()) {
        if (!sep->is_string()) throw TemplateError("split: sep must be str or None");
        if (sep->as_string().empty()) throw TemplateError("split: empty separator");
        sep_s = sep->as_string();
      }
      if (reverse && maxsplit >= 0) throw TemplateError("rsplit with maxsplit is not supported");
      ValueList parts;
      for (auto& p : py_split(s, sep_s ? &*sep_s : nullptr, maxsplit)) parts.emplace_back(std::move(p));
      return Value::list(std::move(parts));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool ends = name == "endswith";
    return method([ends](const std::string& s, const CallArgs& a) {
      if (a.positional.size() != 1) throw TemplateError("startswith/endswith take exactly one argument here");
      return Value(py_startswith(s, a.positional[0], ends));
    });
  }
  if (name == "upper") return method([](const std::string& s, const CallArgs&) { return Value(py_upper(s)); });
  if (name == "lower") return method([](const std::string& s, const CallArgs&) { return Value(py_lower(s)); });
  if (name == "title") return method([](const std::string& s, const CallArgs&) { return Value(py_title(s)); });
  if (name == "capitalize") return method([](const std::string& s, const CallArgs&) { return Value(py_capitalize(s)); });
  if (name == "replace") {
    return method([](const std::string& s, const CallArgs& a) {
      return Value(py_replace(s, str_arg(a, 0, "old", "replace"), str_arg(a, 1, "new", "replace"), int_arg(a, 2, "count", -1)));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    const bool last = name[0] == 'r';
    const bool raise = name.find("index") != std::string::npos;
    return method([last, raise](const std::string& s, const CallArgs& a) {
      const int64_t at = py_find(s, str_arg(a, 0, "sub", "find"), last);
      if (raise && at < 0) throw TemplateError("substring not found");
      return Value(at);
    });
  }
  if (name == "count") {
    return method([](const std::string& s, const CallArgs& a) {
      const std::string sub = str_arg(a, 0, "sub", "count");
      if (sub.empty()) return Value(static_cast<int64_t>(count_code_points(s)) + 1);
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value(n);
    });
  }
  if (name == "format") return method([](const std::string& s, const CallArgs& a) { return Value(py_format(s, a)); });
  if (name == "join") {
    return method([](const std::string& s, const CallArgs& a) {
      const Value* it = find_arg(a, 0, "iterable");
      if (!it) throw TemplateError("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (const Value& v : iterate(*it)) {
        if (!v.is_string()) throw TemplateError(cat("sequence item: expected str instance, ", v.type_name(), " found"));
        if (!first) out += s;
        first = false;
        out += v.as_string();
      }
      return Value(out);
    });
  }
  if (name == "isdigit") return method([](const std::string& s, const CallArgs&) { return Value(all_cps(s, [](char32_t c) { return c >= '0' && c <= '9'; })); });
  if (name == "isspace") return method([](const std::string& s, const CallArgs&) { return Value(all_cps(s, is_py_space)); });
  if (name == "isalpha") {
    return method([](const std::string& s, const CallArgs&) {
      return Value(all_cps(s, [](char32_t c) { return is_cased_letter(c); }));
    });
  }
  if (name == "islower" || name == "isupper") {
    const bool lower = name == "islower";
    return method([lower](const std::string& s, const CallArgs&) {
      bool any_cased = false;
      for (char32_t c : decode_utf8(s)) {
        if (!is_cased_letter(c)) continue;
        any_cased = true;
        if ((lower ? to_lower_cp(c) : to_upper_cp(c)) != c) return Value(false);
      }
      return Value(any_cased);
    });
  }
  return Value::undefined(cat("'str object' has no attribute '", name, "'"));
}

Value dict_method(const Value& d, const std::string& name) {
  if (name == "items" || name == "keys" || name == "values") {
    return Value::callable("dict." + name, [d, name](const CallArgs&) {
      ValueList out;
      for (const auto& [k, v] : d.as_dict().items())
        out.push_back(name == "items" ? Value::tuple({k, v}) : name == "keys" ? k : v);
      return Value::list(std::move(out));
    });
  }
  if (name == "get") {
    return Value::callable("dict.get", [d](const CallArgs& a) {
      const Value* key = find_arg(a, 0, "key");
      if (!key) throw TemplateError("get expected at least 1 argument, got 0");
      const Value* found = d.as_dict().find(*key);
      if (found) return *found;
      const Value* fallback = find_arg(a, 1, "default");
      return fallback ? *fallback : kNoneValue;
    });
  }
  return Value();
}

bool is_mutating_method(const Value& obj, const std::string& name) {
  // ImmutableSandboxedEnvironment turns these into an "unsafe" Undefined; calling it raises.
  static const char* const kList[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"};
  static const char* const kDict[] = {"update", "pop", "popitem", "clear", "setdefault"};
  if (obj.is_list() && !obj.is_generator()) {
    for (const char* m : kList)
      if (name == m) return true;
  }
  if (obj.is_dict()) {
    for (const char* m : kDict)
      if (name == m) return true;
  }
  return false;
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) {
    throw TemplateError(obj.undefined_hint().empty() ? cat("undefined value has no attribute '", name, "'")
                                                     : cat(obj.undefined_hint(), "; it has no attribute '", name, "'"));
  }
  if (is_mutating_method(obj, name))
    return Value::undefined(cat("access to attribute '", name, "' of '", obj.type_name(), "' object is unsafe"));
  if (obj.is_dict()) {
    Value m = dict_method(obj, name);
    if (!m.is_undefined()) return m;
    const Value* v = obj.as_dict().find(std::string_view(name));
    if (v) return *v;
    return Value::undefined(cat("'dict object' has no attribute '", name, "'"));
  }
  if (obj.is_namespace()) {
    const Value* v = obj.as_dict().find(std::string_view(name));
    return v ? *v : Value::undefined(cat("namespace has no attribute '", name, "'"));
  }
  if (obj.is_string()) return string_method(obj.as_string(), name);
  if (obj.is_sequence_like() && !obj.is_generator() && (name == "index" || name == "count")) {
    return Value::callable("list." + name, [obj, name](const CallArgs& a) {
      const Value* x = find_arg(a, 0, "value");
      if (!x) throw TemplateError(cat(name, "() takes exactly one argument"));
      int64_t n = 0;
      const auto& items = obj.as_list();
      for (size_t i = 0; i < items.size(); ++i) {
        if (!py_equal(items[i], *x)) continue;
        if (name == "index") return Value(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") throw TemplateError("list.index(x): x not in list");
      return Value(n);
    });
  }
  return Value::undefined(cat("'", obj.type_name(), " object' has no attribute '", name, "'"));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined())
    throw TemplateError(obj.undefined_hint().empty() ? "undefined value is not subscriptable"
                                                     : cat(obj.undefined_hint(), "; it cannot be subscripted"));
  if ((obj.is_sequence_like() && !obj.is_generator()) || obj.is_string()) {
    if (key.is_int() || key.is_bool()) {
      int64_t i = key.as_int();
      if (obj.is_string()) {
        const std::u32string cps = decode_utf8(obj.as_string());
        const auto n = static_cast<int64_t>(cps.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined("string index out of range");
        return Value(encode_utf8(std::u32string_view(cps).substr(static_cast<size_t>(i), 1)));
      }
      const auto n = static_cast<int64_t>(obj.as_list().size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined(cat(obj.type_name(), " index ", key.as_int(), " out of range"));
      return obj.as_list()[static_cast<size_t>(i)];
    }
  } else if (obj.is_dict()) {
    const Value* v = obj.as_dict().find(key);
    if (v) return *v;
  }
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value::undefined(cat("'", obj.type_name(), " object' has no item ", key.repr()));
}

Value get_slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) throw TemplateError("undefined value is not subscriptable");
  // A bound that is not an int or None makes Python raise TypeError, which jinja2's getitem
  // turns into Undefined.
  for (const Value* v : {&start_v, &stop_v, &step_v})
    if (!v->is_none() && !v->is_int() && !v->is_bool() && !(v->is_undefined() && v->undefined_hint() == kAbsentBound))
      return Value::undefined("slice indices must be integers or None");
  auto bound = [](const Value& v, const char*) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    return v.as_int();
  };
  const auto start_o = bound(start_v, "start"), stop_o = bound(stop_v, "stop"), step_o = bound(step_v, "step");
  const int64_t step = step_o.value_or(1);
  if (step == 0) throw TemplateError("slice step cannot be zero");
  const bool is_str = obj.is_string();
  if (!is_str && !(obj.is_sequence_like() && !obj.is_generator())) return Value::undefined("value cannot be sliced");
  const std::u32string cps = is_str ? decode_utf8(obj.as_string()) : std::u32string();
  const int64_t n = is_str ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(obj.as_list().size());
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, bool is_start) {
    if (!v) return step > 0 ? (is_start ? 0 : n) : (is_start ? n - 1 : -1);
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step > 0 ? 0 : -1;
    } else if (x >= n) {
      x = step > 0 ? n : n - 1;
    }
    return x;
  };
  const int64_t start = adjust(start_o, true), stop = adjust(stop_o, false);
  std::vector<int64_t> idx;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) idx.push_back(i);
  if (is_str) {
    std::u32string out;
    for (int64_t i : idx) out.push_back(cps[static_cast<size_t>(i)]);
    return Value(encode_utf8(out));
  }
  ValueList out;
  for (int64_t i : idx) out.push_back(obj.as_list()[static_cast<size_t>(i)]);
  return obj.is_tuple() ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

Value call_value(const Value& callee, const CallArgs& args) {
  if (callee.is_callable()) return callee.as_callable().fn(args);
  if (callee.is_undefined())
    throw TemplateError(callee.undefined_hint().empty() ? "undefined value is not callable"
                                                        : cat(callee.undefined_hint(), "; it cannot be called"));
  throw TemplateError(cat("'", callee.type_name(), "' object is not callable"));
}

ValueList iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return {};
    case Value::Kind::kList:
    case Value::Kind::kTuple: return v.as_list();
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& [k, e] : v.as_dict().items()) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      for (char32_t c : decode_utf8(v.as_string())) chars.emplace_back(encode_utf8(std::u32string(1, c)));
      return chars;
    }
    default: throw TemplateError(cat("'", v.type_name(), "' object is not iterable"));
  }
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string())
      throw TemplateError(cat("'in <string>' requires string as left operand, not ", item.type_name()));
    return container.as_string().find(item.as_string()) != std::string::npos;
  }
  if (container.is_dict()) return container.as_dict().find(item) != nullptr;
  for (const Value& v : iterate(container))
    if (py_equal(v, item)) return true;
  return false;
}

int64_t py_len(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return static_cast<int64_t>(count_code_points(v.as_string()));
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      if (v.is_generator()) throw TemplateError("object of type 'generator' has no len()");
      return static_cast<int64_t>(v.as_list().size());
    case Value::Kind::kDict: return static_cast<int64_t>(v.as_dict().size());
    default: throw TemplateError(cat("object of type '", v.type_name(), "' has no len()"));
  }
}

namespace {

Value make_range(const CallArgs& a) {
  if (!a.keyword.empty() || a.positional.empty() || a.positional.size() > 3)
    throw TemplateError("range() takes 1 to 3 positional integer arguments");
  for (const Value& v : a.positional)
    if (!v.is_int() && !v.is_bool()) throw TemplateError(cat("range(): '", v.type_name(), "' object cannot be interpreted as an integer"));
  int64_t start = 0, stop, step = 1;
  if (a.positional.size() == 1) {
    stop = a.positional[0].as_int();
  } else {
    start = a.positional[0].as_int();
    stop = a.positional[1].as_int();
    if (a.positional.size() == 3) step = a.positional[2].as_int();
  }
  if (step == 0) throw TemplateError("range() arg 3 must not be zero");
  ValueList out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (out.size() >= 100000) throw TemplateError("range too big, the sandbox allows at most 100000 items");
    out.emplace_back(i);
  }
  return Value::list(std::move(out));
}

Dict dict_from_args(const CallArgs& a, const char* fn) {
  Dict d;
  if (a.positional.size() > 1) throw TemplateError(cat(fn, "() takes at most one positional argument"));
  if (a.positional.size() == 1) {
    const Value& src = a.positional[0];
    if (src.is_dict() || src.is_namespace()) {
      for (const auto& [k, v] : src.as_dict().items()) d.set(k, v);
    } else {
      for (const Value& pair : iterate(src)) {
        if (!pair.is_sequence_like() || pair.as_list().size() != 2)
          throw TemplateError(cat(fn, "(): sequence elements must be pairs"));
        d.set(pair.as_list()[0], pair.as_list()[1]);
      }
    }
  }
  for (const auto& [k, v] : a.keyword) d.set(Value(k), v);
  return d;
}

}  // namespace

Value lookup_global(const std::string& name) {
  if (name == "range") return Value::callable("range", make_range);
  if (name == "dict") return Value::callable("dict", [](const CallArgs& a) { return Value::dict(dict_from_args(a, "dict")); });
  if (name == "namespace") {
    return Value::callable("namespace", [](const CallArgs& a) { return Value::make_namespace(dict_from_args(a, "namespace")); });
  }
  if (name == "raise_exception") {
    return Value::callable("raise_exception", [](const CallArgs& a) -> Value {
      const Value* msg = find_arg(a, 0, "message");
      throw TemplateError(cat("raise_exception: ", msg ? msg->str() : ""));
    });
  }
  if (name == "strftime_now") {
    return Value::callable("strftime_now", [](const CallArgs& a) {
      const Value* fmt = find_arg(a, 0, "format");
      if (!fmt || !fmt->is_string()) throw TemplateError("strftime_now() takes a format string");
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[512];
      const size_t n = std::strftime(buf, sizeof buf, fmt->as_string().c_str(), &tm);
      return Value(std::string(buf, n));
    });
  }
  if (name == "joiner") {
    return Value::callable("joiner", [](const CallArgs& a) {
      const Value* sep = find_arg(a, 0, "sep");
      const std::string s = sep ? sep->str() : ", ";
      auto used = std::make_shared<bool>(false);
      return Value::callable("joiner", [s, used](const CallArgs&) {
        if (!*used) {
          *used = true;
          return Value("");
        }
        return Value(s);
      });
    });
  }
  return Value::undefined(cat("'", name, "' is undefined"));
}

}  // namespace xy::chat
