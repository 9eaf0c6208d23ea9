// Runs the real xyserve binary as a user would, capturing its exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace xy::testing {

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string xyserve_bin() {
  const char* bin = std::getenv("XYSERVE_BIN");
  return bin ? bin : std::string(XY_BINARY_DIR) + "/xyserve";
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// `args` is appended to the binary's path as it stands (quote arguments with shell_quote).
inline CommandResult run_xyserve(const std::string& args) {
  static int counter = 0;
  const auto dir = std::filesystem::temp_directory_path();
  const auto out = dir / ("xy_cmd_out_" + std::to_string(::getpid()) + "_" + std::to_string(counter));
  const auto err = dir / ("xy_cmd_err_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const std::string cmd = shell_quote(xyserve_bin()) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

}  // namespace xy::testing
