// The decode attention kernel (kernels/decode_attention.cu) against the CPU attention and the
// tensor-core kernel on random decode-only work lists: decodes over 1 to ~20k keys (block tails
// everywhere), chains and draft trees of up to 16 / group tokens, first tokens, sliding windows,
// GQA groups 1/4/7/8/16, head_dim 64 and 128, block sizes 8/16/32, lists split by the decode split
// rule, at 256 keys and at one block (many partials). Outputs and partials are poisoned with NaN
// before every run and every element is checked. Also: tiles of more than 16 rows (run in slabs),
// a graph-style launch (task count on the device, capacity past it), repeatability, what the
// launcher rejects, and the split rule (decode_split.h) against the work-list builder and the
// splits the bench measured best.
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
#include "xyserve/backend/cuda/decode_split.h"
#include "xyserve/backend/cuda/device.h"
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

class AttentionDecode : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }
};

// A random decode-only step for a GQA group of `group`: decodes over short, medium and long
// contexts, chains and draft trees of 2 to 16 / group tokens (when a tile holds 2), first tokens.
// Each request's block table is drawn from a shuffled pool; num_blocks is set to the pool's size.
meta::StepPlan random_decode_plan(std::mt19937& rng, int32_t block_size, int32_t group, int32_t& num_blocks) {
  struct Req {
    int32_t computed, num_new;
    bool tree;
  };
  const int32_t max_tokens = kDecodeMaxRows / group;
  std::vector<Req> reqs;
  int32_t total = 0;
  const int32_t num_req = 1 + int32_t(rng() % 10);
  for (int32_t r = 0; r < num_req; ++r) {
    // 0 short decode, 1 medium, 2 long, 3 tree verify, 4 chain verify, 5 first token
    int kind = int(rng() % 6);
    if (kind == 2 && total > 12000) kind = 1;
    if ((kind == 3 || kind == 4) && max_tokens < 2) kind = 0;
    Req q{0, 1, false};
    if (kind == 0) q.computed = int32_t(rng() % 300);
    if (kind == 1) q.computed = 300 + int32_t(rng() % 3000);
    if (kind == 2) q.computed = 3000 + int32_t(rng() % 17000);
    if (kind == 3 || kind == 4) {
      q.computed = int32_t(rng() % 2500);
      q.num_new = 2 + int32_t(rng() % uint32_t(max_tokens - 1));
      q.tree = kind == 3;
    }
    total += q.computed + q.num_new;
    reqs.push_back(q);
  }
  meta::StepPlan plan;
  plan.block_size = block_size;
  num_blocks = 0;
  for (const Req& q : reqs) num_blocks += (q.computed + q.num_new + block_size - 1) / block_size;
  num_blocks += 3;  // blocks no request owns
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  for (size_t r = 0; r < reqs.size(); ++r)
    xy::testing::append_request(plan, int64_t(r), reqs[r].computed, reqs[r].num_new,
                                reqs[r].tree ? xy::testing::random_tree(reqs[r].num_new, rng) : std::vector<int32_t>{},
                                pool);
  return plan;
}

int num_sms() { return device_info(0).num_sms; }

// Bound: outputs are convex combinations of v in [-1, 1]; P is rounded to bf16 before P V
// (relative 2^-9 per weight: at most 2^-9 absolute on the output) and the output to bf16
// (relative 2^-9); scores are exact products summed in fp32. As the tensor-core test.
float tolerance(float want) { return 2.5e-3f + std::fabs(want) / 128; }

TEST_F(AttentionDecode, MatchesCpuAndTensorCoreKernelOnRandomDecodeWorkLists) {
  std::mt19937 rng(61);
  double max_err_cpu = 0, max_err_tc = 0;
  int64_t partials = 0;
  for (int trial = 0; trial < 48; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.kv_heads = 1 + int32_t(rng() % 2);
    p.group = std::vector<int32_t>{1, 4, 7, 8, 16}[size_t(rng() % 5)];
    p.block_size = std::vector<int32_t>{8, 16, 32}[size_t(rng() % 3)];
    p.window = trial % 4 == 3 ? 30 + int32_t(rng() % 2000) : 0;
    p.tile_rows = kDecodeMaxRows;
    p.plan = random_decode_plan(rng, p.block_size, p.group, p.num_blocks);
    const int32_t heads = p.kv_heads * p.group;
    const int32_t tile_tokens = p.tile_rows / p.group;
    // The decode rule (on this device's SMs), 256 keys, or one block: many partials, spans that
    // start and end mid-chunk of the kernel's 16 keys when the block is 8.
    const int32_t split =
        trial % 3 == 0 ? decode_kv_split(p.plan, tile_tokens, {p.kv_heads, p.block_size, p.window, num_sms()})
        : trial % 3 == 1 ? std::max(p.block_size, 256 / p.block_size * p.block_size)
                         : p.block_size;
    ASSERT_EQ(split % p.block_size, 0);
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, split});
    ASSERT_NO_THROW(check_decode_work_list(p.list, p.group));
    partials += p.list.num_partials;
    fill_inputs(p, rng);

    const std::vector<float> want = run_on_cpu(p);
    const std::vector<uint16_t> got = run_on_device(p, AttentionKernel::kDecode);
    const std::vector<uint16_t> again = run_on_device(p, AttentionKernel::kDecode);
    const std::vector<uint16_t> tc = run_on_device(p, AttentionKernel::kTensorCore);
    ASSERT_EQ(got, again) << "trial " << trial << ": two runs of the same list differ";
    for (size_t i = 0; i < want.size(); ++i) {
      const float g = bf16_to_f32(got[i]), o = bf16_to_f32(tc[i]);
      const float tol = tolerance(want[i]);
      ASSERT_TRUE(std::isfinite(g) && std::fabs(g - want[i]) <= tol)
          << "trial " << trial << " hd " << p.hd << " group " << p.group << " window "
          << p.window << " block " << p.block_size << " split " << split << " element " << i << " (row "
          << i / size_t(heads * p.hd)
          << ", head " << i % size_t(heads * p.hd) / size_t(p.hd) << "): got " << g << " want " << want[i] << "\n"
          << p.plan << "\n" << p.list;
      // Both kernels are within their bound of the same reference: twice the bound apart.
      ASSERT_TRUE(std::isfinite(o) && std::fabs(g - o) <= 2 * tol)
          << "trial " << trial << " element " << i << ": decode " << g << ", tensor core " << o;
      max_err_cpu = std::max(max_err_cpu, double(std::fabs(g - want[i])));
      max_err_tc = std::max(max_err_tc, double(std::fabs(g - o)));
    }
  }
  EXPECT_GT(partials, 0);  // the lists did exercise partials and the merge
  std::printf("[attention decode] max abs error vs CPU %.3e, vs tensor-core kernel %.3e\n", max_err_cpu, max_err_tc);
}

// A list whose tiles hold up to 64 rows (prefill chunks, long verifies), which
// check_decode_work_list rejects: the kernel still computes it, 16 rows at a time.
TEST_F(AttentionDecode, RunsTilesOfMoreThan16RowsInSlabs) {
  std::mt19937 rng(62);
  int64_t big_tasks = 0;
  for (int trial = 0; trial < 12; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.kv_heads = 1 + int32_t(rng() % 2);
    p.group = std::vector<int32_t>{1, 4, 8}[size_t(rng() % 3)];
    p.block_size = std::vector<int32_t>{8, 16, 32}[size_t(rng() % 3)];
    p.window = trial % 4 == 3 ? 30 + int32_t(rng() % 200) : 0;
    p.num_blocks = 20000 / p.block_size;
    p.tile_rows = kAttentionTileRows;
    p.plan = random_hybrid_plan(rng, p.block_size, p.num_blocks);
    const int32_t heads = p.kv_heads * p.group;
    const int32_t split = trial % 2 ? p.block_size * 4 : 512;
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, split});
    for (const auto& t : p.list.tasks) big_tasks += t.q_count * p.group > kDecodeMaxRows;
    fill_inputs(p, rng);
    const std::vector<float> want = run_on_cpu(p);
    const std::vector<uint16_t> got = run_on_device(p, AttentionKernel::kDecode);
    for (size_t i = 0; i < want.size(); ++i) {
      const float g = bf16_to_f32(got[i]);
      ASSERT_TRUE(std::isfinite(g) && std::fabs(g - want[i]) <= tolerance(want[i]))
          << "trial " << trial << " hd " << p.hd << " group " << p.group << " window " << p.window << " element " << i
          << " (row " << i / size_t(heads * p.hd) << "): got " << g << " want " << want[i] << "\n"
          << p.plan << "\n" << p.list;
    }
  }
  EXPECT_GT(big_tasks, 0);
}

// CUDA graphs: the task count is read on the device and the tasks array holds more (tasks that
// would write wrong values if they ran: each cut to its span's first key). The result must be
// the plain launch's, bit for bit.
TEST_F(AttentionDecode, GraphStyleLaunchRunsTheDeviceCountOfTasksOnly) {
  std::mt19937 rng(63);
  for (int trial = 0; trial < 8; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.kv_heads = 1 + int32_t(rng() % 3);
    p.group = std::vector<int32_t>{1, 4, 8}[size_t(rng() % 3)];
    p.block_size = 16;
    p.tile_rows = kDecodeMaxRows;
    p.plan = random_decode_plan(rng, p.block_size, p.group, p.num_blocks);
    const int32_t heads = p.kv_heads * p.group;
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, 0}, {p.tile_rows, trial % 2 ? 64 : 256});
    fill_inputs(p, rng);
    const std::vector<uint16_t> plain = run_on_device(p, AttentionKernel::kDecode);
    const int32_t count = int32_t(p.list.tasks.size());
    for (int32_t i = 0; i < count; ++i) {
      meta::AttentionTask bad = p.list.tasks[size_t(i)];
      bad.kv_end = bad.kv_begin + 1;
      p.list.tasks.push_back(bad);
    }
    const std::vector<uint16_t> counted = run_on_device(p, AttentionKernel::kDecode, count);
    for (size_t i = 0; i < plain.size(); ++i)
      ASSERT_EQ(plain[i], counted[i]) << "trial " << trial << " element " << i << " (row "
                                      << i / size_t(heads * p.hd) << ")\n" << p.plan << "\n" << p.list;
  }
}

// What the launcher can see on the host is checked there; a task's rows only on the host list.
TEST(AttentionDecodeArgs, RejectsWhatTheKernelDoesNotServe) {
  AttentionArgs aa;
  aa.num_tasks = 1;
  aa.group = 4;
  aa.block_size = 16;
  aa.head_dim = 96;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kDecode), InvalidArgument);
  aa.head_dim = 128;
  aa.block_size = 12;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kDecode), InvalidArgument);
  aa.block_size = 4;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kDecode), InvalidArgument);
  aa.block_size = 16;
  aa.group = 17;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kDecode), InvalidArgument);
  aa.group = 4;
  aa.batch_invariant = true;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kDecode), InvalidArgument);
  aa.batch_invariant = false;

  // A verify of 5 tokens at group 4 is a 20-row task in a list of 64-row tiles.
  meta::StepPlan plan;
  plan.block_size = 16;
  std::vector<int32_t> pool(64);
  std::iota(pool.begin(), pool.end(), 0);
  xy::testing::append_request(plan, 0, 100, 1, {}, pool);
  xy::testing::append_request(plan, 1, 200, 5, {}, pool);
  const meta::AttentionWorkList big = meta::build_attention_work_list(plan, {8, 2, 0}, {kAttentionTileRows, 1024});
  try {
    check_decode_work_list(big, 4);
    ADD_FAILURE() << "a 20-row task passed";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("request 1"), std::string::npos) << what;
    EXPECT_NE(what.find("20 rows"), std::string::npos) << what;
  }
  const meta::AttentionWorkList small = meta::build_attention_work_list(plan, {8, 2, 0}, {kDecodeMaxRows, 1024});
  EXPECT_NO_THROW(check_decode_work_list(small, 4));
}

// ---- the split rule ----------------------------------------------------------------------------

std::vector<int32_t> repeat(int32_t n, int32_t context) { return std::vector<int32_t>(size_t(n), context); }

// Llama-3-8B heads on an H200 (132 SMs), block 16: the bench's decode cases.
constexpr DecodeSplitShape kLlamaH200{8, 16, 0, 132};

TEST(DecodeSplit, KeepsStepsThatFillTheGpuWhole) {
  for (const auto& [batch, context] : std::vector<std::pair<int32_t, int32_t>>{{64, 1024}, {64, 4096}, {256, 2048}}) {
    const auto contexts = repeat(batch, context);
    const int32_t split = decode_kv_split(contexts, kLlamaH200);
    EXPECT_GE(split, context) << batch << " x " << context;
    EXPECT_EQ(estimate_decode_split(contexts, kLlamaH200, split).num_partials, 0) << batch << " x " << context;
  }
}

TEST(DecodeSplit, SplitsLongContextsUntilTheCtasShareTheWork) {
  const auto contexts = repeat(8, 32768);
  const int32_t split = decode_kv_split(contexts, kLlamaH200);
  const DecodeSplitEstimate e = estimate_decode_split(contexts, kLlamaH200, split);
  const int64_t workers = int64_t(kLlamaH200.num_sms) * kDecodeCtasPerSm;
  EXPECT_LT(split, 32768);
  EXPECT_GE(e.num_tasks, workers) << "split " << split << ": a CTA without a task";
  EXPECT_LE(double(e.makespan), 1.25 * double(e.total) / double(workers)) << "split " << split;
  // One request alone: split until it spreads over many CTAs.
  const int32_t one = decode_kv_split(repeat(1, 16384), kLlamaH200);
  EXPECT_LE(one, 1024);
}

// The splits attention_bench measured best on an H200 (decode lines, splits 1024 to 32768 forced
// beside the rule's): 64 x 1k, 64 x 4k and 256 x 2k whole, 8 x 32k at 4096 (3.86 TB/s against 3.72
// at 8192 and 3.71 at 16384). decode_split.cpp's worked examples give the rule's arithmetic.
TEST(DecodeSplit, PicksTheSplitsMeasuredBestOnTheBenchCases) {
  EXPECT_EQ(decode_kv_split(repeat(64, 1024), kLlamaH200), 1024);
  EXPECT_EQ(decode_kv_split(repeat(64, 4096), kLlamaH200), 4096);
  EXPECT_EQ(decode_kv_split(repeat(256, 2048), kLlamaH200), 2048);
  EXPECT_EQ(decode_kv_split(repeat(8, 32768), kLlamaH200), 4096);
}

// The rule's task and partial counts are the work-list builder's, and its deal is
// meta::deal_tasks's symmetric round robin over the built list.
TEST(DecodeSplit, EstimateMatchesTheBuiltWorkListAndItsDeal) {
  std::mt19937 rng(64);
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t block = std::vector<int32_t>{8, 16, 32}[size_t(rng() % 3)];
    const int32_t kv_heads = 1 + int32_t(rng() % 8);
    const int32_t window = trial % 3 == 2 ? 1 + int32_t(rng() % 5000) : 0;
    const DecodeSplitShape shape{kv_heads, block, window, 1 + int32_t(rng() % 140)};
    meta::StepPlan plan;
    plan.block_size = block;
    std::vector<int32_t> pool(210000);
    std::iota(pool.begin(), pool.end(), 0);
    const int32_t num_req = 1 + int32_t(rng() % 40);
    std::vector<int32_t> contexts;
    for (int32_t r = 0; r < num_req; ++r) {
      const int32_t computed = int32_t(rng() % (trial % 2 ? 40000 : 3000));
      xy::testing::append_request(plan, r, computed, 1, {}, pool);
      contexts.push_back(computed + 1);
    }
    const int32_t split = decode_kv_split(contexts, shape);
    ASSERT_EQ(split % block, 0) << "trial " << trial;
    ASSERT_EQ(split, decode_kv_split(plan, 1, shape));
    for (const int32_t s : {split, block, 2 * block * (1 + int32_t(rng() % 64))}) {
      const meta::AttentionWorkList list =
          meta::build_attention_work_list(plan, {kv_heads, kv_heads, window}, {kDecodeMaxRows, s});
      const DecodeSplitEstimate e = estimate_decode_split(contexts, shape, s);
      ASSERT_EQ(e.num_tasks, int64_t(list.tasks.size())) << "trial " << trial << " split " << s;
      ASSERT_EQ(e.num_partials, int64_t(list.num_partials)) << "trial " << trial << " split " << s;
      int64_t keys = 0;
      for (const auto& t : list.tasks) keys += t.cost;  // group 1: cost = visible keys
      ASSERT_EQ((e.total - keys) % e.num_tasks, 0) << "the same overhead on every task";
      const int64_t overhead = (e.total - keys) / e.num_tasks;
      const int32_t workers = int32_t(std::min<int64_t>(e.num_tasks, int64_t(shape.num_sms) * kDecodeCtasPerSm));
      int64_t makespan = 0;
      for (const auto& mine : meta::deal_tasks(list, workers, meta::DealPolicy::kSymmetricRoundRobin)) {
        int64_t load = 0;
        for (const int32_t i : mine) load += list.tasks[size_t(i)].cost + overhead;
        makespan = std::max(makespan, load);
      }
      ASSERT_EQ(e.makespan, makespan) << "trial " << trial << " split " << s;
    }
  }
}

}  // namespace
}  // namespace xy::cuda
