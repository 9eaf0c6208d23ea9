// A compiled PCRE2 pattern (UTF + UCP, JIT when available) shared read-only across threads.
// Hugging Face compiles tokenizer.json patterns with Oniguruma; PCRE2 with UCP gives the same
// classes for \p{L}, \p{N}, \s (incl. U+0085, not U+FEFF) and supports (?i:...) and (?!\S).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace xy::tokenizer {

struct JsonPath;

class Regex {
 public:
  // Throws xy::ModelError naming `at` when the pattern does not compile.
  Regex(const std::string& pattern, const JsonPath& at);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of the successive non-overlapping, non-empty matches in text,
  // appended to out. Precondition: text is valid UTF-8. Thread-safe.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xy::tokenizer
