// The hybrid attention launch (AttentionKernel::kHybrid, meta_attention_wgmma.cu): one launch whose
// blocks either run query tiles as the wgmma kernel does or, two decode CTAs a block, the small
// tiles as the decode kernel does. Against the CPU attention on random hybrid steps and on a step
// of long chunks among many decodes and verifies, at the split the backend's model picks and at
// its extremes (one tile SM; one decode SM); poisoned outputs, every element checked; the same bits
// run to run. Also the cost model's choices and the launcher's refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention_test_util.h"
#include "cuda/device_test_util.h"
#include "support/plan_builder.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/hybrid_split.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using attention_test::fill_inputs;
using attention_test::Problem;
using attention_test::random_hybrid_plan;
using attention_test::run_on_cpu;
using attention_test::run_on_device;

int num_sms() { return device_info(0).num_sms; }

// As the other attention tests: outputs are convex combinations of v in [-1, 1]; P and the output
// are rounded to bf16 (relative 2^-9 each).
bool close(float got, float want) { return std::isfinite(got) && std::fabs(got - want) <= 2.5e-3f + std::fabs(want) / 128; }

// The list of `p.plan` as the backend builds it for the hybrid launch: 128-row tiles, small tiles
// (at most kDecodeMaxRows rows) last.
meta::AttentionWorkList hybrid_list(const Problem& p, int32_t split) {
  meta::WorkListOptions options{128, split};
  options.small_tiles_last_rows = kDecodeMaxRows;
  return meta::build_attention_work_list(p.plan, {p.kv_heads * p.group, p.kv_heads, p.window}, options);
}

bool both_kinds(const meta::AttentionWorkList& list) {
  return list.num_large_tasks > 0 && list.num_large_tasks < int32_t(list.tasks.size());
}

// Runs `p` at each split in `tile_ctas` and checks every element; returns the largest error.
double check_splits(const Problem& p, const std::vector<float>& want, const std::vector<int32_t>& tile_ctas,
                    const std::string& what) {
  double max_err = 0;
  const size_t row_elems = size_t(p.kv_heads * p.group * p.hd);
  for (const int32_t split : tile_ctas) {
    const std::vector<uint16_t> got = run_on_device(p, AttentionKernel::kHybrid, -1, split);
    for (size_t i = 0; i < want.size(); ++i) {
      const float g = bf16_to_f32(got[i]);
      if (!close(g, want[i])) {
        ADD_FAILURE() << what << " tile_ctas " << split << " hd " << p.hd << " group " << p.group << " window "
                      << p.window << " block " << p.block_size << " element " << i << " (row " << i / row_elems
                      << ", head " << i % row_elems / size_t(p.hd) << "): got " << g << " want " << want[i] << "\n"
                      << p.plan << "\n" << p.list;
        return INFINITY;
      }
      max_err = std::max(max_err, double(std::fabs(g - want[i])));
    }
    EXPECT_EQ(run_on_device(p, AttentionKernel::kHybrid, -1, split), got)
        << what << " tile_ctas " << split << ": a second run gave other bits";
  }
  return max_err;
}

class AttentionHybrid : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }
};

TEST_F(AttentionHybrid, MatchesCpuOnRandomHybridStepsAtEverySplit) {
  std::mt19937 rng(81);
  double max_err = 0;
  int runs = 0;
  for (int trial = 0; runs < 24 && trial < 200; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = 128;
    p.kv_heads = 1 + int32_t(rng() % 3);
    p.group = std::vector<int32_t>{1, 4, 8, 16}[size_t(rng() % 4)];
    p.block_size = std::vector<int32_t>{8, 16, 32, 64}[size_t(rng() % 4)];
    p.window = trial % 4 == 3 ? 30 + int32_t(rng() % 200) : 0;
    p.num_blocks = 20000 / p.block_size;
    p.plan = random_hybrid_plan(rng, p.block_size, p.num_blocks);
    const int32_t split = trial % 3 == 2 ? p.block_size : 512 / p.block_size * p.block_size;
    p.list = hybrid_list(p, split);
    if (!both_kinds(p.list)) continue;  // the launcher runs one kernel then: the other tests' case
    ++runs;
    fill_inputs(p, rng);
    const std::vector<float> want = run_on_cpu(p);
    const int32_t model = hybrid_tile_ctas(p.list, {p.group, p.hd, num_sms(), p.window});
    const double err = check_splits(p, want, {model, 1, num_sms() - 1, 1 + int32_t(rng() % (num_sms() - 1))},
                                    cat("random trial ", trial, " split ", split));
    ASSERT_TRUE(std::isfinite(err));
    max_err = std::max(max_err, err);
  }
  EXPECT_EQ(runs, 24) << "too few random steps had tiles of both kinds";
  std::printf("[attention hybrid] %d steps, max abs error vs CPU %.3e\n", runs, max_err);
}

// Long chunks among a hundred decodes and verifies with up to two thousand keys: many small tiles
// a decode CTA, tree masks in both roles (verifies of 2-4 tokens are small at group 4, larger
// ones are tiles), windows, splits into partials that the merge folds across the two roles.
TEST_F(AttentionHybrid, MixesLongChunksWithManyDecodesAndVerifies) {
  std::mt19937 rng(82);
  for (int trial = 0; trial < 4; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = 128;
    p.kv_heads = 2;
    p.group = trial < 2 ? 4 : 8;
    p.window = trial == 3 ? 700 : 0;
    attention_test::mixed_step(p, rng, 100);
    fill_inputs(p, rng);
    std::vector<float> want;
    for (const int32_t split : {16384, 512}) {
      p.list = hybrid_list(p, split);
      ASSERT_TRUE(both_kinds(p.list));
      if (want.empty()) want = run_on_cpu(p);
      const int32_t model = hybrid_tile_ctas(p.list, {p.group, p.hd, num_sms(), p.window});
      ASSERT_TRUE(std::isfinite(check_splits(p, want, {model, 1, num_sms() - 1}, cat("mixed trial ", trial, " split ", split))));
    }
  }
}

// The model: more tile SMs finish the tiles sooner and the small tiles later; the choice is the
// best of the candidates; a lone decode beside a long prefill gets one SM.
TEST(HybridSplit, BalancesTheTwoRolesAndGivesALoneDecodeOneSm) {
  meta::StepPlan plan;
  plan.block_size = 16;
  std::vector<int32_t> pool(40000);
  std::iota(pool.begin(), pool.end(), 0);
  for (int64_t r = 0; r < 4; ++r) testing::append_request(plan, r, 1024, 1024, {}, pool);
  for (int64_t r = 4; r < 132; ++r) testing::append_request(plan, r, 2047, 1, {}, pool);
  meta::WorkListOptions options{128, 16384};
  options.small_tiles_last_rows = kDecodeMaxRows;
  const meta::AttentionWorkList list = meta::build_attention_work_list(plan, {32, 8, 0}, options);
  const HybridShape shape{4, 128, 132, 0};
  const int32_t best = hybrid_tile_ctas(list, shape);
  auto finish = [&](int32_t p) {
    const HybridEstimate e = estimate_hybrid_split(list, shape, p);
    return std::max(e.tile_us, e.decode_us);
  };
  for (int32_t p = 1; p < 131; ++p) {
    const HybridEstimate a = estimate_hybrid_split(list, shape, p), b = estimate_hybrid_split(list, shape, p + 1);
    EXPECT_GE(a.tile_us, b.tile_us) << p;
    EXPECT_LE(a.decode_us, b.decode_us) << p;
    EXPECT_LE(finish(best), finish(p)) << p;
  }
  EXPECT_GT(best, 20);
  EXPECT_LT(best, 120);

  meta::StepPlan lone;
  lone.block_size = 16;
  testing::append_request(lone, 0, 0, 8192, {}, pool);
  testing::append_request(lone, 1, 2047, 1, {}, pool);
  EXPECT_EQ(hybrid_tile_ctas(meta::build_attention_work_list(lone, {32, 8, 0}, options), shape), 131);
}

TEST_F(AttentionHybrid, RejectsWhatItCannotSplit) {
  AttentionArgs aa;
  aa.num_tasks = 4;
  aa.num_tile_tasks = 2;
  aa.group = 4;
  aa.block_size = 16;
  aa.head_dim = 128;
  aa.partial_rows = 128;
  aa.num_kv_heads = 1;
  const int32_t count = 4;
  aa.task_count = &count;  // a graph launch: the split needs the counts on the host
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kHybrid), InvalidArgument);
  aa.task_count = nullptr;
  aa.group = 32;  // every task over kDecodeMaxRows rows
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kHybrid), InvalidArgument);
  aa.group = 4;
  aa.num_tile_tasks = 5;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kHybrid), InvalidArgument);
}

}  // namespace
}  // namespace xy::cuda
