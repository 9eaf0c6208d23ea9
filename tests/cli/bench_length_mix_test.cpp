// `xyserve bench offline --length-mix`: the real binary on small CPU models; the lengths it reports
// (served prompt and output tokens per request) against the mix it was asked for.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "e2e/run_command.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;

class BenchLengthMixTest : public ::testing::Test {
 protected:
  // A 2-layer model with a 4096-token context (nothing of the mix is cut) and the demo's small
  // vocabulary, so a few hundred requests run in seconds on the CPU.
  static void SetUpTestSuite() {
    tiny_dir_ = fs::temp_directory_path() / ("xy_bench_mix_model_" + std::to_string(::getpid()));
    const CommandResult r =
        run_xyserve("make-model --arch llama --preset tiny --tokenizer " +
                    shell_quote(std::string(XY_SOURCE_DIR) + "/models/demo/tokenizer.json") + " --out " +
                    shell_quote(tiny_dir_.string()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(tiny_dir_); }

  // Runs `bench offline` with `args` and returns its --json output.
  static nlohmann::json bench(const std::string& model_dir, const std::string& args, CommandResult* result = nullptr) {
    const fs::path json = fs::temp_directory_path() / ("xy_bench_mix_" + std::to_string(::getpid()) + ".json");
    const CommandResult r = run_xyserve("bench offline --model " + shell_quote(model_dir) + " --threads 2 --json " +
                                        shell_quote(json.string()) + " " + args);
    if (result) *result = r;
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return {};
    const nlohmann::json j = nlohmann::json::parse(read_file(json));
    fs::remove(json);
    return j;
  }
  static fs::path tiny_dir_;
};
fs::path BenchLengthMixTest::tiny_dir_;

const std::string kDemoModel = std::string(XY_SOURCE_DIR) + "/models/demo";

TEST_F(BenchLengthMixTest, FixedMixServesTheRequestedLengths) {
  const nlohmann::json j = bench(tiny_dir_.string(), "--num-prompts 6 --input-len 24 --output-len 5");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["length_mix"], "fixed");
  EXPECT_EQ(j["mean_input_len"].get<double>(), 24.0);
  EXPECT_EQ(j["mean_output_len"].get<double>(), 5.0);
  EXPECT_EQ(j["max_total_len"].get<int64_t>(), 29);
  EXPECT_FALSE(j.contains("target_mean_input_len"));
}

// The mix is fitted so its mean lengths equal the published ShareGPT means the JSON reports as
// targets. The realised means of 20,000 draws must land within 4 standard errors of them: the
// assumed spreads give standard deviations of about 215 (prompt) and 186 (output) tokens, so 4
// standard errors are 6.1 and 5.3 tokens. Fitting the median instead of the mean misses by ~50.
TEST_F(BenchLengthMixTest, ShareGptMixMeansMatchThePublishedTargets) {
  const int n = 20000;
  const nlohmann::json j =
      bench(tiny_dir_.string(), "--num-prompts " + std::to_string(n) + " --length-mix sharegpt --seed 1 --dry-run");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["length_mix"], "sharegpt");
  EXPECT_EQ(j["num_requests"].get<int64_t>(), n);
  EXPECT_EQ(j["num_cut_to_context"].get<int64_t>(), 0);
  const double target_in = j["target_mean_input_len"].get<double>();
  const double target_out = j["target_mean_output_len"].get<double>();
  // ShareGPT's published means with a Llama-3.1 tokenizer are 214-230 (prompt), 198-203 (output).
  EXPECT_GT(target_in, 210.0);
  EXPECT_LT(target_in, 235.0);
  EXPECT_GT(target_out, 195.0);
  EXPECT_LT(target_out, 205.0);
  EXPECT_NEAR(j["mean_input_len"].get<double>(), target_in, 4 * 215 / std::sqrt(double(n)));
  EXPECT_NEAR(j["mean_output_len"].get<double>(), target_out, 4 * 186 / std::sqrt(double(n)));
  // The medians bench_command.cpp states for its assumed spreads (146 and 137: long tails, the
  // median well under the mean), within 5% (about 4 standard errors of a median of 20,000), and
  // the bounds of vLLM's ShareGPT sampling (4 to 1024 tokens).
  EXPECT_NEAR(j["input_len"]["p50"].get<double>(), 146.0, 0.05 * 146);
  EXPECT_NEAR(j["output_len"]["p50"].get<double>(), 137.0, 0.05 * 137);
  for (const char* name : {"input_len", "output_len"}) {
    EXPECT_LE(j[name]["max"].get<double>(), 1024.0) << name;
    EXPECT_GT(j[name]["max"].get<double>(), 1000.0) << name << ": the tail reaches the bound";
  }
}

// A seed fixes the requests, and the engine serves exactly the lengths drawn (the dry run reports
// the drawn lengths, a real run the served ones).
TEST_F(BenchLengthMixTest, ShareGptMixIsReproducibleAndServedAsDrawn) {
  const std::string args = "--num-prompts 32 --length-mix sharegpt";
  const nlohmann::json served = bench(tiny_dir_.string(), args + " --seed 5");
  const nlohmann::json drawn = bench(tiny_dir_.string(), args + " --seed 5 --dry-run");
  const nlohmann::json drawn_again = bench(tiny_dir_.string(), args + " --seed 5 --dry-run");
  const nlohmann::json other_seed = bench(tiny_dir_.string(), args + " --seed 6 --dry-run");
  ASSERT_FALSE(served.is_null() || drawn.is_null() || drawn_again.is_null() || other_seed.is_null());
  for (const char* key : {"input_len", "output_len", "max_total_len"}) {
    EXPECT_EQ(served[key], drawn[key]) << key;
    EXPECT_EQ(drawn[key], drawn_again[key]) << key;
  }
  EXPECT_EQ(served["input_tokens"].get<double>(), 32 * drawn["mean_input_len"].get<double>());
  EXPECT_NE(drawn["input_len"], other_seed["input_len"]);
}

// The demo model has a 1024-token context; the mix (up to 1024 + 1024) must be cut to it, and say so.
TEST_F(BenchLengthMixTest, ShareGptMixIsCutToTheModelContext) {
  CommandResult r;
  const nlohmann::json j = bench(kDemoModel, "--num-prompts 400 --length-mix sharegpt --seed 0 --dry-run", &r);
  ASSERT_FALSE(j.is_null());
  EXPECT_LE(j["max_total_len"].get<int64_t>(), 1024);
  EXPECT_EQ(j["max_total_len"].get<int64_t>(), 1024) << "some request should fill the context";
  EXPECT_GT(j["num_cut_to_context"].get<int64_t>(), 0);
  EXPECT_NE(r.err.find("max_position_embeddings"), std::string::npos) << r.err;
}

TEST_F(BenchLengthMixTest, BadMixesAreUsageErrors) {
  EXPECT_EQ(run_xyserve("bench offline --model " + shell_quote(tiny_dir_.string()) + " --length-mix uniform").exit_code,
            2);
  const fs::path dataset = fs::temp_directory_path() / ("xy_bench_mix_dataset_" + std::to_string(::getpid()));
  { std::ofstream(dataset) << R"([{"prompt_ids": [1, 2, 3], "output_len": 2}])"; }
  const CommandResult r = run_xyserve("bench offline --model " + shell_quote(tiny_dir_.string()) + " --dataset " +
                                      shell_quote(dataset.string()) + " --length-mix sharegpt");
  fs::remove(dataset);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--dataset"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace xy::testing
