// jinja2's built-in tests (jinja2/tests.py, 3.1): `x is defined`, `x is string`, `x is eq 3`...
#include <cmath>
#include <functional>
#include <map>

#include "xyserve/tokenizer/chat/builtins.h"
#include "xyserve/tokenizer/chat/text.h"

namespace xy::chat {
namespace {

using TestFn = std::function<bool(const Value&, const CallArgs&)>;

const Value& operand(const CallArgs& a, const char* test) {
  const Value* v = find_arg(a, 0, "other");
  if (!v) throw TemplateError(cat("test '", test, "' needs an argument"));
  return *v;
}

// Python's `value % n` for the odd/even/divisibleby tests.
int64_t py_mod_int(const Value& v, int64_t n, const char* test) {
  if (v.is_undefined()) throw TemplateError(cat("test '", test, "': the value is undefined"));
  if (!v.is_int() && !v.is_bool()) {
    if (v.is_float()) {
      const double r = std::fmod(v.as_double(), static_cast<double>(n));
      return r == 0 ? 0 : 1;
    }
    throw TemplateError(cat("test '", test, "': unsupported operand type ", v.type_name()));
  }
  if (n == 0) throw TemplateError("integer division or modulo by zero");
  int64_t r = v.as_int() % n;
  if (r != 0 && ((r < 0) != (n < 0))) r += n;
  return r;
}

bool cased_all(const Value& v, bool lower) {
  const std::string s = v.str();
  bool any = false;
  for (char32_t c : decode_utf8(s)) {
    if (!is_cased_letter(c)) continue;
    any = true;
    if ((lower ? to_lower_cp(c) : to_upper_cp(c)) != c) return false;
  }
  return any;
}

const std::map<std::string, TestFn, std::less<>>& test_table() {
  static const std::map<std::string, TestFn, std::less<>> table = [] {
    std::map<std::string, TestFn, std::less<>> t;
    t["defined"] = [](const Value& v, const CallArgs&) { return !v.is_undefined(); };
    t["undefined"] = [](const Value& v, const CallArgs&) { return v.is_undefined(); };
    t["none"] = [](const Value& v, const CallArgs&) { return v.is_none(); };
    t["boolean"] = [](const Value& v, const CallArgs&) { return v.is_bool(); };
    t["true"] = [](const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); };
    t["false"] = [](const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); };
    t["integer"] = [](const Value& v, const CallArgs&) { return v.is_int(); };
    t["float"] = [](const Value& v, const CallArgs&) { return v.is_float(); };
    t["number"] = [](const Value& v, const CallArgs&) { return v.is_number(); };
    t["string"] = [](const Value& v, const CallArgs&) { return v.is_string(); };
    t["mapping"] = [](const Value& v, const CallArgs&) { return v.is_dict(); };
    t["sequence"] = [](const Value& v, const CallArgs&) {
      return v.is_undefined() || v.is_string() || v.is_dict() || (v.is_sequence_like() && !v.is_generator());
    };
    t["iterable"] = [](const Value& v, const CallArgs&) {
      return v.is_undefined() || v.is_string() || v.is_dict() || v.is_sequence_like();
    };
    t["callable"] = [](const Value& v, const CallArgs&) { return v.is_callable(); };
    t["odd"] = [](const Value& v, const CallArgs&) { return py_mod_int(v, 2, "odd") == 1; };
    t["even"] = [](const Value& v, const CallArgs&) { return py_mod_int(v, 2, "even") == 0; };
    t["divisibleby"] = [](const Value& v, const CallArgs& a) {
      const Value* n = find_arg(a, 0, "num");
      if (!n || !(n->is_int() || n->is_bool())) throw TemplateError("divisibleby needs an integer");
      return py_mod_int(v, n->as_int(), "divisibleby") == 0;
    };
    t["lower"] = [](const Value& v, const CallArgs&) { return cased_all(v, true); };
    t["upper"] = [](const Value& v, const CallArgs&) { return cased_all(v, false); };
    t["eq"] = [](const Value& v, const CallArgs& a) { return py_equal(v, operand(a, "eq")); };
    t["ne"] = [](const Value& v, const CallArgs& a) { return !py_equal(v, operand(a, "ne")); };
    t["lt"] = [](const Value& v, const CallArgs& a) { return py_less(v, operand(a, "lt")); };
    t["gt"] = [](const Value& v, const CallArgs& a) { return py_less(operand(a, "gt"), v); };
    t["le"] = [](const Value& v, const CallArgs& a) { return !py_less(operand(a, "le"), v); };
    t["ge"] = [](const Value& v, const CallArgs& a) { return !py_less(v, operand(a, "ge")); };
    for (auto [alias, name] : {std::pair{"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"}, {"<", "lt"}, {"lessthan", "lt"},
                               {">", "gt"}, {"greaterthan", "gt"}, {"<=", "le"}, {">=", "ge"}})
      t[alias] = t[name];
    t["in"] = [](const Value& v, const CallArgs& a) {
      const Value* seq = find_arg(a, 0, "seq");
      if (!seq) throw TemplateError("test 'in' needs a container");
      return contains(*seq, v);
    };
    t["sameas"] = [](const Value& v, const CallArgs& a) {
      // Python identity; for the singletons templates compare against it is equality of kind and value.
      const Value& o = operand(a, "sameas");
      if (v.kind() != o.kind()) return false;
      if (v.is_none() || v.is_bool() || v.is_undefined()) return py_equal(v, o);
      if (v.is_int()) return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;
      return false;
    };
    t["filter"] = [](const Value& v, const CallArgs&) { return v.is_string() && is_known_filter(v.as_string()); };
    t["test"] = [](const Value& v, const CallArgs&) { return v.is_string() && is_known_test(v.as_string()); };
    t["escaped"] = [](const Value&, const CallArgs&) { return false; };
    return t;
  }();
  return table;
}

}  // namespace

bool is_known_test(std::string_view name) { return test_table().count(name) != 0; }

bool apply_test(const std::string& name, const Value& target, const CallArgs& args) {
  const auto& table = test_table();
  const auto it = table.find(name);
  if (it == table.end()) throw TemplateError(cat("no test named '", name, "'"));
  return it->second(target, args);
}

}  // namespace xy::chat
