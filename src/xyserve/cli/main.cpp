// xyserve: an LLM serving engine. `xyserve <command> [flags]`.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "xyserve/cli/commands.h"
#include "xyserve/common/error.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>&);
};

constexpr Command kCommands[] = {
    {"generate", "generate text from a prompt, streamed to stdout", xy::cli::run_generate},
    {"make-model", "write a random-weight checkpoint in Hugging Face layout", xy::cli::run_make_model},
    {"serve", "serve a model over the OpenAI API (HTTP, SSE streaming)", xy::cli::run_serve},
    {"bench", "`bench offline`: the engine alone; `bench serve`: an OpenAI-compatible server", xy::cli::run_bench},
    {"tune", "measure the GEMM candidates for a model on this GPU and write the SmoothGEMM table", xy::cli::run_tune},
};

void print_usage(std::FILE* out) {
  std::fprintf(out, "usage: xyserve <command> [flags]\n\nxyserve is an LLM serving engine.\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
  std::fprintf(out, "\n`xyserve <command> --help` lists the flags of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    print_usage(stdout);
    return 0;
  }
  if (name == "--version") {
    std::printf("xyserve 0.1.0\n");
    return 0;
  }
  const std::vector<std::string> args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const xy::InvalidArgument& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 2;
    } catch (const xy::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "internal error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "xyserve: unknown command '%s'\n\n", name.c_str());
  print_usage(stderr);
  return 2;
}
