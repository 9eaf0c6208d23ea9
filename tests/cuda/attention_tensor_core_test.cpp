// The tensor-core attention kernels against the CPU attention: the mma.sync kernel
// (kernels/meta_attention.cu, also against the first, CUDA-core kernel) and the Hopper wgmma
// kernel (kernels/meta_attention_wgmma.cu, on work lists of 64- and 128-row tiles), on random
// hybrid work lists: prefill chunks with prefix offsets, decodes, draft-tree verifies, sliding
// windows, long contexts split into partials, and tails (one query row, one key, spans and tiles
// that end mid-block); the wgmma kernel also in a graph-style launch (task count on the device,
// capacity past it), at every KV block size its TMA boxes handle (8 to 256: up to 16 pages a key
// block, or a box inside a page), on steps of hundreds of tiny tasks (its load rings and Q
// buffers run across task boundaries), on spans that start mid-page, and on steps that mix long
// tiles with many decodes (the same bits run to run and under either deal). Outputs and partials
// are poisoned with NaN before every run and every element is checked.
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
#include "xyserve/backend/cpu/attention.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using testing::poison;
using testing::random_bf16;
using testing::to_device;
using testing::to_f32;
using testing::to_host;
using attention_test::fill_inputs;
using attention_test::Problem;
using attention_test::random_hybrid_plan;
using attention_test::run_on_cpu;
using attention_test::run_on_device;

// Bound of a device output against the CPU's fp32 one. Outputs are convex combinations of v in
// [-1, 1]. The kernels round P to bf16 before P V (relative 2^-9 per weight, so at most 2^-9
// absolute on the output) and the output to bf16 (relative 2^-9); scores are exact products
// summed in fp32.
float output_tolerance(float want) { return 2.5e-3f + std::fabs(want) / 128; }

// Every element of `got` within output_tolerance of `want`; returns the largest error.
double expect_close(const Problem& p, const std::vector<uint16_t>& got, const std::vector<float>& want,
                    const std::string& what) {
  const size_t row_elems = size_t(p.kv_heads * p.group * p.hd);
  double max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float g = bf16_to_f32(got[i]);
    const float err = std::fabs(g - want[i]);
    EXPECT_TRUE(std::isfinite(g) && err <= output_tolerance(want[i]))
        << what << " hd " << p.hd << " group " << p.group << " window " << p.window << " block " << p.block_size
        << " tile_rows " << p.tile_rows << " element " << i << " (row " << i / row_elems << ", head "
        << i % row_elems / size_t(p.hd) << "): got " << g << " want " << want[i] << "\n"
        << p.plan << "\n" << p.list;
    if (!(std::isfinite(g) && err <= output_tolerance(want[i]))) return INFINITY;  // one report per run
    max_err = std::max(max_err, double(err));
  }
  return max_err;
}

// The backend's split (512 positions, a multiple of the block) or one block: many partials,
// spans that end mid-block of the kernels' key blocks.
int32_t split_for(int trial, int32_t block_size) {
  return trial % 3 == 2 ? block_size : (512 + block_size - 1) / block_size * block_size;
}

class AttentionTensorCore : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }
};

TEST_F(AttentionTensorCore, MatchesCpuAndCudaCoreKernelOnRandomHybridWorkLists) {
  std::mt19937 rng(6);
  double max_err_cpu = 0, max_err_old = 0;
  for (int trial = 0; trial < 40; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.kv_heads = 1 + int32_t(rng() % 3);
    p.group = std::vector<int32_t>{1, 4, 6, 8}[size_t(rng() % 4)];  // 6: a tile of 60 rows
    p.block_size = std::vector<int32_t>{8, 16, 32}[size_t(rng() % 3)];
    p.window = trial % 4 == 3 ? 30 + int32_t(rng() % 200) : 0;
    p.num_blocks = 20000 / p.block_size;
    p.plan = random_hybrid_plan(rng, p.block_size, p.num_blocks);
    const int32_t heads = p.kv_heads * p.group;
    // Splits at 512 as the backend does on long steps, at one block on some trials: many
    // partials, spans that end mid-block of the kernel's 64 keys.
    const int32_t split = trial % 3 == 2 ? p.block_size : (512 + p.block_size - 1) / p.block_size * p.block_size;
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window},
                                             {kAttentionTileRows, split});
    p.q = random_bf16(size_t(p.plan.num_rows()) * size_t(heads * p.hd), rng, 2.0f);
    p.k = random_bf16(size_t(p.num_blocks) * size_t(p.block_size) * size_t(p.kv_heads * p.hd), rng, 2.0f);
    p.v = random_bf16(p.k.size(), rng, 1.0f);

    const std::vector<float> want = run_on_cpu(p);
    const std::vector<uint16_t> got = run_on_device(p, AttentionKernel::kTensorCore);
    const std::vector<uint16_t> old = run_on_device(p, AttentionKernel::kCudaCore);
    for (size_t i = 0; i < want.size(); ++i) {
      // Bound: outputs are convex combinations of v in [-1, 1]. The kernel rounds P to bf16
      // before P V (relative 2^-9 per weight, so at most 2^-9 absolute on the output) and the
      // output to bf16 (relative 2^-9); scores are exact products summed in fp32.
      const float g = bf16_to_f32(got[i]), o = bf16_to_f32(old[i]);
      const float tol = 2.5e-3f + std::fabs(want[i]) / 128;
      ASSERT_TRUE(std::isfinite(g) && std::fabs(g - want[i]) <= tol)
          << "trial " << trial << " hd " << p.hd << " group " << p.group << " window " << p.window
          << " block " << p.block_size << " split " << split << " element " << i << " (row "
          << i / size_t(heads * p.hd) << "): got " << g << " want " << want[i] << "\n" << p.plan << "\n" << p.list;
      // Both kernels are within their bound of the same reference: twice the bound apart.
      ASSERT_TRUE(std::isfinite(o) && std::fabs(g - o) <= 2 * tol)
          << "trial " << trial << " element " << i << ": tensor core " << g << ", CUDA core " << o;
      max_err_cpu = std::max(max_err_cpu, double(std::fabs(g - want[i])));
      max_err_old = std::max(max_err_old, double(std::fabs(g - o)));
    }
  }
  std::printf("[attention tc] max abs error vs CPU %.3e, vs CUDA-core kernel %.3e\n", max_err_cpu, max_err_old);
}

TEST_F(AttentionTensorCore, RejectsHeadDimsItHasNoKernelFor) {
  AttentionArgs aa;
  aa.num_tasks = 1;
  aa.group = 1;
  aa.head_dim = 96;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kTensorCore), InvalidArgument);
}


// ---- the Hopper wgmma kernel -------------------------------------------------------------------

// One random hybrid step for the wgmma kernel, checked against the CPU: head dim and tile rows
// (64, 128) by trial, random KV heads and group (6: tiles of 60 or 126 rows), the given block size
// and window, room for `num_blocks` blocks, split by split_for(trial). Returns the largest error.
double check_wgmma_on_random_step(std::mt19937& rng, int trial, int32_t block_size, int32_t window, int32_t num_blocks,
                                  const char* what) {
  Problem p;
  p.hd = trial % 2 ? 128 : 64;
  p.tile_rows = (trial / 2) % 2 ? 128 : 64;
  p.kv_heads = 1 + int32_t(rng() % 3);
  p.group = std::vector<int32_t>{1, 4, 6, 8}[size_t(rng() % 4)];
  p.block_size = block_size;
  p.window = window;
  p.num_blocks = num_blocks;
  p.plan = random_hybrid_plan(rng, p.block_size, p.num_blocks);
  const int32_t heads = p.kv_heads * p.group;
  const int32_t split = split_for(trial, p.block_size);
  p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, split});
  fill_inputs(p, rng);
  const std::vector<float> want = run_on_cpu(p);
  return expect_close(p, run_on_device(p, AttentionKernel::kWgmma), want, cat(what, " trial ", trial, " split ", split));
}

TEST_F(AttentionTensorCore, WgmmaMatchesCpuOnRandomHybridWorkListsOf64And128RowTiles) {
  std::mt19937 rng(66);
  double max_err = 0;
  for (int trial = 0; trial < 32; ++trial) {
    const int32_t block_size = std::vector<int32_t>{8, 16, 32}[size_t(rng() % 3)];
    const int32_t window = trial % 4 == 3 ? 30 + int32_t(rng() % 200) : 0;
    const double err = check_wgmma_on_random_step(rng, trial, block_size, window, 20000 / block_size, "hybrid");
    ASSERT_TRUE(std::isfinite(err));
    max_err = std::max(max_err, err);
  }
  std::printf("[attention wgmma] max abs error vs CPU %.3e\n", max_err);
}

TEST_F(AttentionTensorCore, WgmmaServesLongContextsWholeAndSplitIntoManyPartials) {
  std::mt19937 rng(67);
  for (int32_t hd : {64, 128}) {
    Problem p;
    p.hd = hd;
    p.tile_rows = 128;
    p.kv_heads = 2;
    p.group = 4;
    p.block_size = 16;
    p.num_blocks = 40000 / p.block_size;
    p.plan.block_size = p.block_size;
    std::vector<int32_t> pool(static_cast<size_t>(p.num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    testing::append_request(p.plan, 0, 6001, 1, {}, pool);    // a decode at 6k
    testing::append_request(p.plan, 1, 4093, 100, {}, pool);  // a chunk on a 4k prefix, mid-block
    testing::append_request(p.plan, 2, 7000, 5, testing::random_tree(5, rng), pool);  // a verify at 7k
    testing::append_request(p.plan, 3, 0, 400, {}, pool);     // a first chunk
    fill_inputs(p, rng);
    const int32_t heads = p.kv_heads * p.group;
    std::vector<float> want;  // the CPU's split only changes rounding: one reference serves all
    for (int32_t split : {16384, 512, 128}) {
      p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, 0}, {p.tile_rows, split});
      if (want.empty()) want = run_on_cpu(p);
      ASSERT_TRUE(std::isfinite(expect_close(p, run_on_device(p, AttentionKernel::kWgmma), want,
                                             cat("long contexts, split ", split))));
    }
  }
}

// A graph-style launch: the tasks past task_count are decoys that would overwrite outputs and
// partial slots with a one-key result if the kernel ran them.
TEST_F(AttentionTensorCore, WgmmaGraphStyleLaunchRunsOnlyTheTaskCountReadOnTheDevice) {
  std::mt19937 rng(68);
  for (int trial = 0; trial < 8; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = trial % 4 < 2 ? 128 : 64;
    p.kv_heads = 2;
    p.group = std::vector<int32_t>{1, 4, 8}[size_t(trial % 3)];
    p.block_size = 16;
    p.window = trial % 5 == 4 ? 100 : 0;
    p.num_blocks = 20000 / p.block_size;
    p.plan = random_hybrid_plan(rng, p.block_size, p.num_blocks);
    const int32_t heads = p.kv_heads * p.group;
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, 512});
    fill_inputs(p, rng);
    const std::vector<float> want = run_on_cpu(p);
    const int32_t count = int32_t(p.list.tasks.size());
    for (int32_t i = 0; i < count + 300; ++i) {  // capacity well past the count and the grid
      meta::AttentionTask decoy = p.list.tasks[size_t(i % count)];
      decoy.kv_end = decoy.kv_begin + 1;
      decoy.mask = meta::MaskKind::kNone;
      p.list.tasks.push_back(decoy);
    }
    ASSERT_TRUE(std::isfinite(expect_close(p, run_on_device(p, AttentionKernel::kWgmma, count), want,
                                           cat("graph-style trial ", trial))));
  }
}

// K and V come by TMA, one box per page (block_size <= 128) or per 128 slots of a page (256):
// every block size, with prefix offsets, windows and splits that start spans mid-page and
// mid-block, and the boxes past a span's end that load a page the task holds instead.
TEST_F(AttentionTensorCore, WgmmaMatchesCpuAtEveryBlockSizeItsTmaBoxesServe) {
  std::mt19937 rng(69);
  double max_err = 0;
  const std::vector<int32_t> block_sizes{8, 16, 32, 64, 128, 256};
  for (int trial = 0; trial < 24; ++trial) {
    const int32_t block_size = block_sizes[size_t(trial % 6)];
    const int32_t window = trial % 5 == 4 ? 30 + int32_t(rng() % 300) : 0;
    // Room for six long requests at any block size.
    const double err = check_wgmma_on_random_step(rng, trial, block_size, window, 40000 / block_size + 64, "block-size");
    ASSERT_TRUE(std::isfinite(err));
    max_err = std::max(max_err, err);
  }
  std::printf("[attention wgmma, block sizes 8-256] max abs error vs CPU %.3e\n", max_err);
}

// Hundreds of decodes and verifies of short contexts with a few chunks: several tasks per CTA of
// one to three key blocks each, so the producer's rings and the two Q buffers carry over task
// boundaries all the time (a tile of one task in one Q buffer while the next loads); eager and
// graph-style deals, 64- and 128-row tiles, both head dims.
TEST_F(AttentionTensorCore, WgmmaStreamsStepsOfManyTinyTasksAcrossTaskBoundaries) {
  std::mt19937 rng(70);
  for (int trial = 0; trial < 8; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = trial % 4 < 2 ? 128 : 64;
    p.kv_heads = trial % 4 == 0 ? 1 : 2;
    p.group = trial % 3 == 0 ? 6 : 4;
    p.block_size = std::vector<int32_t>{8, 16, 32, 256}[size_t(trial % 4)];
    p.window = trial == 5 ? 50 : 0;
    constexpr int32_t kRequests = 420, kMaxTokens = 330 + 90;
    p.num_blocks = kRequests * ((kMaxTokens + p.block_size - 1) / p.block_size) + 16;
    p.plan.block_size = p.block_size;
    std::vector<int32_t> pool(static_cast<size_t>(p.num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t r = 0; r < kRequests; ++r) {
      const int kind = int(rng() % 10);  // 0-6 decode, 7-8 verify, 9 chunk
      const int32_t computed = int32_t(rng() % 330);
      if (kind <= 6) {
        testing::append_request(p.plan, r, computed, 1, {}, pool);
      } else if (kind <= 8) {
        const int32_t n = 2 + int32_t(rng() % 6);
        testing::append_request(p.plan, r, computed, n, testing::random_tree(n, rng), pool);
      } else {
        testing::append_request(p.plan, r, computed, 1 + int32_t(rng() % 90), {}, pool);
      }
    }
    fill_inputs(p, rng);
    const int32_t heads = p.kv_heads * p.group;
    p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, 512});
    const std::vector<float> want = run_on_cpu(p);
    const int32_t count = int32_t(p.list.tasks.size());
    ASSERT_TRUE(std::isfinite(expect_close(p, run_on_device(p, AttentionKernel::kWgmma), want,
                                           cat("tiny tasks trial ", trial, " eager"))));
    ASSERT_TRUE(std::isfinite(expect_close(p, run_on_device(p, AttentionKernel::kWgmma, count), want,
                                           cat("tiny tasks trial ", trial, " graph-style"))));
  }
}

// Spans that start mid-page and mid-key-block: prefixes of every residue modulo the page and the
// 128-key block, chunks split at one page, windows whose start falls inside a page. The keys
// of the first key block before the span's start are real slots of other positions, loaded and
// masked.
TEST_F(AttentionTensorCore, WgmmaMatchesCpuOnSpansThatStartMidPage) {
  std::mt19937 rng(71);
  for (int trial = 0; trial < 8; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = 128;
    p.kv_heads = 1;
    p.group = 4;
    p.block_size = std::vector<int32_t>{16, 64, 256, 32}[size_t(trial % 4)];
    p.window = trial >= 4 ? 37 + 64 * trial : 0;
    p.num_blocks = 60000 / p.block_size + 64;
    p.plan.block_size = p.block_size;
    std::vector<int32_t> pool(static_cast<size_t>(p.num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t r = 0; r < 6; ++r) {
      const int32_t computed = 128 * int32_t(1 + rng() % 12) + int32_t(rng() % 128);  // any residue
      testing::append_request(p.plan, r, computed, r % 2 ? 1 : 3 + int32_t(rng() % 150), {}, pool);
    }
    fill_inputs(p, rng);
    const int32_t heads = p.kv_heads * p.group;
    std::vector<float> want;
    for (int32_t split : {p.block_size, 512, 16384}) {
      p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, split});
      if (want.empty()) want = run_on_cpu(p);
      ASSERT_TRUE(std::isfinite(expect_close(p, run_on_device(p, AttentionKernel::kWgmma), want,
                                             cat("mid-page trial ", trial, " split ", split))));
    }
  }
}

// A hybrid step: long chunks (tiles of more than 64 rows, which the two consumers compute in
// pingpong turns) among many decodes and verifies with contexts of up to two thousand keys
// (tiles of at most 64 rows, whose key blocks the consumers share), so tiles of both kinds follow
// each other in every CTA, with and without splits. The result is the same bits run to run, and
// in an eager launch (CTAs take tasks from a counter) and a graph-style one (a static deal): no
// state carries from one task to the next whichever CTA runs it.
TEST_F(AttentionTensorCore, WgmmaMixesLongTilesWithManyDecodesAndRepeatsItsBits) {
  std::mt19937 rng(72);
  for (int trial = 0; trial < 4; ++trial) {
    Problem p;
    p.hd = trial % 2 ? 128 : 64;
    p.tile_rows = 128;
    p.kv_heads = 2;
    p.group = trial < 2 ? 4 : 8;
    p.block_size = 16;
    p.window = trial == 3 ? 700 : 0;
    constexpr int32_t kRequests = 100;
    p.num_blocks = kRequests * (2400 / p.block_size) + 64;
    p.plan.block_size = p.block_size;
    std::vector<int32_t> pool(static_cast<size_t>(p.num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t r = 0; r < kRequests; ++r) {
      const int32_t computed = 900 + int32_t(rng() % 1200);
      if (r % 33 == 0) {
        testing::append_request(p.plan, r, computed, 150 + int32_t(rng() % 150), {}, pool);  // a chunk
      } else if (r % 7 == 0) {
        const int32_t n = 2 + int32_t(rng() % 6);
        testing::append_request(p.plan, r, computed, n, testing::random_tree(n, rng), pool);  // a verify
      } else {
        testing::append_request(p.plan, r, computed, 1, {}, pool);  // a decode
      }
    }
    fill_inputs(p, rng);
    const int32_t heads = p.kv_heads * p.group;
    std::vector<float> want;
    for (int32_t split : {16384, 512}) {
      p.list = meta::build_attention_work_list(p.plan, {heads, p.kv_heads, p.window}, {p.tile_rows, split});
      if (want.empty()) want = run_on_cpu(p);
      const std::vector<uint16_t> eager = run_on_device(p, AttentionKernel::kWgmma);
      ASSERT_TRUE(std::isfinite(expect_close(p, eager, want, cat("mixed trial ", trial, " split ", split))));
      ASSERT_EQ(run_on_device(p, AttentionKernel::kWgmma), eager)
          << "mixed trial " << trial << " split " << split << ": a second eager run gave other bits";
      ASSERT_EQ(run_on_device(p, AttentionKernel::kWgmma, int32_t(p.list.tasks.size())), eager)
          << "mixed trial " << trial << " split " << split << ": the graph-style deal gave other bits";
    }
  }
}

TEST_F(AttentionTensorCore, WgmmaRejectsHeadDimsAndBlockSizesItHasNoKernelFor) {
  AttentionArgs aa;
  aa.num_tasks = 1;
  aa.group = 1;
  aa.block_size = 16;
  aa.head_dim = 96;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kWgmma), InvalidArgument);
  aa.head_dim = 128;
  aa.block_size = 24;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kWgmma), InvalidArgument);
  aa.block_size = 4;
  EXPECT_THROW(launch_attention(aa, nullptr, AttentionKernel::kWgmma), InvalidArgument);
}

}  // namespace
}  // namespace xy::cuda
