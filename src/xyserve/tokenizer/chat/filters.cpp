// jinja2's built-in filters (jinja2/filters.py, 3.1) that chat templates use, plus
// transformers' tojson. Argument names and defaults follow jinja2 so keyword calls bind alike.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

#include "xyserve/tokenizer/chat/builtins.h"
#include "xyserve/tokenizer/chat/text.h"

namespace xy::chat {
namespace {

using FilterFn = std::function<Value(const Value&, const CallArgs&)>;

const Value* arg(const CallArgs& a, size_t i, std::string_view name) { return find_arg(a, i, name); }

bool bool_arg(const CallArgs& a, size_t i, std::string_view name, bool fallback) {
  const Value* v = arg(a, i, name);
  return v ? v->truthy() : fallback;
}

// jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0 with environment.getitem.
Value get_attribute_path(const Value& item, const Value& attribute) {
  if (attribute.is_int()) return get_item(item, attribute);
  Value cur = item;
  const std::string path = attribute.str();
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const bool is_index = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
    cur = get_item(cur, is_index ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(py_lower(v.as_string()));
  return v;
}

ValueList sorted(ValueList items, bool reverse, const std::function<Value(const Value&)>& key) {
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t i = 0; i < items.size(); ++i) keyed.emplace_back(key(items[i]), i);
  // Python's sort is stable, also with reverse=True (equal items keep their order).
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? py_less(y.first, x.first) : py_less(x.first, y.first);
  });
  ValueList out;
  for (const auto& [k, i] : keyed) out.push_back(items[i]);
  return out;
}

std::string soft_str(const Value& v) { return v.str(); }

// Python str.splitlines() without keepends.
std::vector<std::string> py_splitlines(const std::string& s) {
  std::vector<std::string> out;
  const std::u32string cps = decode_utf8(s);
  std::u32string line;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
                     c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      line.push_back(c);
      continue;
    }
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    out.push_back(encode_utf8(line));
    line.clear();
  }
  if (!line.empty()) out.push_back(encode_utf8(line));
  return out;
}

Value do_select(const Value& seq, const CallArgs& a, bool by_attr, bool want) {
  // select(seq, test, *args) / selectattr(seq, attr, test, *args)
  size_t i = 0;
  Value attribute;
  if (by_attr) {
    if (a.positional.empty()) throw TemplateError("selectattr/rejectattr need an attribute name");
    attribute = a.positional[i++];
  }
  std::string test;
  CallArgs test_args;
  if (i < a.positional.size()) {
    test = a.positional[i++].str();
    test_args.positional.assign(a.positional.begin() + static_cast<std::ptrdiff_t>(i), a.positional.end());
    test_args.keyword = a.keyword;
    if (!is_known_test(test)) throw TemplateError(cat("no test named '", test, "'"));
  }
  ValueList out;
  for (const Value& item : iterate(seq)) {
    const Value x = by_attr ? get_attribute_path(item, attribute) : item;
    const bool pass = test.empty() ? x.truthy() : apply_test(test, x, test_args);
    if (pass == want) out.push_back(item);
  }
  return Value::generator(std::move(out));
}

Value do_map(const Value& seq, const CallArgs& a) {
  ValueList out;
  if (a.positional.empty()) {
    const Value* attribute = arg(a, 99, "attribute");
    if (!attribute) throw TemplateError("map() needs a filter name or attribute=");
    const Value* dflt = arg(a, 99, "default");
    for (const Value& item : iterate(seq)) {
      Value v = get_attribute_path(item, *attribute);
      out.push_back(v.is_undefined() && dflt ? *dflt : v);
    }
    return Value::generator(std::move(out));
  }
  const std::string filter = a.positional[0].str();
  if (!is_known_filter(filter)) throw TemplateError(cat("no filter named '", filter, "'"));
  CallArgs rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keyword = a.keyword;
  for (const Value& item : iterate(seq)) out.push_back(apply_filter(filter, item, rest));
  return Value::generator(std::move(out));
}

Value do_tojson(const Value& x, const CallArgs& a) {
  JsonOptions opt;
  opt.ensure_ascii = bool_arg(a, 0, "ensure_ascii", false);
  if (const Value* indent = arg(a, 1, "indent"); indent && !indent->is_none()) {
    if (indent->is_string()) {
      opt.indent = indent->as_string();
    } else if (indent->is_int()) {
      opt.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, indent->as_int())), ' ');
    } else {
      throw TemplateError("tojson: indent must be an int, a str or None");
    }
  }
  if (const Value* sep = arg(a, 2, "separators"); sep && !sep->is_none()) {
    if (!sep->is_sequence_like() || sep->as_list().size() != 2 || !sep->as_list()[0].is_string() ||
        !sep->as_list()[1].is_string())
      throw TemplateError("tojson: separators must be a pair of strings");
    opt.separators = std::make_pair(sep->as_list()[0].as_string(), sep->as_list()[1].as_string());
  }
  opt.sort_keys = bool_arg(a, 3, "sort_keys", false);
  return Value(py_json_dumps(x, opt));
}

Value do_int(const Value& v, const CallArgs& a) {
  const Value* dflt = arg(a, 0, "default");
  const Value fallback = dflt ? *dflt : Value(int64_t{0});
  if (v.is_undefined()) throw TemplateError("undefined value cannot be converted to int");
  if (v.is_int() || v.is_bool()) return Value(v.as_int());
  if (v.is_float()) {
    if (!std::isfinite(v.as_double())) return fallback;
    return Value(static_cast<int64_t>(std::trunc(v.as_double())));
  }
  if (!v.is_string()) return fallback;
  std::string s = py_strip(v.as_string(), nullptr, true, true);
  std::string digits;
  for (size_t i = 0; i < s.size(); ++i) {  // Python allows single '_' between digits
    if (s[i] == '_' && i > 0 && i + 1 < s.size() && isdigit(static_cast<unsigned char>(s[i - 1])) &&
        isdigit(static_cast<unsigned char>(s[i + 1])))
      continue;
    digits.push_back(s[i]);
  }
  if (!digits.empty()) {
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(digits.c_str(), &end, 10);
    const bool plain = digits.find_first_not_of("+-0123456789") == std::string::npos;
    if (plain && end && *end == 0 && errno == 0) return Value(static_cast<int64_t>(n));
    // jinja2 then tries int(float(value)), so "42.23"|int is 42.
    const double d = std::strtod(digits.c_str(), &end);
    if (end && *end == 0 && std::isfinite(d) && digits.find_first_of("xXpP") == std::string::npos)
      return Value(static_cast<int64_t>(std::trunc(d)));
  }
  return fallback;
}

Value do_float(const Value& v, const CallArgs& a) {
  const Value* dflt = arg(a, 0, "default");
  const Value fallback = dflt ? *dflt : Value(0.0);
  if (v.is_undefined()) throw TemplateError("undefined value cannot be converted to float");
  if (v.is_number()) return Value(v.as_double());
  if (!v.is_string()) return fallback;
  const std::string s = py_strip(v.as_string(), nullptr, true, true);
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (s.empty() || !end || *end != 0 || s.find_first_of("xXpP") != std::string::npos) return fallback;
  return Value(d);
}

Value do_round(const Value& v, const CallArgs& a) {
  const Value* p = arg(a, 0, "precision");
  const int64_t precision = p ? p->as_int() : 0;
  const std::string method = arg(a, 1, "method") ? arg(a, 1, "method")->str() : "common";
  if (!v.is_number()) throw TemplateError(cat("round: type ", v.type_name(), " is not a number"));
  if (method == "common") {
    if (!v.is_float()) return Value(v.as_int());
    // Python rounds the exact binary value half-to-even; glibc's printf does the same.
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::clamp<int64_t>(precision, 0, 300)), v.as_double());
    return Value(std::strtod(buf, nullptr));
  }
  if (method != "ceil" && method != "floor") throw TemplateError("round: method must be common, ceil or floor");
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  return Value((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value do_indent(const Value& v, const CallArgs& a) {
  const Value* w = arg(a, 0, "width");
  const std::string indention = w && w->is_string() ? w->as_string() : std::string(static_cast<size_t>(std::max<int64_t>(0, w ? w->as_int() : 4)), ' ');
  const bool first = bool_arg(a, 1, "first", false);
  const bool blank = bool_arg(a, 2, "blank", false);
  const std::vector<std::string> lines = py_splitlines(soft_str(v) + "\n");
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + indention : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : indention + lines[i]);
  }
  return Value(first ? indention + rv : rv);
}

// jinja2's title filter: capitalize each piece after a run of '-', whitespace, '(', '{', '[', '<'.
std::string jinja_title(const std::string& s) {
  const std::u32string cps = decode_utf8(s);
  std::u32string out;
  bool at_start = true;
  for (char32_t c : cps) {
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c);
    if (sep) {
      out.push_back(c);
      at_start = true;
    } else {
      out.push_back(at_start ? to_upper_cp(c) : to_lower_cp(c));
      at_start = false;
    }
  }
  return encode_utf8(out);
}

bool is_word_cp(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (is_py_space(c)) return false;
  // Punctuation and symbol blocks are not \w; letters of other scripts are.
  if ((c >= 0x80 && c <= 0xBF && c != 0xAA && c != 0xB5 && c != 0xBA) || c == 0xD7 || c == 0xF7) return false;
  if ((c >= 0x2000 && c <= 0x2BFF) || (c >= 0x3000 && c <= 0x303F) || (c >= 0xFF00 && c <= 0xFF0F)) return false;
  return !(c >= 0x1F000 && c <= 0x1FAFF);
}

const std::map<std::string, FilterFn, std::less<>>& filter_table() {
  static const std::map<std::string, FilterFn, std::less<>> table = [] {
    std::map<std::string, FilterFn, std::less<>> t;
    t["trim"] = [](const Value& v, const CallArgs& a) {
      const Value* chars = arg(a, 0, "chars");
      const std::string c = chars && !chars->is_none() ? chars->str() : "";
      return Value(py_strip(soft_str(v), chars && !chars->is_none() ? &c : nullptr, true, true));
    };
    t["upper"] = [](const Value& v, const CallArgs&) { return Value(py_upper(soft_str(v))); };
    t["lower"] = [](const Value& v, const CallArgs&) { return Value(py_lower(soft_str(v))); };
    t["capitalize"] = [](const Value& v, const CallArgs&) { return Value(py_capitalize(soft_str(v))); };
    t["title"] = [](const Value& v, const CallArgs&) { return Value(jinja_title(soft_str(v))); };
    t["length"] = [](const Value& v, const CallArgs&) { return Value(py_len(v)); };
    t["count"] = t["length"];
    t["first"] = [](const Value& v, const CallArgs&) {
      ValueList items = iterate(v);
      return items.empty() ? Value::undefined("no first item, sequence was empty") : items.front();
    };
    t["last"] = [](const Value& v, const CallArgs&) {
      if (v.is_generator()) throw TemplateError("'generator' object is not reversible");
      ValueList items = iterate(v);
      return items.empty() ? Value::undefined("no last item, sequence was empty") : items.back();
    };
    t["join"] = [](const Value& v, const CallArgs& a) {
      const Value* d = arg(a, 0, "d");
      const Value* attribute = arg(a, 1, "attribute");
      const std::string sep = d ? soft_str(*d) : "";
      std::string out;
      bool first = true;
      for (const Value& item : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += soft_str(attribute ? get_attribute_path(item, *attribute) : item);
      }
      return Value(out);
    };
    t["default"] = [](const Value& v, const CallArgs& a) {
      const Value* d = arg(a, 0, "default_value");
      const bool boolean = bool_arg(a, 1, "boolean", false);
      if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value("");
      return v;
    };
    t["d"] = t["default"];
    t["replace"] = [](const Value& v, const CallArgs& a) {
      const Value* old = arg(a, 0, "old");
      const Value* repl = arg(a, 1, "new");
      const Value* count = arg(a, 2, "count");
      if (!old || !repl) throw TemplateError("replace() needs old and new");
      CallArgs m;
      m.positional = {Value(soft_str(*old)), Value(soft_str(*repl))};
      if (count && !count->is_none()) m.positional.push_back(*count);
      return call_value(get_attr(Value(soft_str(v)), "replace"), m);
    };
    t["tojson"] = do_tojson;
    t["string"] = [](const Value& v, const CallArgs&) { return Value(soft_str(v)); };
    t["safe"] = t["string"];  // Markup is a str subclass; without autoescape it renders the same
    t["int"] = do_int;
    t["float"] = do_float;
    t["list"] = [](const Value& v, const CallArgs&) { return Value::list(iterate(v)); };
    t["items"] = [](const Value& v, const CallArgs&) {
      if (v.is_undefined()) return Value::generator({});
      if (!v.is_dict()) throw TemplateError("items: can only get item pairs from a mapping");
      ValueList out;
      for (const auto& [k, e] : v.as_dict().items()) out.push_back(Value::tuple({k, e}));
      return Value::generator(std::move(out));
    };
    t["dictsort"] = [](const Value& v, const CallArgs& a) {
      if (!v.is_dict()) throw TemplateError("dictsort: value is not a dict");
      const bool cs = bool_arg(a, 0, "case_sensitive", false);
      const std::string by = arg(a, 1, "by") ? arg(a, 1, "by")->str() : "key";
      const bool reverse = bool_arg(a, 2, "reverse", false);
      if (by != "key" && by != "value") throw TemplateError("dictsort: you can only sort by either \"key\" or \"value\"");
      ValueList pairs;
      for (const auto& [k, e] : v.as_dict().items()) pairs.push_back(Value::tuple({k, e}));
      const size_t pos = by == "key" ? 0 : 1;
      return Value::list(sorted(std::move(pairs), reverse, [&](const Value& p) { return sort_key(p.as_list()[pos], cs); }));
    };
    t["sort"] = [](const Value& v, const CallArgs& a) {
      const bool reverse = bool_arg(a, 0, "reverse", false);
      const bool cs = bool_arg(a, 1, "case_sensitive", false);
      const Value* attribute = arg(a, 2, "attribute");
      return Value::list(sorted(iterate(v), reverse, [&](const Value& x) {
        return sort_key(attribute && !attribute->is_none() ? get_attribute_path(x, *attribute) : x, cs);
      }));
    };
    t["unique"] = [](const Value& v, const CallArgs& a) {
      const bool cs = bool_arg(a, 0, "case_sensitive", false);
      const Value* attribute = arg(a, 1, "attribute");
      ValueList out, seen;
      for (const Value& x : iterate(v)) {
        const Value key = sort_key(attribute && !attribute->is_none() ? get_attribute_path(x, *attribute) : x, cs);
        if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return py_equal(s, key); })) continue;
        seen.push_back(key);
        out.push_back(x);
      }
      return Value::generator(std::move(out));
    };
    t["reverse"] = [](const Value& v, const CallArgs&) {
      if (v.is_string()) {
        std::u32string cps = decode_utf8(v.as_string());
        std::reverse(cps.begin(), cps.end());
        return Value(encode_utf8(cps));
      }
      ValueList items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::generator(std::move(items));
    };
    t["selectattr"] = [](const Value& v, const CallArgs& a) { return do_select(v, a, true, true); };
    t["rejectattr"] = [](const Value& v, const CallArgs& a) { return do_select(v, a, true, false); };
    t["select"] = [](const Value& v, const CallArgs& a) { return do_select(v, a, false, true); };
    t["reject"] = [](const Value& v, const CallArgs& a) { return do_select(v, a, false, false); };
    t["map"] = do_map;
    t["indent"] = do_indent;
    t["abs"] = [](const Value& v, const CallArgs&) {
      if (v.is_float()) return Value(std::fabs(v.as_double()));
      if (v.is_int() || v.is_bool()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
      throw TemplateError(cat("bad operand type for abs(): '", v.type_name(), "'"));
    };
    t["round"] = do_round;
    t["wordcount"] = [](const Value& v, const CallArgs&) {
      int64_t n = 0;
      bool in_word = false;
      for (char32_t c : decode_utf8(soft_str(v))) {
        const bool w = is_word_cp(c);
        n += w && !in_word;
        in_word = w;
      }
      return Value(n);
    };
    t["center"] = [](const Value& v, const CallArgs& a) {
      const Value* w = arg(a, 0, "width");
      const int64_t width = w ? w->as_int() : 80;
      const std::string s = soft_str(v);
      const auto len = static_cast<int64_t>(count_code_points(s));
      if (width <= len) return Value(s);
      const int64_t marg = width - len;
      const int64_t left = marg / 2 + (marg & width & 1);  // CPython's pad() for str.center
      return Value(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(marg - left), ' '));
    };
    t["batch"] = [](const Value& v, const CallArgs& a) {
      const Value* count = arg(a, 0, "linecount");
      if (!count || !count->is_int() || count->as_int() <= 0) throw TemplateError("batch: linecount must be a positive int");
      const Value* fill = arg(a, 1, "fill_with");
      ValueList out, cur;
      for (const Value& x : iterate(v)) {
        cur.push_back(x);
        if (static_cast<int64_t>(cur.size()) == count->as_int()) {
          out.push_back(Value::list(std::move(cur)));
          cur.clear();
        }
      }
      if (!cur.empty()) {
        if (fill && !fill->is_none())
          while (static_cast<int64_t>(cur.size()) < count->as_int()) cur.push_back(*fill);
        out.push_back(Value::list(std::move(cur)));
      }
      return Value::generator(std::move(out));
    };
    auto minmax = [](bool want_max) {
      return [want_max](const Value& v, const CallArgs& a) {
        const bool cs = bool_arg(a, 0, "case_sensitive", false);
        const Value* attribute = arg(a, 1, "attribute");
        ValueList items = iterate(v);
        if (items.empty()) return Value::undefined(cat("no ", want_max ? "largest" : "smallest", " item, sequence was empty"));
        auto key = [&](const Value& x) { return sort_key(attribute && !attribute->is_none() ? get_attribute_path(x, *attribute) : x, cs); };
        size_t best = 0;
        for (size_t i = 1; i < items.size(); ++i) {
          const bool better = want_max ? py_less(key(items[best]), key(items[i])) : py_less(key(items[i]), key(items[best]));
          if (better) best = i;
        }
        return items[best];
      };
    };
    t["min"] = minmax(false);
    t["max"] = minmax(true);
    t["sum"] = [](const Value& v, const CallArgs& a) {
      const Value* attribute = arg(a, 0, "attribute");
      const Value* start = arg(a, 1, "start");
      Value total = start ? *start : Value(int64_t{0});
      for (const Value& x : iterate(v)) {
        const Value y = attribute && !attribute->is_none() ? get_attribute_path(x, *attribute) : x;
        if (!total.is_number() || !y.is_number()) throw TemplateError("sum: items must be numbers");
        total = total.is_float() || y.is_float() ? Value(total.as_double() + y.as_double()) : Value(total.as_int() + y.as_int());
      }
      return total;
    };
    t["escape"] = [](const Value& v, const CallArgs&) {
      std::string out;
      for (char c : soft_str(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out.push_back(c);
        }
      }
      return Value(out);
    };
    t["e"] = t["escape"];
    return t;
  }();
  return table;
}

}  // namespace

bool is_known_filter(std::string_view name) { return filter_table().count(name) != 0; }

Value apply_filter(const std::string& name, const Value& target, const CallArgs& args) {
  const auto& table = filter_table();
  const auto it = table.find(name);
  if (it == table.end()) throw TemplateError(cat("no filter named '", name, "'"));
  return it->second(target, args);
}

}  // namespace xy::chat
