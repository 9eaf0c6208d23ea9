// Runs a reference script (PyTorch forward, tokenizers.js, jinja2...) and parses its stdout as
// JSON; the tests compare xyserve against what it prints.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace xy::testing {

// Runs `cmd` with stderr to `err_path`; on success parses stdout into `out`. On failure returns
// false with the command, its exit status and its stderr in `error`.
inline bool run_json(const std::string& cmd, const std::filesystem::path& err_path,
                     nlohmann::json& out, std::string& error) {
  const std::string full = cmd + " 2>'" + err_path.string() + "'";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) {
    error = "popen failed: " + full;
    return false;
  }
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0) {
    std::ifstream err(err_path);
    std::stringstream ss;
    ss << err.rdbuf();
    error = "`" + full + "` exited with status " + std::to_string(status) + ":\n" + ss.str();
    return false;
  }
  try {
    out = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    error = "`" + full + "` printed no JSON: " + e.what();
    return false;
  }
  return true;
}

}  // namespace xy::testing
