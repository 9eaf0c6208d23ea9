// Splits a chat template into tokens the way jinja2's lexer does under transformers' settings
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False): template text with the
// whitespace control of `-`/`+` and of trim/lstrip already applied, then the tokens of each
// `{{ }}` and `{% %}` tag. Comments vanish; `{% raw %}` bodies become text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace xy::chat {

enum class TokenType : uint8_t {
  kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof
};

struct Token {
  TokenType type;
  std::string text;  // text, name, decoded string literal, operator, or the number's spelling
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
  int col = 1;
};

// Throws xy::Error "chat template L:C: ..." on a malformed template (unterminated tag,
// string or comment; a character that starts no token).
std::vector<Token> lex_template(std::string_view source);

}  // namespace xy::chat
