// CUDA graphs for decode steps (backend/cuda/cuda_graphs.h).
//
// 1. The graph-safe attention launch (task and merge counts read on the device, a persistent
//    grid striding over them) gives the same bits as one block per task, and stops at the count
//    even when the buffers hold more tasks after it.
// 2. A backend that replays graphs against one that runs every step eagerly, on the same
//    weights, over mixed steps: prefill chunks, decodes at many batch sizes (bucket sizes and
//    padded ones), a decode with a KV block copy, a draft-tree verify and the decode with the
//    slot moves after it. Where both run the same kernels on the same inputs the logits must be
//    bitwise equal: every step whose batch is a bucket size; padded steps too in deterministic
//    mode (cuBLASLt then runs one algorithm whatever M is). In the default mode a padded step's
//    GEMMs have another M than the eager backend's, so there cuBLASLt may pick another kernel:
//    those steps are compared with a bound, and bitwise against the graph backend's own eager
//    run of the same padded step (the step that captured the bucket).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda/device_test_util.h"
#include "support/plan_builder.h"
#include "support/plan_sequences.h"
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/cuda_graphs.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::backend::cuda {
namespace {

namespace fs = std::filesystem;
using xy::cuda::AttentionArgs;
using xy::cuda::AttentionKernel;
using xy::cuda::DeviceBuffer;
using xy::cuda::kAttentionTileRows;

// ---- 1. the graph-safe launch of the attention kernels ---------------------------------------

// Copies `items` to the device followed by `extra` items that must never run.
template <typename T>
DeviceBuffer<T> with_trailing(const std::vector<T>& items, const std::vector<T>& extra) {
  std::vector<T> all = items;
  all.insert(all.end(), extra.begin(), extra.end());
  return testing::to_device(all);
}

TEST(GraphSafeAttention, DeviceCountsGiveTheBitsOfOneBlockPerTask) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  std::mt19937 rng(11);
  for (int trial = 0; trial < 16; ++trial) {
    const AttentionKernel kernel = trial % 2 ? AttentionKernel::kCudaCore : AttentionKernel::kTensorCore;
    const int32_t hd = trial % 4 < 2 ? 64 : 128, kv_heads = 1 + int32_t(rng() % 3), group = trial % 3 ? 4 : 1;
    const int32_t heads = kv_heads * group, block_size = 16, num_blocks = 2048;
    const int32_t window = trial % 5 == 4 ? 40 : 0;
    meta::StepPlan plan;
    plan.block_size = block_size;
    std::vector<int32_t> pool(num_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    const int32_t num_req = 1 + int32_t(rng() % 8);
    for (int32_t r = 0; r < num_req; ++r) {
      const int kind = int(rng() % 3);  // decode, prefill chunk, tree verify
      const int32_t computed = int32_t(rng() % 1500);
      const int32_t num_new = kind == 0 ? 1 : kind == 1 ? 1 + int32_t(rng() % 150) : 2 + int32_t(rng() % 8);
      testing::append_request(plan, r, computed, num_new,
                              kind == 2 ? testing::random_tree(num_new, rng) : std::vector<int32_t>{}, pool);
    }
    // Small splits: many partials and merges, as decode steps get from the backend.
    const meta::AttentionWorkList list =
        meta::build_attention_work_list(plan, {heads, kv_heads, window}, {kAttentionTileRows, trial % 2 ? 64 : 256});
    const auto q = testing::random_bf16(size_t(plan.num_rows()) * size_t(heads * hd), rng, 2.0f);
    const auto k = testing::random_bf16(size_t(num_blocks) * block_size * size_t(kv_heads * hd), rng, 2.0f);
    const auto v = testing::random_bf16(k.size(), rng, 1.0f);
    auto d_q = testing::to_device(q), d_k = testing::to_device(k), d_v = testing::to_device(v);
    xy::cuda::DevicePlan dplan;
    const xy::cuda::DevicePlanView& view = dplan.upload(plan, {{window, list}}, nullptr);

    // Tasks and merges that would write wrong values if they ran: each real task cut to its
    // span's first key (into the same output rows or partial slot), each merge cut to its first
    // partial.
    std::vector<meta::AttentionTask> bad_tasks = list.tasks;
    for (auto& t : bad_tasks) t.kv_end = t.kv_begin + 1;
    std::vector<meta::MergeGroup> bad_merges = list.merges;
    for (auto& m : bad_merges) m.num_partials = 1;
    if (bad_merges.empty() && !list.tasks.empty())  // reads partial slot 0, NaN-poisoned
      bad_merges.push_back({list.tasks[0].request, 0, list.tasks[0].q_begin, list.tasks[0].q_count, 0, 1});
    auto d_tasks = with_trailing(list.tasks, bad_tasks);
    auto d_merges = with_trailing(list.merges, bad_merges);
    auto d_counts = testing::to_device(std::vector<int32_t>{int32_t(list.tasks.size()), int32_t(list.merges.size())});

    const size_t np = size_t(std::max(list.num_partials, 1));
    DeviceBuffer<uint16_t> d_out(q.size());
    DeviceBuffer<float> d_po(np * kAttentionTileRows * size_t(hd)), d_ps(np * kAttentionTileRows * 2);
    auto run = [&](bool device_counts) {
      testing::poison(d_out);
      testing::poison(d_po);
      testing::poison(d_ps);
      AttentionArgs aa;
      aa.q = reinterpret_cast<const xy::cuda::bf16*>(d_q.get());
      aa.q_row_stride = heads * hd;
      aa.k_cache = reinterpret_cast<const xy::cuda::bf16*>(d_k.get());
      aa.v_cache = reinterpret_cast<const xy::cuda::bf16*>(d_v.get());
      aa.block_size = block_size;
      aa.num_kv_heads = kv_heads;
      aa.head_dim = hd;
      aa.group = group;
      aa.window = window;
      aa.scale = float(1.0 / std::sqrt(double(hd)));
      xy::cuda::bind_attention_plan(aa, view, view.attention[0]);
      aa.out = reinterpret_cast<xy::cuda::bf16*>(d_out.get());
      aa.partial_out = d_po.get();
      aa.partial_max = d_ps.get();
      aa.partial_sum = d_ps.get() + np * kAttentionTileRows;
      if (device_counts) {
        aa.tasks = d_tasks.get();
        aa.num_tasks = int32_t(list.tasks.size() + bad_tasks.size());  // the capacity
        aa.task_count = d_counts.get();
        xy::cuda::launch_attention(aa, nullptr, kernel);
        xy::cuda::launch_attention_merge(aa, d_merges.get(), int32_t(list.merges.size() + bad_merges.size()),
                                         nullptr, d_counts.get() + 1);
      } else {
        xy::cuda::launch_attention(aa, nullptr, kernel);
        xy::cuda::launch_attention_merge(aa, view.attention[0].merges, view.attention[0].num_merges, nullptr);
      }
      return testing::to_host(d_out, q.size());
    };
    const std::vector<uint16_t> plain = run(false), counted = run(true);
    for (size_t i = 0; i < plain.size(); ++i)
      ASSERT_EQ(plain[i], counted[i]) << "trial " << trial << " element " << i << " (row "
                                      << i / size_t(heads * hd) << ")\n" << plan << "\n" << list;
  }
}

// ---- 2. graph steps against eager steps -------------------------------------------------------

constexpr int32_t kBlockSize = 16;
constexpr int32_t kNumBlocks = 2048;
constexpr int32_t kMaxLogitsRows = 256;  // also the largest bucket

using Seq = testing::PlanSequence;

::testing::AssertionResult bitwise_equal(const std::vector<float>& want, const std::vector<float>& got, int64_t vocab) {
  if (want.size() != got.size())
    return ::testing::AssertionFailure() << "sizes " << want.size() << " and " << got.size();
  if (std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (std::memcmp(&want[i], &got[i], sizeof(float)) == 0) ++i;
  size_t differ = 0;
  for (size_t j = 0; j < want.size(); ++j) differ += std::memcmp(&want[j], &got[j], sizeof(float)) != 0;
  return ::testing::AssertionFailure() << differ << " of " << want.size() << " logits differ; first at row "
                                       << i / size_t(vocab) << " logit " << i % size_t(vocab) << ": " << want[i]
                                       << " vs " << got[i];
}

// Largest row-relative L2 difference (a wrong row or mask gives O(1)).
double max_row_rel_error(const std::vector<float>& want, const std::vector<float>& got, int64_t vocab) {
  double worst = 0;
  for (size_t r = 0; r < want.size() / size_t(vocab); ++r) {
    double num = 0, den = 0;
    for (size_t j = r * size_t(vocab); j < (r + 1) * size_t(vocab); ++j) {
      if (!std::isfinite(got[j])) return INFINITY;
      num += double(got[j] - want[j]) * double(got[j] - want[j]);
      den += double(want[j]) * double(want[j]);
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
  }
  return worst;
}

// Qwen3 (q/k norms) with head_dim 64 for the tensor-core kernel, and two windows, full and 48
// (window starts mid-block of the kernel's 64 keys): two work lists a step.
model::ModelConfig tensor_core_config() {
  model::ModelConfig c = model::preset_config("qwen3", "small");
  c.head_dim = 64;
  c.sliding_window = {0, 48, 0, 48};
  return c;
}
// Llama, head_dim 32: the CUDA-core kernel.
model::ModelConfig cuda_core_config() { return model::preset_config("llama", "small"); }

struct GraphCase {
  const char* name;
  model::ModelConfig (*config)();
  bool deterministic;
};

class CudaGraphSteps : public ::testing::TestWithParam<GraphCase> {};

TEST_P(CudaGraphSteps, ReplayedDecodeStepsGiveTheBitsOfEagerSteps) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device";
  const GraphCase& gc = GetParam();
  const model::ModelConfig config = gc.config();
  const fs::path dir = fs::temp_directory_path() / cat("xy_cuda_graph_", gc.name);
  model::write_random_checkpoint(config, dir, 7);
  const auto weights = model::load_model(dir);
  CudaBackendOptions options;
  options.num_kv_blocks = kNumBlocks;
  options.block_size = kBlockSize;
  options.max_num_tokens = 4096;
  options.max_logits_rows = kMaxLogitsRows;
  options.deterministic = gc.deterministic;
  options.cuda_graphs = false;
  CudaBackend eager(*weights, options);
  options.cuda_graphs = true;
  CudaBackend graphs(*weights, options);
  const int64_t vocab = config.vocab_size;
  const std::vector<int32_t> buckets = xy::cuda::decode_graph_buckets(kMaxLogitsRows);
  auto bucket_of = [&](int32_t batch) { return *std::lower_bound(buckets.begin(), buckets.end(), batch); };

  int64_t graph_steps = 0;  // forward calls of the graph backend that are decode-only and fit a bucket
  std::set<int32_t> buckets_used;
  auto forward_graphs = [&](const meta::StepPlan& plan, std::vector<float>& logits) {
    if (xy::cuda::is_decode_only(plan) && plan.num_rows() <= kMaxLogitsRows) {
      ++graph_steps;
      buckets_used.insert(bucket_of(plan.num_rows()));
    }
    graphs.forward(plan, logits);
  };
  // Both backends run the step; logits must be bitwise equal.
  auto run_exact = [&](const meta::StepPlan& plan, const std::string& what) {
    std::vector<float> le, lg;
    eager.forward(plan, le);
    forward_graphs(plan, lg);
    ASSERT_TRUE(bitwise_equal(le, lg, vocab)) << what << ", " << plan.num_rows() << " rows";
  };

  testing::PlanSequences seqs(vocab, 99, kNumBlocks, kBlockSize);
  // 100 sequences: most prompts short, a few past the 512 and 1024 splits (deterministic mode's
  // spans, and merges in decode graphs).
  for (int32_t i = 0; i < 100; ++i) {
    const int32_t len = i == 0 ? 1300 : i == 1 ? 700 : i == 2 ? 530 : 1 + int32_t(seqs.rng()() % 300);
    seqs.add_seq(len);
  }
  {  // prefill in chunks of at most 3000 rows; a prompt's last row gets logits
    int32_t i = 0;
    while (i < seqs.size()) {
      meta::StepPlan p;
      p.block_size = kBlockSize;
      int32_t budget = 3000;
      while (i < seqs.size() && budget > 0) {
        Seq& s = seqs.seq(i);
        const int32_t left = int32_t(s.tokens.size()) - s.computed;
        const int32_t n = std::min(left, budget);
        seqs.add_rows(p, i, n, n == left ? 1 : 0);
        budget -= n;
        if (n == left) ++i;
      }
      run_exact(p, "prefill");
      if (HasFatalFailure()) return;
    }
  }
  // Decodes of `batch` sequences from `first` on (wrapping).
  auto decode_plan = [&](int32_t batch, int32_t first) {
    meta::StepPlan p;
    p.block_size = kBlockSize;
    for (int32_t k = 0; k < batch; ++k) seqs.add_decode(p, (first + k) % seqs.size());
    return p;
  };
  int32_t first = 0;
  // Bucket sizes, each seen more than once (the first step of a bucket captures its graph).
  for (int32_t batch : {1, 1, 2, 4, 2, 8, 16, 8, 24, 32, 48, 96, 96, 32, 4, 1, 64, 64}) {
    run_exact(decode_plan(batch, first), cat("decode of ", batch));
    if (HasFatalFailure()) return;
    first = (first + 7) % seqs.size();
  }
  {  // a decode with a KV block copy: sequence F forks sequence 3 (shares its full blocks,
     // copies its partial last block), decoding beside 7 others
    Seq& src = seqs.seq(3);
    if (src.computed % kBlockSize == 0) {  // make its last block partial
      meta::StepPlan p = decode_plan(1, 3);
      run_exact(p, "decode before the fork");
      if (HasFatalFailure()) return;
    }
    const int32_t f = seqs.add_seq(0);
    Seq& fork = seqs.seq(f);
    const Seq& s3 = seqs.seq(3);
    fork.tokens.assign(s3.tokens.begin(), s3.tokens.begin() + s3.computed);
    fork.computed = s3.computed;
    fork.table.assign(s3.table.begin(), s3.table.begin() + s3.computed / kBlockSize);
    fork.table.push_back(seqs.take_block());
    meta::StepPlan p = decode_plan(7, 40);
    p.kv_copies.push_back({s3.table[size_t(s3.computed / kBlockSize)], fork.table.back(), s3.computed % kBlockSize});
    seqs.add_decode(p, f);
    run_exact(p, "decode with a KV block copy");
    if (HasFatalFailure()) return;
  }
  std::vector<int32_t> drafts;
  {  // a draft-tree verify on sequence 5 beside decodes (runs eagerly in both)
    meta::StepPlan p = decode_plan(6, 60);
    seqs.add_tree(p, 5, {-1, 0, 0, 1, 1, 2}, drafts);
    run_exact(p, "draft tree verify");
    if (HasFatalFailure()) return;
  }
  {  // accept 0 -> 1 -> 4: row 4's KV moves to the slot after row 1; then a decode of 16 with it
    Seq& s = seqs.seq(5);
    const int32_t nc = s.computed;
    for (int32_t r : {0, 1, 4}) s.tokens.push_back(drafts[size_t(r)]);
    meta::StepPlan p;
    p.block_size = kBlockSize;
    const int32_t src = nc + 4, dst = nc + 2;
    p.kv_moves.push_back({s.table[size_t(src / kBlockSize)], src % kBlockSize, s.table[size_t(dst / kBlockSize)],
                          dst % kBlockSize});
    s.computed = nc + 3;
    s.tokens.push_back(seqs.token());
    seqs.add_rows(p, 5, 1, 1);
    for (int32_t k = 0; k < 15; ++k) seqs.add_decode(p, 20 + k);
    run_exact(p, "decode with slot moves");
    if (HasFatalFailure()) return;
  }
  for (int32_t batch : {16, 4, 96, 1}) {
    run_exact(decode_plan(batch, first), cat("decode of ", batch, " again"));
    if (HasFatalFailure()) return;
    first = (first + 11) % seqs.size();
  }

  // Padded batches, last: in the default mode they may leave the two backends' KV a rounding
  // apart. Each runs twice on the graph backend (the second run rewrites the same KV slots with
  // the same values, so it must repeat the first's bits); 50, 70 and 99 open fresh buckets, so
  // there the first run is the eager step that captures and the second a replay.
  for (int32_t batch : {3, 5, 13, 17, 33, 50, 70, 99}) {
    const meta::StepPlan p = decode_plan(batch, first);
    first = (first + 13) % seqs.size();
    std::vector<float> le, lg1, lg2;
    eager.forward(p, le);
    forward_graphs(p, lg1);
    const int64_t replays = graphs.cuda_graph_replays();
    forward_graphs(p, lg2);
    EXPECT_EQ(graphs.cuda_graph_replays(), replays + 1) << "the second run of a bucket's step replays";
    ASSERT_TRUE(bitwise_equal(lg1, lg2, vocab)) << "padded decode of " << batch << " run twice";
    if (gc.deterministic) {
      ASSERT_TRUE(bitwise_equal(le, lg1, vocab)) << "padded decode of " << batch << " (deterministic)";
    } else {
      // bf16 activations through 4 layers after a different GEMM rounding: ~1e-3; a wrong row
      // or mask gives O(1).
      const double err = max_row_rel_error(le, lg1, vocab);
      EXPECT_LT(err, 2e-2) << "padded decode of " << batch;
      char line[160];
      std::snprintf(line, sizeof line, "[graphs] %s: padded decode of %d (bucket %d): max row rel. L2 vs eager %.3e",
                    gc.name, batch, bucket_of(batch), err);
      testing::gpu_report(line);
    }
  }

  testing::gpu_report(cat("[graphs] ", gc.name, ": ", graph_steps, " decode steps on graphs: ",
                          graphs.cuda_graph_replays(), " replays, ", graphs.cuda_graph_captures(), " captures, ",
                          buckets_used.size(), " buckets"));
  EXPECT_EQ(graphs.cuda_graph_replays() + graphs.cuda_graph_captures(), graph_steps)
      << "every decode-only step within the buckets runs as a graph (replayed or captured)";
  EXPECT_GE(graphs.cuda_graph_captures(), int64_t(buckets_used.size()));
  EXPECT_GT(graphs.cuda_graph_replays(), graph_steps / 2);
  EXPECT_EQ(eager.cuda_graph_replays() + eager.cuda_graph_captures(), 0);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, CudaGraphSteps,
    ::testing::Values(GraphCase{"tensor_core", &tensor_core_config, false},
                      GraphCase{"tensor_core_deterministic", &tensor_core_config, true},
                      GraphCase{"cuda_core", &cuda_core_config, false},
                      GraphCase{"cuda_core_deterministic", &cuda_core_config, true}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(CudaGraphBuckets, CoverEveryBatchUpToTheLargest) {
  const std::vector<int32_t> b = xy::cuda::decode_graph_buckets(1000);
  EXPECT_EQ(std::vector<int32_t>(b.begin(), b.begin() + 9), (std::vector<int32_t>{1, 2, 4, 8, 16, 24, 32, 48, 64}));
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
  EXPECT_EQ(std::adjacent_find(b.begin(), b.end()), b.end());
  EXPECT_EQ(b.back(), 1000);
  EXPECT_NE(std::find(b.begin(), b.end(), 256), b.end());
  EXPECT_NE(std::find(b.begin(), b.end(), 960), b.end());
  EXPECT_EQ(xy::cuda::decode_graph_buckets(3), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(xy::cuda::decode_graph_buckets(1), (std::vector<int32_t>{1}));
  EXPECT_TRUE(xy::cuda::decode_graph_buckets(0).empty());
}

}  // namespace
}  // namespace xy::backend::cuda
