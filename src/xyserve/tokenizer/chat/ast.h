// The syntax tree of a parsed chat template. Nodes own their children; the tree is immutable
// after parsing, so one ChatTemplate renders from many threads at once.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "xyserve/tokenizer/chat/value.h"

namespace xy::chat {

struct SourcePos {
  int line = 0;
  int col = 0;
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Args {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct Expr {
  enum class Kind {
    kLiteral,   // value
    kName,      // name
    kList,      // items
    kTuple,     // items
    kDict,      // items: key0, value0, key1, value1, ...
    kGetAttr,   // items[0] . name
    kGetItem,   // items[0] [ items[1] ]
    kSlice,     // items[0] [ items[1] : items[2] : items[3] ] (absent bounds are null)
    kUnary,     // op items[0]; op is "not", "-" or "+"
    kBinary,    // items[0] op items[1]; op is an arithmetic operator, "~", "and" or "or"
    kCompare,   // items[0] ops[0] items[1] ops[1] items[2] ... (chained like Python)
    kCond,      // items[1] if items[0] else items[2] (items[2] may be null)
    kFilter,    // items[0] | name(args); items[0] is null inside a filter block chain
    kTest,      // items[0] is [not] name(args); negated
    kCall,      // items[0](args)
  };
  Kind kind;
  SourcePos pos;
  Value value;
  std::string name;  // name, attribute, operator, filter or test
  std::vector<std::string> ops;
  std::vector<ExprPtr> items;
  Args args;
  bool negated = false;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

// An assignment target: a name, a tuple of names (`for k, v in ...`), or `ns.attr`.
struct Target {
  std::vector<std::string> names;
  bool is_tuple = false;
  std::string attr;  // non-empty for `set ns.attr = ...` (names holds the namespace's name)
};

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null when required
};

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // conds[i] -> bodies[i]; else_body
    kFor,       // for target in expr [if cond]: bodies[0]; else_body
    kSet,       // set target = expr
    kSetBlock,  // set target [| filters] %} bodies[0] {% endset
    kMacro,     // macro name(params): bodies[0]
    kCallBlock, // call(params) expr: bodies[0] is the caller
    kFilterBlock,  // filter filters: bodies[0]
    kBreak,
    kContinue,
    kScope,     // bodies[0] rendered in place (transformers' {% generation %})
  };
  Kind kind;
  SourcePos pos;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  Body else_body;
  Target target;
  std::string name;
  std::vector<MacroParam> params;
  std::vector<ExprPtr> filters;  // kFilter exprs whose items[0] is null
};

// Parses the tokens of lex_template into statements. Throws xy::Error with line:col for any
// construct the renderer does not support, an unknown filter or test, or a syntax error.
Body parse_template(std::string_view source);

}  // namespace xy::chat
