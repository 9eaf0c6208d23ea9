// UTF-8 helpers shared by the tokenizer stages: lossy repair of invalid input, code point
// iteration, Unicode classes that the Hugging Face pipeline relies on, and the GPT-2
// byte-to-character table of byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace xy::tokenizer::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;

// Length of the longest prefix of s[i..] that is one well-formed UTF-8 sequence, or 0 when
// the byte at i cannot start one or the sequence is broken/truncated. Precondition: i < s.size().
size_t valid_sequence_length(std::string_view s, size_t i);

// True when every byte sequence in s is well-formed UTF-8 (no surrogates, no overlongs).
bool is_valid(std::string_view s);

// Replaces each maximal ill-formed subpart with U+FFFD, as Python's
// bytes.decode("utf-8", errors="replace") and Rust's String::from_utf8_lossy do (Unicode
// "substitution of maximal subparts"). Valid input comes back unchanged.
std::string repair(std::string_view s);

// Number of trailing bytes of s that form a well-formed but truncated UTF-8 sequence (a
// sequence that more bytes could still complete); 0 when s ends on a character boundary or
// with bytes no continuation could make valid.
size_t incomplete_tail_length(std::string_view s);

// Decodes the code point at s[i] and advances i. Precondition: s is valid UTF-8, i < size.
char32_t next(std::string_view s, size_t& i);

// Appends the UTF-8 encoding of cp.
void append(std::string& out, char32_t cp);

// Unicode White_Space property (what Rust's char::is_whitespace tests).
bool is_whitespace(char32_t cp);

// Regex \w as Rust's regex crate defines it: alphabetic, marks, decimal digits, connector
// punctuation.
bool is_word_char(char32_t cp);

// GPT-2's reversible byte <-> printable character map used by the ByteLevel pre-tokenizer
// and decoder: printable Latin-1 bytes map to themselves, the rest to U+0100 upward.
class ByteLevelTable {
 public:
  static const ByteLevelTable& get();
  // UTF-8 encoding of the character that stands for byte b.
  std::string_view encode(uint8_t b) const { return {encoded_[b].data(), length_[b]}; }
  // The byte that code point cp stands for, or -1 when cp is not in the table.
  int decode(char32_t cp) const { return cp < decoded_.size() ? decoded_[cp] : -1; }

 private:
  ByteLevelTable();
  std::array<std::array<char, 2>, 256> encoded_{};
  std::array<uint8_t, 256> length_{};
  std::array<int16_t, 512> decoded_{};
};

}  // namespace xy::tokenizer::utf8
