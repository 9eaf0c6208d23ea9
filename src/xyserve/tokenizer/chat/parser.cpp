// Recursive-descent parser following jinja2's grammar (jinja2/parser.py): the same operator
// precedence, the same places where tuples and inline if-expressions are allowed, the same
// statement forms. What it does not support fails here, at start-up, with line:col.
#include <string_view>

#include "xyserve/common/error.h"
#include "xyserve/tokenizer/chat/ast.h"
#include "xyserve/tokenizer/chat/builtins.h"
#include "xyserve/tokenizer/chat/lexer.h"

namespace xy::chat {
namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Body parse_all() {
    Body body = subparse({});
    if (cur().type != TokenType::kEof) fail(cur(), cat("unexpected '", cur().text, "'"));
    return body;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& look() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(std::string_view op) const { return cur().type == TokenType::kOp && cur().text == op; }
  bool is_name(std::string_view n) const { return cur().type == TokenType::kName && cur().text == n; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::kEof: return "end of template";
      case TokenType::kBlockEnd: return "end of statement block";
      case TokenType::kVarEnd: return "end of print statement";
      case TokenType::kText: return "template text";
      case TokenType::kString: return "string literal";
      default: return cat("'", t.text, "'");
    }
  }
  [[noreturn]] static void fail(const Token& t, const std::string& msg) {
    throw Error(cat("chat template ", t.line, ":", t.col, ": ", msg));
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) fail(cur(), cat("expected '", op, "', got ", describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != TokenType::kName) fail(cur(), cat("expected a name, got ", describe(cur())));
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != TokenType::kBlockEnd) fail(cur(), cat("expected end of statement block, got ", describe(cur())));
    next();
  }
  static SourcePos pos_of(const Token& t) { return SourcePos{t.line, t.col}; }

  ExprPtr make(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos_of(at);
    return e;
  }

  // ---- statements ----

  // Parses until a block tag whose name is one of end_names; leaves that name current.
  Body subparse(const std::vector<std::string_view>& end_names) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::kEof) {
        if (!end_names.empty()) {
          std::string want;
          for (auto n : end_names) want += cat(want.empty() ? "" : " or ", "'", n, "'");
          fail(t, cat("unexpected end of template; expected ", want));
        }
        return body;
      }
      if (t.type == TokenType::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->pos = pos_of(t);
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == TokenType::kVarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->pos = pos_of(t);
        s->expr = parse_tuple(true, {}, false);
        if (cur().type != TokenType::kVarEnd) fail(cur(), cat("expected end of print statement, got ", describe(cur())));
        next();
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        next();
        for (auto n : end_names)
          if (is_name(n)) return body;
        body.push_back(parse_statement());
        expect_block_end();
      } else {
        fail(t, cat("unexpected ", describe(t)));
      }
    }
  }

  Body parse_statements(const std::vector<std::string_view>& end_names, bool drop_needle) {
    expect_block_end();
    Body body = subparse(end_names);
    if (drop_needle) next();
    return body;
  }

  std::unique_ptr<Stmt> parse_statement() {
    const Token& t = cur();
    if (t.type != TokenType::kName) fail(t, cat("expected a statement name, got ", describe(t)));
    auto s = std::make_unique<Stmt>();
    s->pos = pos_of(t);
    const std::string word = t.text;
    next();
    if (word == "if") return parse_if(std::move(s));
    if (word == "for") return parse_for(std::move(s));
    if (word == "set") return parse_set(std::move(s));
    if (word == "macro") return parse_macro(std::move(s));
    if (word == "call") return parse_call_block(std::move(s));
    if (word == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      s->filters = parse_filter_chain(nullptr, true);
      s->bodies.push_back(parse_statements({"endfilter"}, true));
      return s;
    }
    if (word == "break" || word == "continue") {
      if (loop_depth_ == 0) fail(t, cat("'", word, "' outside of a loop"));
      s->kind = word == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      return s;
    }
    if (word == "generation") {  // transformers' AssistantTracker extension: renders its body
      s->kind = Stmt::Kind::kScope;
      s->bodies.push_back(parse_statements({"endgeneration"}, true));
      return s;
    }
    static const char* const kKnownUnsupported[] = {"include", "extends", "block", "import", "from", "with",
                                                    "autoescape", "print", "do", "trans", "raw"};
    for (const char* k : kKnownUnsupported)
      if (word == k) fail(t, cat("the '", word, "' tag is not supported by xyserve's chat template renderer"));
    fail(t, cat("unknown tag '", word, "'"));
  }

  std::unique_ptr<Stmt> parse_if(std::unique_ptr<Stmt> s) {
    s->kind = Stmt::Kind::kIf;
    while (true) {
      s->conds.push_back(parse_tuple(false, {}, false));
      s->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
      const std::string word = cur().text;
      next();
      if (word == "elif") continue;
      if (word == "else") s->else_body = parse_statements({"endif"}, true);
      return s;
    }
  }

  std::unique_ptr<Stmt> parse_for(std::unique_ptr<Stmt> s) {
    s->kind = Stmt::Kind::kFor;
    s->target = parse_assign_target(false);
    if (!skip_name("in")) fail(cur(), cat("expected 'in', got ", describe(cur())));
    s->expr = parse_tuple(false, {"recursive"}, false);
    if (skip_name("if")) s->cond = parse_expression(true);
    if (is_name("recursive")) fail(cur(), "recursive for loops are not supported");
    ++loop_depth_;
    s->bodies.push_back(parse_statements({"endfor", "else"}, false));
    --loop_depth_;
    const std::string word = cur().text;
    next();
    if (word == "else") s->else_body = parse_statements({"endfor"}, true);
    return s;
  }

  std::unique_ptr<Stmt> parse_set(std::unique_ptr<Stmt> s) {
    s->target = parse_assign_target(true);
    if (skip_op("=")) {
      s->kind = Stmt::Kind::kSet;
      s->expr = parse_tuple(true, {}, false);
      return s;
    }
    if (!s->target.attr.empty() || s->target.is_tuple)
      fail(cur(), "a block set assigns to a single name");
    s->kind = Stmt::Kind::kSetBlock;
    if (is_op("|")) s->filters = parse_filter_chain(nullptr, false);
    s->bodies.push_back(parse_statements({"endset"}, true));
    return s;
  }

  void parse_signature(std::vector<MacroParam>* params) {
    expect_op("(");
    while (!is_op(")")) {
      if (!params->empty()) expect_op(",");
      MacroParam p;
      p.name = expect_name();
      if (skip_op("=")) {
        p.default_value = parse_expression(true);
      } else if (!params->empty() && params->back().default_value) {
        fail(cur(), "non-default argument follows default argument");
      }
      params->push_back(std::move(p));
    }
    expect_op(")");
  }

  std::unique_ptr<Stmt> parse_macro(std::unique_ptr<Stmt> s) {
    s->kind = Stmt::Kind::kMacro;
    s->name = expect_name();
    parse_signature(&s->params);
    const int saved = loop_depth_;
    loop_depth_ = 0;  // a macro body is not inside the caller's loop
    s->bodies.push_back(parse_statements({"endmacro"}, true));
    loop_depth_ = saved;
    return s;
  }

  std::unique_ptr<Stmt> parse_call_block(std::unique_ptr<Stmt> s) {
    s->kind = Stmt::Kind::kCallBlock;
    if (is_op("(")) parse_signature(&s->params);
    const Token& at = cur();
    s->expr = parse_expression(true);
    if (s->expr->kind != Expr::Kind::kCall) fail(at, "expected a call after 'call'");
    const int saved = loop_depth_;
    loop_depth_ = 0;
    s->bodies.push_back(parse_statements({"endcall"}, true));
    loop_depth_ = saved;
    return s;
  }

  Target parse_assign_target(bool with_namespace) {
    Target target;
    if (with_namespace && cur().type == TokenType::kName && look().type == TokenType::kOp && look().text == ".") {
      target.names.push_back(expect_name());
      next();
      target.attr = expect_name();
      return target;
    }
    const bool paren = skip_op("(");
    while (true) {
      if (cur().type != TokenType::kName) fail(cur(), cat("expected an assignment target name, got ", describe(cur())));
      static const char* const kReserved[] = {"true", "false", "none", "True", "False", "None"};
      for (const char* r : kReserved)
        if (cur().text == r) fail(cur(), cat("cannot assign to '", r, "'"));
      target.names.push_back(expect_name());
      if (!skip_op(",")) break;
      target.is_tuple = true;
      if (!(cur().type == TokenType::kName) || is_name("in")) break;
    }
    if (paren) {
      expect_op(")");
      target.is_tuple = true;
    }
    return target;
  }

  // ---- expressions ----

  bool is_tuple_end(const std::vector<std::string_view>& extra_end) const {
    if (cur().type == TokenType::kVarEnd || cur().type == TokenType::kBlockEnd || is_op(")")) return true;
    for (auto n : extra_end)
      if (is_name(n)) return true;
    return false;
  }

  ExprPtr parse_tuple(bool with_condexpr, const std::vector<std::string_view>& extra_end, bool explicit_parens) {
    const Token& start = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail(cur(), cat("expected an expression, got ", describe(cur())));
    }
    auto e = make(Expr::Kind::kTuple, start);
    e->items = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    ExprPtr expr1 = parse_or();
    while (is_name("if")) {
      const Token& at = cur();
      next();
      ExprPtr test = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_condexpr() : nullptr;
      auto e = make(Expr::Kind::kCond, at);
      e->items.push_back(std::move(test));
      e->items.push_back(std::move(expr1));
      e->items.push_back(std::move(otherwise));
      expr1 = std::move(e);
    }
    return expr1;
  }

  ExprPtr binary(const Token& at, std::string op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Kind::kBinary, at);
    e->name = std::move(op);
    e->items.push_back(std::move(a));
    e->items.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      next();
      left = binary(at, "or", std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      next();
      left = binary(at, "and", std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token at = cur();
      next();
      auto e = make(Expr::Kind::kUnary, at);
      e->name = "not";
      e->items.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = cur();
    ExprPtr first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> rest;
    while (true) {
      if (cur().type == TokenType::kOp &&
          (is_op("==") || is_op("!=") || is_op("<") || is_op("<=") || is_op(">") || is_op(">="))) {
        ops.push_back(cur().text);
        next();
      } else if (is_name("in")) {
        ops.push_back("in");
        next();
      } else if (is_name("not") && look().type == TokenType::kName && look().text == "in") {
        ops.push_back("not in");
        next();
        next();
      } else {
        break;
      }
      rest.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = make(Expr::Kind::kCompare, at);
    e->ops = std::move(ops);
    e->items.push_back(std::move(first));
    for (auto& r : rest) e->items.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      next();
      left = binary(at, at.text, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      next();
      left = binary(at, "~", std::move(left), parse_math2());
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = cur();
      next();
      left = binary(at, at.text, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const Token at = cur();
      next();
      left = binary(at, "**", std::move(left), parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token at = cur();
      next();
      node = make(Expr::Kind::kUnary, at);
      node->name = at.text;
      node->items.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case TokenType::kName: {
        next();
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = make(Expr::Kind::kLiteral, t);
          e->value = Value(t.text == "true" || t.text == "True");
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = make(Expr::Kind::kLiteral, t);
          e->value = Value::none();
          return e;
        }
        auto e = make(Expr::Kind::kName, t);
        e->name = t.text;
        return e;
      }
      case TokenType::kString: {
        std::string s;
        while (cur().type == TokenType::kString) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value(std::move(s));
        return e;
      }
      case TokenType::kInt:
      case TokenType::kFloat: {
        next();
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = t.type == TokenType::kInt ? Value(t.int_value) : Value(t.float_value);
        return e;
      }
      case TokenType::kOp:
        if (t.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, {}, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[" || t.text == "{") return parse_collection(t.text == "{");
        [[fallthrough]];
      default:
        fail(t, cat("unexpected ", describe(t)));
    }
  }

  ExprPtr parse_collection(bool is_dict) {
    const Token at = cur();
    next();
    auto e = make(is_dict ? Expr::Kind::kDict : Expr::Kind::kList, at);
    const char* close = is_dict ? "}" : "]";
    while (!is_op(close)) {
      if (!e->items.empty()) expect_op(",");
      if (is_op(close)) break;
      e->items.push_back(parse_expression(true));
      if (is_dict) {
        expect_op(":");
        e->items.push_back(parse_expression(true));
      }
    }
    expect_op(close);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filters_on(std::move(node));
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const Token at = cur();
    if (skip_op(".")) {
      const Token attr = cur();
      if (attr.type == TokenType::kName) {
        next();
        auto e = make(Expr::Kind::kGetAttr, at);
        e->name = attr.text;
        e->items.push_back(std::move(node));
        return e;
      }
      if (attr.type != TokenType::kInt) fail(attr, cat("expected a name or number after '.', got ", describe(attr)));
      next();
      auto idx = make(Expr::Kind::kLiteral, attr);
      idx->value = Value(attr.int_value);
      auto e = make(Expr::Kind::kGetItem, at);
      e->items.push_back(std::move(node));
      e->items.push_back(std::move(idx));
      return e;
    }
    expect_op("[");
    ExprPtr start, stop, step;
    bool is_slice = false;
    if (!is_op(":")) start = parse_expression(true);
    if (skip_op(":")) {
      is_slice = true;
      if (!is_op(":") && !is_op("]")) stop = parse_expression(true);
      if (skip_op(":") && !is_op("]")) step = parse_expression(true);
    }
    if (is_op(",")) fail(cur(), "subscripts with several indices (tuples of slices) are not supported");
    if (!start && !is_slice) fail(cur(), "expected an index");
    expect_op("]");
    auto e = make(is_slice ? Expr::Kind::kSlice : Expr::Kind::kGetItem, at);
    e->items.push_back(std::move(node));
    e->items.push_back(std::move(start));
    if (is_slice) {
      e->items.push_back(std::move(stop));
      e->items.push_back(std::move(step));
    }
    return e;
  }

  Args parse_call_args() {
    Args args;
    expect_op("(");
    bool require_comma = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail(cur(), "'*args' and '**kwargs' in calls are not supported");
      if (cur().type == TokenType::kName && look().type == TokenType::kOp && look().text == "=") {
        std::string key = cur().text;
        next();
        next();
        args.keyword.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!args.keyword.empty()) fail(cur(), "positional argument follows keyword argument");
        args.positional.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_op(")");
    return args;
  }

  ExprPtr parse_call(ExprPtr node) {
    const Token at = cur();
    auto e = make(Expr::Kind::kCall, at);
    e->args = parse_call_args();
    e->items.push_back(std::move(node));
    return e;
  }

  ExprPtr parse_one_filter(ExprPtr target) {
    const Token at = cur();
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += "." + expect_name();
    }
    if (!is_known_filter(name)) fail(at, cat("unknown filter '", name, "'"));
    auto e = make(Expr::Kind::kFilter, at);
    e->name = name;
    if (is_op("(")) e->args = parse_call_args();
    e->items.push_back(std::move(target));
    return e;
  }

  // `x | f(args) | g`: each filter applies to the result of the one before.
  ExprPtr parse_filters_on(ExprPtr node) {
    while (skip_op("|")) node = parse_one_filter(std::move(node));
    return node;
  }

  // The filters of `{% filter f | g %}` (start_inline: no leading '|') or `{% set x | f %}`,
  // each with a null target: the renderer feeds them the block's text in order.
  std::vector<ExprPtr> parse_filter_chain(std::nullptr_t, bool start_inline) {
    std::vector<ExprPtr> chain;
    if (start_inline) chain.push_back(parse_one_filter(nullptr));
    while (skip_op("|")) chain.push_back(parse_one_filter(nullptr));
    return chain;
  }

  ExprPtr parse_test(ExprPtr node) {
    const Token at = cur();
    next();  // 'is'
    const bool negated = skip_name("not");
    const Token name_tok = cur();
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += "." + expect_name();
    }
    if (!is_known_test(name)) fail(name_tok, cat("unknown test '", name, "'"));
    auto e = make(Expr::Kind::kTest, at);
    e->name = name;
    e->negated = negated;
    e->items.push_back(std::move(node));
    const TokenType t = cur().type;
    if (is_op("(")) {
      e->args = parse_call_args();
    } else if ((t == TokenType::kName || t == TokenType::kString || t == TokenType::kInt || t == TokenType::kFloat ||
                is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(cur(), "tests cannot be chained with 'is'");
      e->args.positional.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  std::vector<Token> toks_;
  size_t i_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(std::string_view source) { return Parser(lex_template(source)).parse_all(); }

}  // namespace xy::chat
