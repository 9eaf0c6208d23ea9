#include "xyserve/tokenizer/chat/renderer.h"

#include <cmath>
#include <memory>

#include "xyserve/tokenizer/chat/builtins.h"
#include "xyserve/tokenizer/chat/text.h"

namespace xy::chat {
namespace {

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Frame> parent;

  const Value* find(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent.get())
      for (const auto& [k, v] : f->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};
using FramePtr = std::shared_ptr<Frame>;

enum class Flow { kNormal, kBreak, kContinue };

// Python's floor division and modulo on ints (the sign follows the divisor).
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value(a.str() + b.str());
  if (a.is_undefined() || b.is_undefined())
    throw TemplateError(cat("unsupported operand for '", op, "': ",
                            a.is_undefined() && !a.undefined_hint().empty() ? a.undefined_hint()
                            : b.is_undefined() && !b.undefined_hint().empty() ? b.undefined_hint()
                                                                               : "an operand is undefined"));
  auto type_error = [&]() -> Value {
    throw TemplateError(cat("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'"));
  };
  if (a.is_number() && b.is_number()) {
    const bool fl = a.is_float() || b.is_float();
    const double x = a.as_double(), y = b.as_double();
    const int64_t i = a.as_int(), j = b.as_int();
    if (op == "+") return fl ? Value(x + y) : Value(i + j);
    if (op == "-") return fl ? Value(x - y) : Value(i - j);
    if (op == "*") return fl ? Value(x * y) : Value(i * j);
    if (op == "/") {
      if (y == 0) throw TemplateError("division by zero");
      return Value(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) throw TemplateError(fl ? "float divmod() by zero" : "integer division or modulo by zero");
      if (!fl) return op == "//" ? Value(floor_div(i, j)) : Value(i - floor_div(i, j) * j);
      // CPython's float_divmod.
      double m = std::fmod(x, y);
      double div = (x - m) / y;
      if (m != 0 && ((y < 0) != (m < 0))) {
        m += y;
        div -= 1.0;
      }
      if (op == "%") return Value(m != 0 ? m : std::copysign(0.0, y));
      double floordiv = std::floor(div);
      if (div - floordiv > 0.5) floordiv += 1.0;
      return Value(div != 0 ? floordiv : std::copysign(0.0, x / y));
    }
    if (op == "**") {
      if (!fl && j >= 0) {
        int64_t r = 1;
        for (int64_t k = 0; k < j; ++k) r *= i;
        return Value(r);
      }
      if (x == 0 && y < 0) throw TemplateError("0.0 cannot be raised to a negative power");
      return Value(std::pow(x, y));
    }
    return type_error();
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.kind() == b.kind() && a.is_sequence_like() && !a.is_generator() && !b.is_generator()) {
      ValueList items = a.as_list();
      items.insert(items.end(), b.as_list().begin(), b.as_list().end());
      return a.is_tuple() ? Value::tuple(std::move(items)) : Value::list(std::move(items));
    }
    return type_error();
  }
  if (op == "*") {
    const Value& seq = a.is_number() ? b : a;
    const Value& n = a.is_number() ? a : b;
    if (!(n.is_int() || n.is_bool())) return type_error();
    const int64_t times = std::max<int64_t>(0, n.as_int());
    if (seq.is_string()) {
      std::string out;
      for (int64_t k = 0; k < times; ++k) out += seq.as_string();
      return Value(out);
    }
    if (seq.is_sequence_like() && !seq.is_generator()) {
      ValueList out;
      for (int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
      return seq.is_tuple() ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    return type_error();
  }
  if (op == "%" && a.is_string()) throw TemplateError("printf-style '%' string formatting is not supported");
  return type_error();
}

class Renderer {
 public:
  explicit Renderer(const Dict& context) : context_(context) {}

  std::string run(const Body& body) {
    auto root = std::make_shared<Frame>();
    std::string out;
    render(body, out, root);
    return out;
  }

 private:
  [[noreturn]] static void fail_at(const SourcePos& pos, const std::string& msg) {
    throw Error(cat("chat template ", pos.line, ":", pos.col, ": ", msg));
  }

  Value lookup(const std::string& name, const FramePtr& frame) const {
    if (const Value* v = frame->find(name)) return *v;
    if (const Value* v = context_.find(std::string_view(name))) return *v;
    return lookup_global(name);
  }

  Flow render(const Body& body, std::string& out, const FramePtr& frame) {
    for (const auto& s : body) {
      const Flow f = render_stmt(*s, out, frame);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  std::string render_to_string(const Body& body, const FramePtr& frame) {
    std::string out;
    render(body, out, frame);
    return out;
  }

  Value apply_filters(const std::vector<ExprPtr>& filters, Value v, const FramePtr& frame) {
    for (const auto& f : filters) {
      CallArgs args = eval_args(f->args, frame);
      try {
        v = apply_filter(f->name, v, args);
      } catch (const TemplateError& e) {
        fail_at(f->pos, e.what());
      }
    }
    return v;
  }

  void assign(const Target& target, const Value& v, const FramePtr& frame, const SourcePos& pos) {
    if (!target.attr.empty()) {
      const Value ns = lookup(target.names[0], frame);
      if (!ns.is_namespace()) fail_at(pos, cat("cannot assign attribute on non-namespace object '", target.names[0], "'"));
      ns.namespace_dict().set(Value(target.attr), v);
      return;
    }
    if (!target.is_tuple) {
      frame->set(target.names[0], v);
      return;
    }
    ValueList items;
    try {
      items = iterate(v);
    } catch (const TemplateError& e) {
      fail_at(pos, cat("cannot unpack: ", e.what()));
    }
    if (items.size() != target.names.size())
      fail_at(pos, cat("cannot unpack ", items.size(), " values into ", target.names.size(), " names"));
    for (size_t i = 0; i < items.size(); ++i) frame->set(target.names[i], items[i]);
  }

  Flow render_stmt(const Stmt& s, std::string& out, const FramePtr& frame) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        out += s.text;
        return Flow::kNormal;
      case Stmt::Kind::kOutput: {
        const Value v = eval(*s.expr, frame);
        try {
          out += v.str();
        } catch (const TemplateError& e) {
          fail_at(s.pos, e.what());
        }
        return Flow::kNormal;
      }
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < s.conds.size(); ++i)
          if (eval(*s.conds[i], frame).truthy()) return render(s.bodies[i], out, frame);
        return render(s.else_body, out, frame);
      case Stmt::Kind::kFor:
        return render_for(s, out, frame);
      case Stmt::Kind::kSet:
        assign(s.target, eval(*s.expr, frame), frame, s.pos);
        return Flow::kNormal;
      case Stmt::Kind::kSetBlock: {
        Value v(render_to_string(s.bodies[0], frame));
        assign(s.target, apply_filters(s.filters, std::move(v), frame), frame, s.pos);
        return Flow::kNormal;
      }
      case Stmt::Kind::kFilterBlock:
        out += apply_filters(s.filters, Value(render_to_string(s.bodies[0], frame)), frame).str();
        return Flow::kNormal;
      case Stmt::Kind::kMacro:
        frame->set(s.name, make_macro(s, frame, Value()));
        return Flow::kNormal;
      case Stmt::Kind::kCallBlock: {
        const Value caller = make_macro(s, frame, Value(), /*is_caller=*/true);
        const Expr& call = *s.expr;
        const Value callee = eval(*call.items[0], frame);
        CallArgs args = eval_args(call.args, frame);
        args.keyword.emplace_back("caller", caller);
        try {
          out += call_value(callee, args).str();
        } catch (const TemplateError& e) {
          fail_at(call.pos, e.what());
        }
        return Flow::kNormal;
      }
      case Stmt::Kind::kBreak:
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        return Flow::kContinue;
      case Stmt::Kind::kScope:
        return render(s.bodies[0], out, frame);
    }
    return Flow::kNormal;
  }

  Flow render_for(const Stmt& s, std::string& out, const FramePtr& frame) {
    const Value seq = eval(*s.expr, frame);
    ValueList items;
    try {
      items = iterate(seq);
    } catch (const TemplateError& e) {
      fail_at(s.expr->pos, e.what());
    }
    if (s.cond) {  // `for x in xs if cond`: the condition sees the loop variable, not `loop`
      ValueList kept;
      for (const Value& item : items) {
        auto probe = std::make_shared<Frame>();
        probe->parent = frame;
        assign(s.target, item, probe, s.pos);
        if (eval(*s.cond, probe).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return render(s.else_body, out, frame);
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      auto iter_frame = std::make_shared<Frame>();
      iter_frame->parent = frame;
      assign(s.target, items[static_cast<size_t>(i)], iter_frame, s.pos);
      Dict loop;
      loop.set(Value("index"), Value(i + 1));
      loop.set(Value("index0"), Value(i));
      loop.set(Value("revindex"), Value(n - i));
      loop.set(Value("revindex0"), Value(n - i - 1));
      loop.set(Value("first"), Value(i == 0));
      loop.set(Value("last"), Value(i == n - 1));
      loop.set(Value("length"), Value(n));
      loop.set(Value("depth"), Value(int64_t{1}));
      loop.set(Value("depth0"), Value(int64_t{0}));
      loop.set(Value("previtem"), i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item"));
      loop.set(Value("nextitem"), i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item"));
      loop.set(Value("cycle"), Value::callable("loop.cycle", [i](const CallArgs& a) {
                 if (a.positional.empty()) throw TemplateError("no items for cycling given");
                 return a.positional[static_cast<size_t>(i) % a.positional.size()];
               }));
      iter_frame->set("loop", Value::dict(std::move(loop)));
      if (render(s.bodies[0], out, iter_frame) == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  // A macro (or the caller of a call block) renders its body in a new scope under the scope it
  // was defined in, with its parameters bound, and returns the text.
  Value make_macro(const Stmt& s, const FramePtr& defining, Value, bool is_caller = false) {
    const Stmt* stmt = &s;
    const std::string name = is_caller ? "caller" : s.name;
    return Value::callable(name, [this, stmt, defining, name, is_caller](const CallArgs& a) {
      auto f = std::make_shared<Frame>();
      f->parent = defining;
      const auto& params = stmt->params;
      if (a.positional.size() > params.size())
        throw TemplateError(cat("macro '", name, "' takes not more than ", params.size(), " argument(s)"));
      std::vector<bool> bound(params.size(), false);
      for (size_t i = 0; i < a.positional.size(); ++i) {
        f->set(params[i].name, a.positional[i]);
        bound[i] = true;
      }
      for (const auto& [k, v] : a.keyword) {
        size_t i = 0;
        while (i < params.size() && params[i].name != k) ++i;
        if (i == params.size()) {
          if (k == "caller" && !is_caller) {
            f->set("caller", v);
            continue;
          }
          throw TemplateError(cat("macro '", name, "' takes no keyword argument '", k, "'"));
        }
        if (bound[i]) throw TemplateError(cat("macro '", name, "' got multiple values for argument '", k, "'"));
        f->set(k, v);
        bound[i] = true;
      }
      for (size_t i = 0; i < params.size(); ++i) {
        if (bound[i]) continue;
        f->set(params[i].name, params[i].default_value ? eval(*params[i].default_value, f)
                                                       : Value::undefined(cat("parameter '", params[i].name, "' was not provided")));
      }
      std::string out;
      render(stmt->bodies[0], out, f);
      return Value(std::move(out));
    });
  }

  CallArgs eval_args(const Args& args, const FramePtr& frame) {
    CallArgs out;
    for (const auto& e : args.positional) out.positional.push_back(eval(*e, frame));
    for (const auto& [k, e] : args.keyword) out.keyword.emplace_back(k, eval(*e, frame));
    return out;
  }

  Value eval(const Expr& e, const FramePtr& frame) {
    try {
      return eval_unchecked(e, frame);
    } catch (const TemplateError& err) {
      fail_at(e.pos, err.what());
    }
  }

  Value eval_unchecked(const Expr& e, const FramePtr& frame) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name, frame);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        ValueList items;
        for (const auto& it : e.items) items.push_back(eval(*it, frame));
        return e.kind == Expr::Kind::kList ? Value::list(std::move(items)) : Value::tuple(std::move(items));
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          Value k = eval(*e.items[i], frame);
          if (k.is_sequence_like() && !k.is_tuple()) throw TemplateError("unhashable type: 'list'");
          if (k.is_dict()) throw TemplateError("unhashable type: 'dict'");
          d.set(std::move(k), eval(*e.items[i + 1], frame));
        }
        return Value::dict(std::move(d));
      }
      case Expr::Kind::kGetAttr:
        return get_attr(eval(*e.items[0], frame), e.name);
      case Expr::Kind::kGetItem:
        return get_item(eval(*e.items[0], frame), eval(*e.items[1], frame));
      case Expr::Kind::kSlice: {
        const Value obj = eval(*e.items[0], frame);
        auto bound = [&](const ExprPtr& b) { return b ? eval(*b, frame) : Value::undefined(kAbsentBound); };
        return get_slice(obj, bound(e.items[1]), bound(e.items[2]), bound(e.items[3]));
      }
      case Expr::Kind::kUnary: {
        const Value v = eval(*e.items[0], frame);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_float()) return Value(e.name == "-" ? -v.as_double() : v.as_double());
        if (v.is_int() || v.is_bool()) return Value(e.name == "-" ? -v.as_int() : v.as_int());
        throw TemplateError(cat("bad operand type for unary ", e.name, ": '", v.type_name(), "'"));
      }
      case Expr::Kind::kBinary: {
        if (e.name == "and" || e.name == "or") {  // Python returns an operand, not a bool
          Value left = eval(*e.items[0], frame);
          if (left.truthy() == (e.name == "or")) return left;
          return eval(*e.items[1], frame);
        }
        const Value left = eval(*e.items[0], frame);
        const Value right = eval(*e.items[1], frame);
        return arithmetic(e.name, left, right);
      }
      case Expr::Kind::kCompare: {
        Value left = eval(*e.items[0], frame);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.items[i + 1], frame);
          const std::string& op = e.ops[i];
          bool r;
          if (op == "==") r = py_equal(left, right);
          else if (op == "!=") r = !py_equal(left, right);
          else if (op == "<") r = py_less(left, right);
          else if (op == ">") r = py_less(right, left);
          else if (op == "<=") r = !py_less(right, left);
          else if (op == ">=") r = !py_less(left, right);
          else if (op == "in") r = contains(right, left);
          else r = !contains(right, left);
          if ((op == "<" || op == ">" || op == "<=" || op == ">=") && (left.is_undefined() || right.is_undefined()))
            throw TemplateError("an undefined value cannot be compared");
          if (!r) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kCond:
        if (eval(*e.items[0], frame).truthy()) return eval(*e.items[1], frame);
        return e.items[2] ? eval(*e.items[2], frame) : Value::undefined("the inline if had no else branch");
      case Expr::Kind::kFilter: {
        const Value target = eval(*e.items[0], frame);
        return apply_filter(e.name, target, eval_args(e.args, frame));
      }
      case Expr::Kind::kTest: {
        const Value target = eval(*e.items[0], frame);
        const bool r = apply_test(e.name, target, eval_args(e.args, frame));
        return Value(r != e.negated);
      }
      case Expr::Kind::kCall: {
        const Value callee = eval(*e.items[0], frame);
        return call_value(callee, eval_args(e.args, frame));
      }
    }
    throw TemplateError("unknown expression");
  }

  const Dict& context_;
};

}  // namespace

std::string render_template(const Body& body, const Dict& context) { return Renderer(context).run(body); }

}  // namespace xy::chat
