// UTF-8 text helpers with Python str semantics: chat templates index, strip and case-map
// strings by code point, and jinja2 decides what is whitespace with str.isspace().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace xy::chat {

// Decodes UTF-8 into code points; an invalid byte decodes as itself (U+0080..U+00FF), so that
// every input round-trips through encode_utf8 without throwing mid-render.
std::u32string decode_utf8(std::string_view s);
std::string encode_utf8(std::u32string_view s);
void append_utf8(std::string& out, char32_t cp);
size_t count_code_points(std::string_view s);

// Python's str.isspace() for one code point (also what `\s` matches in Python's re).
bool is_py_space(char32_t cp);

// Python's str.strip/lstrip/rstrip: with chars == nullptr, strip whitespace; else strip any
// code point in *chars.
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right);
// Python's str.split(sep) (sep non-empty) and str.split() (sep == nullptr; runs of whitespace).
std::vector<std::string> py_split(std::string_view s, const std::string* sep, int64_t maxsplit);

// Case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (the scripts of the
// chat templates in use); other code points are left unchanged.
char32_t to_upper_cp(char32_t cp);
char32_t to_lower_cp(char32_t cp);
bool is_cased_letter(char32_t cp);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
// Python's str.capitalize() and str.title().
std::string py_capitalize(std::string_view s);
std::string py_title(std::string_view s);

// Python's repr() of a str: single quotes unless the text holds ' and no ", escapes for
// backslash, quotes, \n \r \t, other control or non-printable code points as \xNN/\uNNNN.
std::string py_repr_string(std::string_view s);

// Python's repr() of a float: shortest round-trip digits, exponent form outside [1e-4, 1e16).
std::string py_repr_float(double x);

}  // namespace xy::chat
