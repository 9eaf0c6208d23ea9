#include "xyserve/tokenizer/chat/lexer.h"

#include <cerrno>
#include <cstdlib>

#include "xyserve/common/error.h"
#include "xyserve/tokenizer/chat/text.h"

namespace xy::chat {
namespace {

// jinja2 joins the template's lines with "\n" (any of \r\n, \r, \n ends a line) and, without
// keep_trailing_newline, drops one final newline.
std::string normalize_newlines(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out.push_back(src[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Decodes the code point at s[pos]; *len receives its byte length.
char32_t code_point_at(std::string_view s, size_t pos, size_t* len) {
  const std::u32string one = decode_utf8(s.substr(pos, std::min<size_t>(4, s.size() - pos)));
  const char32_t cp = one.empty() ? 0 : one[0];
  std::string enc;
  append_utf8(enc, cp);
  *len = (cp >= 0x80 && cp <= 0xFF && static_cast<unsigned char>(s[pos]) == cp) ? 1 : enc.size();
  return cp;
}

size_t skip_space(std::string_view s, size_t pos) {
  while (pos < s.size()) {
    size_t len;
    if (!is_py_space(code_point_at(s, pos, &len))) break;
    pos += len;
  }
  return pos;
}

bool all_space(std::string_view s) {
  if (s.empty()) return false;
  return skip_space(s, 0) == s.size();
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize_newlines(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      // The earliest of "{{", "{%", "{#" opens the next tag.
      size_t hit = std::string::npos;
      for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
        if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
          hit = i;
          break;
        }
      }
      if (hit == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      const char kind = src_[hit + 1];
      size_t after = hit + 2;
      const char sign = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
      if (sign) ++after;
      emit_text(control_text(src_.substr(pos, hit - pos), sign, kind != '{', line_starting), pos);
      if (kind == '#') {
        pos = lex_comment(after, hit);
      } else if (kind == '%' && is_raw_begin(after, &pos)) {
        pos = lex_raw(pos, hit);
      } else {
        pos = lex_tag(after, hit, kind == '%');
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    tokens_.push_back(Token{TokenType::kEof, "", 0, 0, line_of(src_.size()), col_of(src_.size())});
    return std::move(tokens_);
  }

 private:
  int line_of(size_t pos) const {
    size_t lo = 0, hi = line_starts_.size();
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      (line_starts_[mid] <= pos ? lo : hi) = mid;
    }
    return static_cast<int>(lo) + 1;
  }
  int col_of(size_t pos) const {
    return static_cast<int>(pos - line_starts_[static_cast<size_t>(line_of(pos)) - 1]) + 1;
  }

  [[noreturn]] void fail(size_t pos, const std::string& msg) const {
    throw Error(cat("chat template ", line_of(pos), ":", col_of(pos), ": ", msg));
  }

  // Whitespace control of the text before a tag: '-' strips all trailing whitespace; with
  // lstrip_blocks, a block or comment tag preceded on its line only by whitespace takes that
  // whitespace away (jinja2's OptionalLStrip rule); '+' keeps everything.
  static std::string control_text(std::string_view text, char sign, bool is_block, bool line_starting) {
    if (sign == '-') return py_strip(text, nullptr, false, true);
    if (sign != '+' && is_block) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) && all_space(text.substr(l_pos))) return std::string(text.substr(0, l_pos));
    }
    return std::string(text);
  }

  void emit_text(std::string text, size_t pos) {
    if (text.empty()) return;
    tokens_.push_back(Token{TokenType::kText, std::move(text), 0, 0, line_of(pos), col_of(pos)});
  }

  // Matches the end of a block or comment: "+%}" keeps what follows, "-%}" eats all following
  // whitespace, "%}" eats one newline (trim_blocks). Returns the position after it, or npos.
  size_t match_block_end(size_t pos, char close) const {
    auto at = [&](size_t p, char c) { return p < src_.size() && src_[p] == c; };
    if ((at(pos, '+') || at(pos, '-')) && at(pos + 1, close) && at(pos + 2, '}')) {
      return at(pos, '-') ? skip_space(src_, pos + 3) : pos + 3;
    }
    if (at(pos, close) && at(pos + 1, '}')) return pos + 2 + (at(pos + 2, '\n') ? 1 : 0);
    return std::string::npos;
  }

  size_t lex_comment(size_t pos, size_t open) {
    for (size_t p = pos; p < src_.size(); ++p) {
      const size_t end = match_block_end(p, '#');
      if (end != std::string::npos) return end;
    }
    fail(open, "missing end of comment tag");
  }

  // "{%" sign? ws* "raw" ws* ("-%}" ws* | "%}")
  bool is_raw_begin(size_t pos, size_t* end) const {
    size_t p = skip_space(src_, pos);
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_name_char(src_[p + 3]))) return false;
    p = skip_space(src_, p + 3);
    if (src_.compare(p, 3, "-%}") == 0) {
      *end = skip_space(src_, p + 3);
      return true;
    }
    if (src_.compare(p, 2, "%}") == 0) {
      *end = p + 2;
      return true;
    }
    return false;
  }

  size_t lex_raw(size_t pos, size_t open) {
    for (size_t p = src_.find("{%", pos); p != std::string::npos; p = src_.find("{%", p + 1)) {
      size_t q = p + 2;
      const char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      q = skip_space(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q = skip_space(src_, q + 6);
      const size_t end = match_block_end(q, '%');
      if (end == std::string::npos) continue;
      const bool line_starting = pos > 0 && src_[pos - 1] == '\n';
      emit_text(control_text(src_.substr(pos, p - pos), sign, true, line_starting), pos);
      return end;
    }
    fail(open, "missing end of raw directive");
  }

  size_t lex_tag(size_t pos, size_t open, bool is_block) {
    tokens_.push_back(Token{is_block ? TokenType::kBlockBegin : TokenType::kVarBegin, is_block ? "{%" : "{{",
                            0, 0, line_of(open), col_of(open)});
    std::vector<char> brackets;  // the end tag only counts with brackets balanced, as in jinja2
    while (true) {
      pos = skip_space(src_, pos);
      if (pos >= src_.size()) fail(open, cat("unexpected end of template: missing ", is_block ? "'%}'" : "'}}'"));
      if (brackets.empty()) {
        size_t end = std::string::npos;
        if (is_block) {
          end = match_block_end(pos, '%');
        } else if (src_.compare(pos, 3, "-}}") == 0) {
          end = skip_space(src_, pos + 3);
        } else if (src_.compare(pos, 2, "}}") == 0) {
          end = pos + 2;
        }
        if (end != std::string::npos) {
          tokens_.push_back(Token{is_block ? TokenType::kBlockEnd : TokenType::kVarEnd, "", 0, 0, line_of(pos),
                                  col_of(pos)});
          return end;
        }
      }
      pos = lex_expression_token(pos, &brackets);
    }
  }

  size_t lex_expression_token(size_t pos, std::vector<char>* brackets) {
    const char c = src_[pos];
    Token tok{TokenType::kOp, "", 0, 0, line_of(pos), col_of(pos)};
    if (is_digit(c)) return lex_number(pos, tok);
    if (is_name_start(c)) {
      size_t e = pos;
      while (e < src_.size() && is_name_char(src_[e])) ++e;
      tok.type = TokenType::kName;
      tok.text = src_.substr(pos, e - pos);
      tokens_.push_back(std::move(tok));
      return e;
    }
    if (c == '\'' || c == '"') return lex_string(pos, tok);
    static const char* const kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kOps2) {
      if (src_.compare(pos, 2, op) == 0) {
        tok.text = op;
        tokens_.push_back(std::move(tok));
        return pos + 2;
      }
    }
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
      size_t len;
      std::string ch;
      append_utf8(ch, code_point_at(src_, pos, &len));
      fail(pos, cat("unexpected character '", ch, "' in tag"));
    }
    if (c == '(' || c == '[' || c == '{') brackets->push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets->empty()) fail(pos, cat("unexpected '", c, "'"));
      if (brackets->back() != c) fail(pos, cat("unexpected '", c, "', expected '", brackets->back(), "'"));
      brackets->pop_back();
    }
    tok.text = std::string(1, c);
    tokens_.push_back(std::move(tok));
    return pos + 1;
  }

  // Digits with optional '_' separators; a float has a fraction and/or an exponent.
  size_t lex_number(size_t pos, Token& tok) {
    auto digits = [&](size_t p) {
      const size_t start = p;
      while (p < src_.size() && (is_digit(src_[p]) || (src_[p] == '_' && p > start && p + 1 < src_.size() &&
                                                       is_digit(src_[p + 1]))))
        ++p;
      return p;
    };
    size_t e = digits(pos);
    bool is_float = false;
    const bool after_dot = pos > 0 && src_[pos - 1] == '.';  // `x.0.1` is two subscripts
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' && is_digit(src_[e + 1])) {
      e = digits(e + 1);
      is_float = true;
    }
    if (!after_dot && e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t p = e + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && is_digit(src_[p])) {
        e = digits(p);
        is_float = true;
      }
    }
    std::string spelled;
    for (size_t i = pos; i < e; ++i)
      if (src_[i] != '_') spelled.push_back(src_[i]);
    tok.text = src_.substr(pos, e - pos);
    errno = 0;
    if (is_float) {
      tok.type = TokenType::kFloat;
      tok.float_value = std::strtod(spelled.c_str(), nullptr);
    } else {
      if (spelled.size() > 1 && spelled[0] == '0' && spelled.find_first_not_of('0') != std::string::npos)
        fail(pos, cat("invalid integer literal '", tok.text, "'"));
      tok.type = TokenType::kInt;
      tok.int_value = std::strtoll(spelled.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(pos, cat("integer literal '", tok.text, "' does not fit in 64 bits"));
    }
    tokens_.push_back(std::move(tok));
    return e;
  }

  // Decodes like Python's "unicode-escape" codec, which jinja2 applies to string literals.
  size_t lex_string(size_t pos, Token& tok) {
    const char quote = src_[pos];
    std::string out;
    size_t p = pos + 1;
    while (true) {
      if (p >= src_.size()) fail(pos, "unterminated string literal");
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) fail(pos, "unterminated string literal");
      const char e = src_[p + 1];
      p += 2;
      auto hex = [&](int n) {
        char32_t v = 0;
        for (int k = 0; k < n; ++k, ++p) {
          const char h = p < src_.size() ? src_[p] : 0;
          int d = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
          if (d < 0) fail(pos, cat("truncated \\", e, " escape in string literal"));
          v = v * 16 + static_cast<char32_t>(d);
        }
        return v;
      };
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x': append_utf8(out, hex(2)); break;
        case 'u': append_utf8(out, hex(4)); break;
        case 'U': {
          const char32_t v = hex(8);
          if (v > 0x10FFFF) fail(pos, "illegal \\U escape in string literal");
          append_utf8(out, v);
          break;
        }
        case 'N': fail(pos, "\\N{...} escapes in string literals are not supported");
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k, ++p)
              v = v * 8 + static_cast<char32_t>(src_[p] - '0');
            append_utf8(out, v);
          } else {
            out.push_back('\\');  // unknown escapes stay as written
            out.push_back(e);
          }
      }
    }
    tok.type = TokenType::kString;
    tok.text = std::move(out);
    tokens_.push_back(std::move(tok));
    return p + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex_template(std::string_view source) { return Lexer(source).run(); }

}  // namespace xy::chat
