// Shared by the attention kernels' GPU tests: random hybrid steps, one layer's problem, and the
// same problem run by a device kernel (outputs poisoned first) and by the CPU attention.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "cuda/device_test_util.h"
#include "support/plan_builder.h"
#include "xyserve/backend/cpu/attention.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/dtype.h"

namespace xy::cuda::attention_test {

using xy::testing::random_bf16;
using xy::testing::to_device;
using xy::testing::to_f32;

// One random step: a mix of request kinds, each with its own block table drawn from a shuffled
// pool, so keys are gathered from scattered blocks.
inline meta::StepPlan random_hybrid_plan(std::mt19937& rng, int32_t block_size, int32_t num_blocks) {
  meta::StepPlan plan;
  plan.block_size = block_size;
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  const int32_t num_req = 1 + int32_t(rng() % 6);
  for (int32_t r = 0; r < num_req; ++r) {
    // 0 decode, 1 prefill chunk on a prefix, 2 long context, 3 tree verify, 4 first token alone
    const int kind = int(rng() % 5);
    const int32_t computed = kind == 4 ? 0 : int32_t(rng() % (kind == 2 ? 3000 : 400));
    const int32_t num_new = kind == 0 || kind == 4 ? 1
                            : kind == 3            ? 2 + int32_t(rng() % 11)
                            : kind == 2            ? 1 + int32_t(rng() % 70)
                                                   : 1 + int32_t(rng() % 200);
    testing::append_request(plan, r, computed, num_new,
                            kind == 3 ? testing::random_tree(num_new, rng) : std::vector<int32_t>{}, pool);
  }
  return plan;
}

// One layer's attention problem: the plan, its work list (built with tile_rows) and the bf16
// q / paged k, v inputs.
struct Problem {
  int32_t hd = 0, kv_heads = 0, group = 0, window = 0, block_size = 0, num_blocks = 0;
  int32_t tile_rows = kAttentionTileRows;
  meta::StepPlan plan;
  meta::AttentionWorkList list;
  std::vector<uint16_t> q, k, v;
};

// Random q, k, v for `p`'s plan: q in [-2, 2), k in [-2, 2), v in [-1, 1).
inline void fill_inputs(Problem& p, std::mt19937& rng) {
  const int32_t heads = p.kv_heads * p.group;
  p.q = random_bf16(size_t(p.plan.num_rows()) * size_t(heads * p.hd), rng, 2.0f);
  p.k = random_bf16(size_t(p.num_blocks) * size_t(p.block_size) * size_t(p.kv_heads * p.hd), rng, 2.0f);
  p.v = random_bf16(p.k.size(), rng, 1.0f);
}

// Runs the work list with `kernel` (then the merge) and returns the bf16 output bits. With
// task_count >= 0, only the list's first task_count tasks are the step (the rest is capacity, as
// in a CUDA-graph bucket): the kernel reads the count on the device (AttentionArgs::task_count).
inline std::vector<uint16_t> run_on_device(const Problem& p, AttentionKernel kernel, int32_t task_count = -1) {
  const int32_t heads = p.kv_heads * p.group;
  DevicePlan dplan;
  std::vector<std::pair<int32_t, meta::AttentionWorkList>> lists{{p.window, p.list}};
  const DevicePlanView& view = dplan.upload(p.plan, lists, nullptr);
  auto d_q = to_device(p.q), d_k = to_device(p.k), d_v = to_device(p.v);
  DeviceBuffer<uint16_t> d_out(p.q.size());
  const size_t np = size_t(std::max(p.list.num_partials, 1));
  const size_t tile = size_t(p.tile_rows);
  DeviceBuffer<float> d_po(np * tile * size_t(p.hd)), d_ps(np * tile * 2);
  // All-ones bits: NaN in bf16 and fp32, so an element nobody writes cannot pass.
  XY_CUDA_CHECK(cudaMemset(d_out.get(), 0xff, d_out.bytes()));
  XY_CUDA_CHECK(cudaMemset(d_po.get(), 0xff, d_po.bytes()));
  XY_CUDA_CHECK(cudaMemset(d_ps.get(), 0xff, d_ps.bytes()));
  AttentionArgs aa;
  aa.q = reinterpret_cast<const bf16*>(d_q.get());
  aa.q_row_stride = heads * p.hd;
  aa.num_q_rows = p.plan.num_rows();  // the wgmma kernel's TMA query tiles (cuda_kernels_test: cp.async)
  aa.k_cache = reinterpret_cast<const bf16*>(d_k.get());
  aa.v_cache = reinterpret_cast<const bf16*>(d_v.get());
  aa.block_size = p.block_size;
  aa.num_kv_heads = p.kv_heads;
  aa.head_dim = p.hd;
  aa.group = p.group;
  aa.window = p.window;
  aa.scale = float(1.0 / std::sqrt(double(p.hd)));
  xy::cuda::bind_attention_plan(aa, view, view.attention[0]);
  DeviceBuffer<int32_t> d_count(1);
  if (task_count >= 0) {
    XY_CUDA_CHECK(cudaMemcpy(d_count.get(), &task_count, sizeof(task_count), cudaMemcpyHostToDevice));
    aa.task_count = d_count.get();
  }
  aa.out = reinterpret_cast<bf16*>(d_out.get());
  aa.partial_out = d_po.get();
  aa.partial_max = d_ps.get();
  aa.partial_rows = p.tile_rows;
  aa.partial_sum = d_ps.get() + np * tile;
  launch_attention(aa, nullptr, kernel);
  launch_attention_merge(aa, view.attention[0].merges, view.attention[0].num_merges, nullptr);
  std::vector<uint16_t> out(p.q.size());
  XY_CUDA_CHECK(cudaDeviceSynchronize());
  XY_CUDA_CHECK(cudaMemcpy(out.data(), d_out.get(), out.size() * 2, cudaMemcpyDeviceToHost));
  return out;
}

inline std::vector<float> run_on_cpu(const Problem& p) {
  const int32_t heads = p.kv_heads * p.group;
  const auto qf = to_f32(p.q), kf = to_f32(p.k), vf = to_f32(p.v);
  backend::cpu::AttentionLayerArgs ca;
  ca.plan = &p.plan;
  ca.q = qf.data();
  ca.q_row_stride = heads * p.hd;
  ca.kv = backend::cpu::PagedKvView{kf.data(), vf.data(), p.num_blocks, p.block_size, p.kv_heads, p.hd};
  ca.num_heads = heads;
  ca.window = p.window;
  ca.scale = float(1.0 / std::sqrt(double(p.hd)));
  std::vector<float> want(p.q.size());
  ca.out = want.data();
  backend::cpu::AttentionRunner runner;
  runner.run(ca, p.list, nullptr);
  return want;
}

}  // namespace xy::cuda::attention_test
