// The whole CudaBackend against the fp32 CpuBackend on tiny random models of all four
// architectures, over one scenario that exercises every plan feature: a prefill, a chunked
// prefill, a long prompt whose attention is split and merged, decodes, a mixed batch, a draft
// tree verify followed by slot moves that compact the accepted path, and a prefix shared through
// a copy-on-write block copy. Logits must agree within bf16 tolerance; greedy tokens are counted.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "support/plan_feature_tour.h"
#include "support/plan_sequences.h"
#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::backend::cuda {
namespace {

namespace fs = std::filesystem;
constexpr int32_t kBlockSize = 16;
constexpr int32_t kNumBlocks = 256;

// Plans over sequences from a shuffled block pool; the same seed gives the same tokens.
struct Scenario : testing::PlanSequences {
  explicit Scenario(int64_t vocab) : PlanSequences(vocab, 1234, kNumBlocks, kBlockSize) {}
};

struct Agreement {
  double max_rel = 0, sum_rel = 0;  // per row: ||gpu - cpu||_2 / ||cpu||_2
  double max_abs_over_range = 0;    // per row: max |gpu - cpu| / max |cpu|
  int64_t rows = 0, argmax_equal = 0;
};

void compare(const std::vector<float>& cpu, const std::vector<float>& gpu, int64_t vocab, Agreement& agg) {
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t r = 0; r < cpu.size() / size_t(vocab); ++r) {
    const float* c = cpu.data() + r * size_t(vocab);
    const float* g = gpu.data() + r * size_t(vocab);
    double num = 0, den = 0, max_abs = 0, range = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      ASSERT_TRUE(std::isfinite(g[j])) << "row " << r << " logit " << j;
      num += double(g[j] - c[j]) * double(g[j] - c[j]);
      den += double(c[j]) * double(c[j]);
      max_abs = std::max(max_abs, double(std::fabs(g[j] - c[j])));
      range = std::max(range, double(std::fabs(c[j])));
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    agg.max_rel = std::max(agg.max_rel, rel);
    agg.sum_rel += rel;
    agg.max_abs_over_range = std::max(agg.max_abs_over_range, max_abs / std::max(range, 1e-30));
    agg.rows += 1;
    agg.argmax_equal += (std::max_element(c, c + vocab) - c) == (std::max_element(g, g + vocab) - g);
  }
}

class CudaBackendParity : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(CudaBackendParity, LogitsMatchCpuBackendOverEveryPlanFeature) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  const auto [arch, preset] = GetParam();
  const model::ModelConfig config = model::preset_config(arch, preset);
  const fs::path dir = fs::temp_directory_path() / cat("xy_cuda_parity_", arch, "_", preset);
  model::write_random_checkpoint(config, dir, 42);
  const auto weights = model::load_model(dir);
  cpu::CpuBackend cpu_backend(*weights, {kNumBlocks, kBlockSize, 2});
  CudaBackendOptions options;
  options.num_kv_blocks = kNumBlocks;
  options.block_size = kBlockSize;
  options.max_num_tokens = 2048;
  CudaBackend gpu_backend(*weights, options);
  const int64_t vocab = config.vocab_size;

  Scenario sc(vocab);
  Agreement agg;
  auto run = [&](const meta::StepPlan& plan, const char* what) {
    std::vector<float> lc, lg;
    cpu_backend.forward(plan, lc);
    gpu_backend.forward(plan, lg);
    SCOPED_TRACE(what);
    compare(lc, lg, vocab, agg);
  };
  // Every plan feature; decodes at batch 1, 2 and 4, three steps each.
  testing::run_plan_feature_tour(sc, 3, run);
  const double mean_rel = agg.sum_rel / double(agg.rows);
  std::printf("[parity] %s/%s: %lld rows, logits rel. L2 error max %.3e mean %.3e, max|diff|/max|logit| %.3e, "
              "greedy agreement %lld/%lld\n",
              arch, preset, (long long)agg.rows, agg.max_rel, mean_rel, agg.max_abs_over_range,
              (long long)agg.argmax_equal, (long long)agg.rows);
  // bf16 weights are shared; bf16 activations (8 bits of mantissa) through a few layers put the
  // row-relative error near 1e-2: bound it at 5e-2 (a wrong mask or slot gives O(1)).
  EXPECT_LT(agg.max_rel, 5e-2);
  EXPECT_LT(mean_rel, 2e-2);
  EXPECT_GE(double(agg.argmax_equal), 0.9 * double(agg.rows));
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, CudaBackendParity,
    ::testing::Values(std::make_pair("llama", "tiny"), std::make_pair("llama", "small"),
                      std::make_pair("qwen2", "small"), std::make_pair("qwen3", "small"),
                      std::make_pair("mistral", "small"), std::make_pair("mistral", "tiny")),
    [](const auto& info) { return std::string(info.param.first) + "_" + info.param.second; });

}  // namespace
}  // namespace xy::backend::cuda

// ---- Deterministic mode (CudaBackendOptions::deterministic) ----------------------------------
// Appended tests: a row's attention and logits must not depend on the rows that share its tile
// or its step.
#include <cstring>
#include <map>

#include "cuda/device_test_util.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"

namespace xy::backend::cuda {
namespace {

// The same query rows (positions 450..749 of one sequence, keys from one block table) as one
// prefill chunk, as three chunks with other tile boundaries, and as 300 decodes: with
// batch_invariant, each row's output is the same bits in all three, through windows that start
// mid-block and spans split at 512 and merged.
TEST(DeterministicAttention, RowsDoNotDependOnTheirTile) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  using xy::cuda::AttentionKernel;
  constexpr int32_t kBs = 16, kBlocks = 64, kFirst = 450, kRows = 300;
  std::mt19937 rng(21);
  for (const AttentionKernel kernel : {AttentionKernel::kTensorCore, AttentionKernel::kCudaCore}) {
    for (const int32_t hd : {64, 128}) {
      for (const int32_t window : {0, 40}) {
        const int32_t kv_heads = 2, group = 4, heads = kv_heads * group;
        std::vector<int32_t> table(kBlocks);
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), rng);
        const auto k = testing::random_bf16(size_t(kBlocks) * kBs * size_t(kv_heads * hd), rng, 2.0f);
        const auto v = testing::random_bf16(k.size(), rng, 1.0f);
        const auto q_by_pos = testing::random_bf16(size_t(kFirst + kRows) * size_t(heads * hd), rng, 2.0f);
        auto d_k = testing::to_device(k), d_v = testing::to_device(v);

        // Each plan's requests: (computed, new); returns the output row of every position.
        auto run = [&](const std::vector<std::pair<int32_t, int32_t>>& reqs) {
          meta::StepPlan plan;
          plan.block_size = kBs;
          for (const auto& [computed, num_new] : reqs) {
            meta::ScheduledRequest r;
            r.num_computed_tokens = computed;
            r.num_new_tokens = num_new;
            r.first_row = plan.num_rows();
            r.block_table = table;
            for (int32_t j = 0; j < num_new; ++j) {
              plan.positions.push_back(computed + j);
              plan.token_ids.push_back(0);
            }
            plan.requests.push_back(r);
          }
          const meta::AttentionWorkList list =
              meta::build_attention_work_list(plan, {heads, kv_heads, window}, {xy::cuda::kAttentionTileRows, 512});
          std::vector<uint16_t> q;
          for (int32_t p : plan.positions)
            q.insert(q.end(), q_by_pos.begin() + size_t(p) * size_t(heads * hd),
                     q_by_pos.begin() + size_t(p + 1) * size_t(heads * hd));
          auto d_q = testing::to_device(q);
          xy::cuda::DevicePlan dplan;
          const xy::cuda::DevicePlanView& view = dplan.upload(plan, {{window, list}}, nullptr);
          const size_t np = size_t(std::max(list.num_partials, 1));
          xy::cuda::DeviceBuffer<uint16_t> d_out(q.size());
          xy::cuda::DeviceBuffer<float> d_po(np * xy::cuda::kAttentionTileRows * size_t(hd)),
              d_ps(np * xy::cuda::kAttentionTileRows * 2);
          testing::poison(d_out);
          xy::cuda::AttentionArgs aa;
          aa.q = reinterpret_cast<const xy::cuda::bf16*>(d_q.get());
          aa.q_row_stride = heads * hd;
          aa.k_cache = reinterpret_cast<const xy::cuda::bf16*>(d_k.get());
          aa.v_cache = reinterpret_cast<const xy::cuda::bf16*>(d_v.get());
          aa.block_size = kBs;
          aa.num_kv_heads = kv_heads;
          aa.head_dim = hd;
          aa.group = group;
          aa.window = window;
          aa.scale = float(1.0 / std::sqrt(double(hd)));
          xy::cuda::bind_attention_plan(aa, view, view.attention[0]);
          aa.batch_invariant = true;
          aa.out = reinterpret_cast<xy::cuda::bf16*>(d_out.get());
          aa.partial_out = d_po.get();
          aa.partial_max = d_ps.get();
          aa.partial_sum = d_ps.get() + np * xy::cuda::kAttentionTileRows;
          xy::cuda::launch_attention(aa, nullptr, kernel);
          xy::cuda::launch_attention_merge(aa, view.attention[0].merges, view.attention[0].num_merges, nullptr);
          const std::vector<uint16_t> out = testing::to_host(d_out, q.size());
          std::vector<std::vector<uint16_t>> by_pos(size_t(kFirst + kRows));
          for (size_t row = 0; row < plan.positions.size(); ++row)
            by_pos[size_t(plan.positions[row])].assign(out.begin() + row * size_t(heads * hd),
                                                       out.begin() + (row + 1) * size_t(heads * hd));
          return by_pos;
        };
        const auto whole = run({{kFirst, kRows}});
        const auto chunks = run({{kFirst, 37}, {kFirst + 37, 113}, {kFirst + 150, 150}});
        std::vector<std::pair<int32_t, int32_t>> decodes;
        for (int32_t p = kFirst; p < kFirst + kRows; ++p) decodes.emplace_back(p, 1);
        const auto alone = run(decodes);
        for (int32_t p = kFirst; p < kFirst + kRows; ++p) {
          const auto& w = whole[size_t(p)];
          ASSERT_EQ(w, chunks[size_t(p)]) << (kernel == AttentionKernel::kTensorCore ? "tensor core" : "CUDA core")
                                          << " hd " << hd << " window " << window << ": position " << p
                                          << " as one chunk vs three";
          ASSERT_EQ(w, alone[size_t(p)]) << (kernel == AttentionKernel::kTensorCore ? "tensor core" : "CUDA core")
                                         << " hd " << hd << " window " << window << ": position " << p
                                         << " in a chunk vs decoded alone";
        }
      }
    }
  }
}

// Qwen3 (q/k norms) with head_dim 64: the tensor-core kernel; windows 0 and 48.
model::ModelConfig deterministic_tensor_core_config() {
  model::ModelConfig c = model::preset_config("qwen3", "small");
  c.head_dim = 64;
  c.sliding_window = {0, 48, 0, 48};
  return c;
}
model::ModelConfig deterministic_cuda_core_config() { return model::preset_config("llama", "small"); }

class DeterministicBackend : public ::testing::TestWithParam<std::pair<const char*, model::ModelConfig (*)()>> {};

// Four sequences run alone (whole prompt, then one decode a step) and together (prompts in
// chunks of 100 beside each other, so other tile boundaries; batched decodes; then a 3-token
// chain verify in place of the last three decodes): in deterministic mode every logits row of a
// (sequence, position) is the same bits both ways. Needs every kernel batch-invariant, the
// GEMMs included.
TEST_P(DeterministicBackend, LogitsDoNotDependOnTheBatchChunkingOrSpeculation) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  const auto [name, make_config] = GetParam();
  const model::ModelConfig config = make_config();
  const fs::path dir = fs::temp_directory_path() / cat("xy_cuda_deterministic_", name);
  model::write_random_checkpoint(config, dir, 5);
  const auto weights = model::load_model(dir);
  CudaBackendOptions options;
  options.num_kv_blocks = kNumBlocks;
  options.block_size = kBlockSize;
  options.max_num_tokens = 2048;
  options.deterministic = true;
  CudaBackend alone_backend(*weights, options), batch_backend(*weights, options);
  const int64_t vocab = config.vocab_size;
  const std::vector<int32_t> prompts{37, 300, 600, 5};
  constexpr int32_t kDecodes = 6;

  // (sequence, position) -> logits row, from each way of running.
  using Rows = std::map<std::pair<int32_t, int32_t>, std::vector<float>>;
  auto record = [&](CudaBackend& be, const meta::StepPlan& plan, Rows& rows) {
    std::vector<float> logits;
    be.forward(plan, logits);
    size_t row = 0;
    for (const auto& r : plan.requests)
      for (int32_t j = r.num_new_tokens - r.num_logits_rows; j < r.num_new_tokens; ++j, ++row)
        rows[{int32_t(r.request_id), plan.positions[size_t(r.first_row + j)]}].assign(
            logits.begin() + int64_t(row) * vocab, logits.begin() + int64_t(row + 1) * vocab);
  };
  Rows alone, batched;
  {
    Scenario sc(vocab);
    for (int32_t len : prompts) sc.add_seq(len + kDecodes);
    for (int32_t i = 0; i < int32_t(prompts.size()); ++i) {
      meta::StepPlan p;
      p.block_size = kBlockSize;
      sc.add_rows(p, i, prompts[size_t(i)], 1);
      record(alone_backend, p, alone);
      for (int32_t d = 0; d < kDecodes; ++d) {
        meta::StepPlan q;
        q.block_size = kBlockSize;
        sc.add_rows(q, i, 1, 1);
        record(alone_backend, q, alone);
      }
    }
  }
  {
    Scenario sc(vocab);  // same seed: the same tokens
    for (int32_t len : prompts) sc.add_seq(len + kDecodes);
    for (bool more = true; more;) {
      more = false;
      meta::StepPlan p;
      p.block_size = kBlockSize;
      for (int32_t i = 0; i < int32_t(prompts.size()); ++i) {
        const int32_t left = prompts[size_t(i)] - sc.seq(i).computed;
        if (left == 0) continue;
        const int32_t n = std::min(left, 100);
        sc.add_rows(p, i, n, n == left ? 1 : 0);
        more = more || n < left;
      }
      record(batch_backend, p, batched);
    }
    for (int32_t d = 0; d < kDecodes - 3; ++d) {
      meta::StepPlan p;
      p.block_size = kBlockSize;
      for (int32_t i = 0; i < int32_t(prompts.size()); ++i) sc.add_rows(p, i, 1, 1);
      record(batch_backend, p, batched);
    }
    meta::StepPlan p;  // a chain verify: the last three tokens at once, each with logits
    p.block_size = kBlockSize;
    for (int32_t i = 0; i < int32_t(prompts.size()); ++i) sc.add_rows(p, i, 3, 3);
    record(batch_backend, p, batched);
  }
  ASSERT_EQ(alone.size(), prompts.size() * (1 + kDecodes));
  for (const auto& [key, want] : alone) {
    const auto it = batched.find(key);
    ASSERT_NE(it, batched.end()) << "sequence " << key.first << " position " << key.second;
    ASSERT_EQ(std::memcmp(want.data(), it->second.data(), want.size() * sizeof(float)), 0)
        << name << ": sequence " << key.first << " position " << key.second
        << ": logits differ between running alone and batched/chunked/verified";
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Kernels, DeterministicBackend,
                         ::testing::Values(std::make_pair("tensor_core", &deterministic_tensor_core_config),
                                           std::make_pair("cuda_core", &deterministic_cuda_core_config)),
                         [](const auto& info) { return std::string(info.param.first); });

}  // namespace
}  // namespace xy::backend::cuda
