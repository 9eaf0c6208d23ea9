// The tensor-core attention kernel (kernels/meta_attention.cu) against the CPU attention and
// against the first, CUDA-core kernel on random hybrid work lists: prefill chunks with prefix
// offsets, decodes, draft-tree verifies, sliding windows, long contexts split into partials, and
// tails (one query row, one key, spans and tiles that end mid-block). Outputs and partials are
// poisoned with NaN before every run and every element is checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
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
using attention_test::Problem;
using attention_test::random_hybrid_plan;
using attention_test::run_on_cpu;
using attention_test::run_on_device;

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

}  // namespace
}  // namespace xy::cuda
