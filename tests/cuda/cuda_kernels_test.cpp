// Each CUDA kernel against the CPU backend's implementation of the same operator (backend/cpu),
// on random shapes with ragged tails. Outputs are poisoned with NaN before each run and every
// element is checked; each test states its bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/device_test_util.h"
#include "support/plan_builder.h"
#include "xyserve/backend/cpu/attention.h"
#include "xyserve/backend/cpu/kv_cache.h"
#include "xyserve/backend/cpu/ops.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/dtype.h"

namespace xy::cuda {
namespace {

using testing::poison;
using testing::random_bf16;
using testing::to_device;
using testing::to_f32;
using testing::to_host;

bool close(float got, float want, float abs_tol, float rel_tol) {
  return std::isfinite(got) && std::fabs(got - want) <= abs_tol + rel_tol * std::fabs(want);
}

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }
};

TEST_F(CudaKernels, AddRmsNormMatchesCpuOnRaggedShapes) {
  std::mt19937 rng(1);
  for (int64_t hidden : {64, 200, 4096, 5000}) {
    for (int32_t m : {1, 3, 17}) {
      auto x = random_bf16(size_t(m * hidden), rng, 2.0f);
      auto delta = random_bf16(x.size(), rng);
      auto w = random_bf16(size_t(hidden), rng);
      std::vector<float> residual = to_f32(x);
      auto d_res = to_device(residual);
      auto d_delta = to_device(delta);
      auto d_w = to_device(w);
      DeviceBuffer<uint16_t> d_out(x.size());
      poison(d_out);
      launch_add_rms_norm(d_res.get(), reinterpret_cast<const bf16*>(d_delta.get()),
                          reinterpret_cast<const bf16*>(d_w.get()), nullptr, m, hidden, 1e-5f,
                          reinterpret_cast<bf16*>(d_out.get()), nullptr);
      const auto out = to_host(d_out, x.size());
      const auto res = to_host(d_res, x.size());
      const auto df = to_f32(delta), wf = to_f32(w);
      for (size_t i = 0; i < residual.size(); ++i) residual[i] += df[i];
      std::vector<float> want(residual.size());
      backend::cpu::rms_norm(residual.data(), wf.data(), m, hidden, 1e-5, want.data());
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ(res[i], residual[i]) << i;  // fp32 add: exact
        // bound: one bf16 rounding of the output (2^-8 relative) plus fp32 reduction-order noise
        ASSERT_TRUE(close(bf16_to_f32(out[i]), want[i], 1e-5f, 1.0f / 256)) << hidden << " " << i;
      }
    }
  }
}

TEST_F(CudaKernels, SiluMulMatchesCpu) {
  std::mt19937 rng(2);
  for (int64_t inter : {8, 300, 14336}) {
    const int32_t m = 5;
    auto gu = random_bf16(size_t(m * 2 * inter), rng, 4.0f);
    auto d_gu = to_device(gu);
    DeviceBuffer<uint16_t> d_out(size_t(m * inter));
    poison(d_out);
    launch_silu_mul(reinterpret_cast<const bf16*>(d_gu.get()), m, inter, reinterpret_cast<bf16*>(d_out.get()), nullptr);
    const auto out = to_host(d_out, size_t(m * inter));
    const auto f = to_f32(gu);
    for (int32_t i = 0; i < m; ++i) {
      std::vector<float> want(static_cast<size_t>(inter));
      backend::cpu::silu_mul(f.data() + i * 2 * inter, f.data() + i * 2 * inter + inter, inter, want.data());
      for (int64_t j = 0; j < inter; ++j)  // bound: bf16 output rounding, fast exp
        ASSERT_TRUE(close(bf16_to_f32(out[size_t(i * inter + j)]), want[size_t(j)], 1e-6f, 1.0f / 128)) << j;
    }
  }
}

// Bias, q/k norm, RoPE (llama3 scaling) and the KV write, against the CPU ops in sequence.
TEST_F(CudaKernels, QkvPrologueMatchesCpuOps) {
  std::mt19937 rng(3);
  for (bool qwen3 : {false, true}) {
    const int32_t m = 7, heads = 8, kv_heads = 2, hd = 64, block_size = 16, num_slots = 64;
    const int32_t q_dim = heads * hd, kv_dim = kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    model::RopeConfig rc;
    rc.theta = 500000.0;
    rc.scaling = model::RopeScalingType::kLlama3;
    rc.factor = 8.0;
    backend::cpu::Rope rope(rc, hd);
    auto qkv = random_bf16(size_t(m * qkv_dim), rng, 2.0f);
    auto bias = random_bf16(size_t(qkv_dim), rng, 0.1f);
    auto qn = random_bf16(size_t(hd), rng), kn = random_bf16(size_t(hd), rng);
    std::vector<int32_t> positions(static_cast<size_t>(m)), slots(static_cast<size_t>(m));
    for (int32_t i = 0; i < m; ++i) {
      positions[size_t(i)] = int32_t(rng() % 9000);
      slots[size_t(i)] = (i * 7 + 3) % num_slots;
    }
    auto d_qkv = to_device(qkv);
    auto d_bias = to_device(bias);
    auto d_qn = to_device(qn), d_kn = to_device(kn);
    auto d_pos = to_device(positions), d_slots = to_device(slots);
    auto d_freq = to_device(rope.inv_freq());
    DeviceBuffer<uint16_t> d_k(size_t(num_slots * kv_dim)), d_v(size_t(num_slots * kv_dim));
    poison(d_k);
    poison(d_v);
    QkvPrologueArgs a;
    a.qkv = reinterpret_cast<bf16*>(d_qkv.get());
    a.m = m;
    a.num_heads = heads;
    a.num_kv_heads = kv_heads;
    a.head_dim = hd;
    a.bias = qwen3 ? nullptr : reinterpret_cast<const bf16*>(d_bias.get());
    a.q_norm = qwen3 ? reinterpret_cast<const bf16*>(d_qn.get()) : nullptr;
    a.k_norm = qwen3 ? reinterpret_cast<const bf16*>(d_kn.get()) : nullptr;
    a.eps = 1e-6f;
    a.inv_freq = d_freq.get();
    a.positions = d_pos.get();
    a.kv_slots = d_slots.get();
    a.k_cache = reinterpret_cast<bf16*>(d_k.get());
    a.v_cache = reinterpret_cast<bf16*>(d_v.get());
    (void)block_size;
    launch_qkv_prologue(a, nullptr);
    const auto got_qkv = to_host(d_qkv, qkv.size());
    const auto got_k = to_host(d_k, d_k.size()), got_v = to_host(d_v, d_v.size());

    std::vector<float> x = to_f32(qkv);
    const auto bf = to_f32(bias), qnf = to_f32(qn), knf = to_f32(kn);
    for (int32_t i = 0; i < m; ++i) {
      float* row = x.data() + i * qkv_dim;
      if (!qwen3)
        for (int32_t j = 0; j < qkv_dim; ++j) row[j] = bf16_to_f32(f32_to_bf16(row[j] + bf[size_t(j)]));
      if (qwen3) {
        backend::cpu::rms_norm(row, qnf.data(), heads, hd, 1e-6, row);
        backend::cpu::rms_norm(row + q_dim, knf.data(), kv_heads, hd, 1e-6, row + q_dim);
      }
    }
    std::vector<float> cs(size_t(m * hd / 2)), sn(cs.size());
    rope.fill_tables(positions, cs.data(), sn.data());
    backend::cpu::apply_rope(x.data(), m, heads, hd, qkv_dim, cs.data(), sn.data());
    backend::cpu::apply_rope(x.data() + q_dim, m, kv_heads, hd, qkv_dim, cs.data(), sn.data());
    // bound: bf16 rounding of the output (2^-8 relative of the largest element in the pair)
    for (int32_t i = 0; i < m; ++i) {
      for (int32_t j = 0; j < q_dim; ++j)
        ASSERT_TRUE(close(bf16_to_f32(got_qkv[size_t(i * qkv_dim + j)]), x[size_t(i * qkv_dim + j)], 2e-2f, 1.0f / 128))
            << "q row " << i << " " << j;
      for (int32_t j = 0; j < kv_dim; ++j) {
        const size_t dst = size_t(slots[size_t(i)] * kv_dim + j);
        ASSERT_TRUE(close(bf16_to_f32(got_k[dst]), x[size_t(i * qkv_dim + q_dim + j)], 2e-2f, 1.0f / 128)) << "k " << i << " " << j;
        ASSERT_EQ(got_v[dst], f32_to_bf16(x[size_t(i * qkv_dim + q_dim + kv_dim + j)])) << "v " << i << " " << j;
      }
    }
  }
}

// Random plans: ragged prefill chunks, decodes, long spans split at 512, windows, draft trees.
TEST_F(CudaKernels, AttentionOverWorkListMatchesCpuAttention) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 24; ++trial) {
    const int32_t hd = std::vector<int32_t>{16, 32, 64, 128, 256}[size_t(trial % 5)];
    const int32_t kv_heads = 1 + int32_t(rng() % 3), group = std::vector<int32_t>{1, 4, 8}[size_t(rng() % 3)];
    const int32_t heads = kv_heads * group, block_size = (trial % 2) ? 16 : 8;
    const int32_t window = trial % 4 == 3 ? 40 + int32_t(rng() % 100) : 0;
    const int32_t num_blocks = 400;
    meta::StepPlan plan;
    plan.block_size = block_size;
    std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    const int32_t num_req = 1 + int32_t(rng() % 4);
    for (int32_t r = 0; r < num_req; ++r) {
      const int kind = int(rng() % 4);  // 0 decode, 1 chunk, 2 long chunk, 3 tree
      const int32_t computed = int32_t(rng() % (kind == 2 ? 1200 : 300));
      const int32_t num_new = kind == 0 ? 1 : kind == 3 ? 2 + int32_t(rng() % 9) : 1 + int32_t(rng() % 150);
      testing::append_request(plan, r, computed, num_new,
                              kind == 3 ? testing::random_tree(num_new, rng) : std::vector<int32_t>{}, pool);
    }
    const int32_t m = plan.num_rows();
    const int64_t slot_elems = int64_t(kv_heads) * hd;
    auto q = random_bf16(size_t(m) * size_t(heads * hd), rng, 2.0f);
    auto k = random_bf16(size_t(num_blocks) * size_t(block_size) * size_t(slot_elems), rng, 2.0f);
    auto v = random_bf16(k.size(), rng);
    const auto qf = to_f32(q), kf = to_f32(k), vf = to_f32(v);

    meta::WorkListOptions wo{kAttentionTileRows, (512 + block_size - 1) / block_size * block_size};
    const meta::AttentionWorkList list = meta::build_attention_work_list(plan, {heads, kv_heads, window}, wo);
    // CPU reference on the same bf16 values in fp32.
    backend::cpu::AttentionLayerArgs ca;
    ca.plan = &plan;
    ca.q = qf.data();
    ca.q_row_stride = heads * hd;
    ca.kv = backend::cpu::PagedKvView{kf.data(), vf.data(), num_blocks, block_size, kv_heads, hd};
    ca.num_heads = heads;
    ca.window = window;
    ca.scale = float(1.0 / std::sqrt(double(hd)));
    std::vector<float> want(size_t(m) * size_t(heads * hd));
    ca.out = want.data();
    backend::cpu::AttentionRunner runner;
    runner.run(ca, list, nullptr);

    DevicePlan dplan;
    std::vector<std::pair<int32_t, meta::AttentionWorkList>> lists{{window, list}};
    const DevicePlanView& view = dplan.upload(plan, lists, nullptr);
    auto d_q = to_device(q), d_k = to_device(k), d_v = to_device(v);
    DeviceBuffer<uint16_t> d_out(q.size());
    poison(d_out);
    const size_t np = size_t(std::max(list.num_partials, 1));
    DeviceBuffer<float> d_po(np * kAttentionTileRows * size_t(hd)), d_ps(np * kAttentionTileRows * 2);
    poison(d_po);
    poison(d_ps);
    AttentionArgs aa;
    aa.q = reinterpret_cast<const bf16*>(d_q.get());
    aa.q_row_stride = heads * hd;
    aa.k_cache = reinterpret_cast<const bf16*>(d_k.get());
    aa.v_cache = reinterpret_cast<const bf16*>(d_v.get());
    aa.block_size = block_size;
    aa.num_kv_heads = kv_heads;
    aa.head_dim = hd;
    aa.group = group;
    aa.window = window;
    aa.scale = ca.scale;
    xy::cuda::bind_attention_plan(aa, view, view.attention[0]);
    aa.out = reinterpret_cast<bf16*>(d_out.get());
    aa.partial_out = d_po.get();
    aa.partial_max = d_ps.get();
    aa.partial_sum = d_ps.get() + np * kAttentionTileRows;
    // The CUDA-core kernel, held to its fp32 bound; the tensor-core default (which rounds P to
    // bf16) has its own test with its own bound (attention_tensor_core_test.cpp).
    launch_attention(aa, nullptr, AttentionKernel::kCudaCore);
    launch_attention_merge(aa, view.attention[0].merges, view.attention[0].num_merges, nullptr);
    const auto got = to_host(d_out, q.size());
    double max_err = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      // bound: outputs are convex combinations of v in [-1, 1]; fp32 softmax differs from the
      // CPU's only in rounding, so the bf16 output rounding (2^-9 relative) dominates.
      const float g = bf16_to_f32(got[i]);
      ASSERT_TRUE(close(g, want[i], 2e-4f, 1.0f / 128))
          << "trial " << trial << " hd " << hd << " group " << group << " window " << window
          << " element " << i << " (row " << i / size_t(heads * hd) << "): got " << g << " want " << want[i]
          << "\n" << plan << "\n" << list;
      max_err = std::max(max_err, double(std::fabs(g - want[i])));
    }
    if (trial == 0) std::printf("[attention] first trial max abs error %.3e\n", max_err);
  }
}

TEST_F(CudaKernels, KvCopiesAndMovesMatchCpuCache) {
  std::mt19937 rng(5);
  const int32_t layers = 3, blocks = 20, bs = 16, kv_heads = 2, hd = 32;
  backend::cpu::PagedKvCache cpu_cache(layers, blocks, bs, kv_heads, hd);
  // Fill both caches with the same values through a plan that writes every slot of every block.
  meta::StepPlan fill;
  fill.block_size = bs;
  meta::ScheduledRequest r;
  r.num_new_tokens = blocks * bs;
  for (int32_t b = 0; b < blocks; ++b) r.block_table.push_back(b);
  fill.requests.push_back(r);
  const int64_t slot_elems = kv_heads * hd;
  std::vector<uint16_t> all;  // [layers][K, V][blocks * bs][slot_elems]
  for (int32_t l = 0; l < layers; ++l) {
    auto kb = random_bf16(size_t(blocks * bs * slot_elems), rng), vb = random_bf16(kb.size(), rng);
    cpu_cache.write(l, fill, to_f32(kb).data(), to_f32(vb).data(), slot_elems);
    all.insert(all.end(), kb.begin(), kb.end());
    all.insert(all.end(), vb.begin(), vb.end());
  }
  meta::StepPlan plan;
  plan.block_size = bs;
  plan.kv_copies = {{3, 7, 5}, {7, 9, 16}, {1, 2, 0}};
  plan.kv_moves = {{4, 2, 4, 3}, {4, 3, 11, 0}, {11, 0, 12, 15}};  // chained: order matters
  cpu_cache.apply_copies_and_moves(plan);
  DevicePlan dplan;
  const DevicePlanView& view = dplan.upload(plan, {}, nullptr);
  auto d_cache = to_device(all);
  const int64_t plane = int64_t(blocks) * bs * slot_elems;
  launch_kv_copies_and_moves(reinterpret_cast<bf16*>(d_cache.get()), 2 * layers, plane, bs, slot_elems,
                             view.kv_copies, view.num_kv_copies, view.kv_moves, view.num_kv_moves, nullptr);
  const auto got = to_host(d_cache, all.size());
  for (int32_t l = 0; l < layers; ++l) {
    const backend::cpu::PagedKvView kv = cpu_cache.layer(l);
    for (int64_t i = 0; i < plane; ++i) {
      ASSERT_EQ(bf16_to_f32(got[size_t((2 * l) * plane + i)]), kv.k[i]) << "layer " << l << " k " << i;
      ASSERT_EQ(bf16_to_f32(got[size_t((2 * l + 1) * plane + i)]), kv.v[i]) << "layer " << l << " v " << i;
    }
  }
}

}  // namespace
}  // namespace xy::cuda
