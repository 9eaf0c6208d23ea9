// The fp32 reference backend: runs a StepPlan through the model on the CPU over a paged KV
// cache: plain rows (prefill chunks, decodes), draft-tree verify rows, and the plan's KV block
// copies and slot moves. Every row's result is bitwise independent of the batch it is in
// (gemm.h, attention.h), so batched = alone, chunked prefill = unchunked and a verified draft
// row = the same token decoded alone hold exactly.
//
// Tensor parallelism: with a communicator, the backend runs one rank's shard of the model
// (parallel/shard.h): its attention heads, MLP columns and vocabulary rows. Partial sums are
// all-reduced after o_proj and after down_proj (before the residual adds) and after the
// vocabulary-parallel embedding; the LM head's logits slices are all-gathered, so every rank
// ends the step with the whole logits. Its KV cache holds its KV heads only.
//
// Threading: forward() runs on the engine thread only (a tensor-parallel rank's thread); it
// spreads GEMM column blocks and attention tasks over the backend's own persistent pool
// (options.num_threads).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/backend/cpu/attention.h"
#include "xyserve/backend/cpu/kv_cache.h"
#include "xyserve/backend/cpu/ops.h"
#include "xyserve/backend/cpu/thread_pool.h"
#include "xyserve/model/weights.h"
#include "xyserve/parallel/communicator.h"
#include "xyserve/parallel/shard.h"

namespace xy::backend::cpu {

struct CpuBackendOptions {
  int32_t num_kv_blocks = 0;  // > 0
  int32_t block_size = 16;
  int num_threads = 0;  // 0: hardware concurrency
  // Tensor parallelism: the weights are rank shard.rank's shard of shard.size, and `communicator`
  // (that rank's, of a group of that size) joins the ranks' partial results. Null: the whole
  // model, and `shard` is unused.
  parallel::Communicator* communicator = nullptr;
  parallel::ShardInfo shard{};
};

class CpuBackend : public Backend {
 public:
  // Converts every weight to fp32 (owned; `weights` may be freed afterwards). Throws ModelError
  // naming the tensor when a shape does not match the config.
  CpuBackend(const model::ModelWeights& weights, const CpuBackendOptions& options);
  ~CpuBackend() override;

  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override;
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override;

  int64_t vocab_size() const override { return vocab_size_; }  // the whole model's
  int32_t num_kv_blocks() const override { return kv_.num_blocks(); }
  int32_t block_size() const override { return kv_.block_size(); }
  // The config of the weights it runs: under tensor parallelism, the shard's (its head counts,
  // intermediate size and vocabulary rows).
  const model::ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    std::vector<float> input_norm;  // [hidden]
    std::vector<float> qkv;         // [q_dim + 2 * kv_dim, hidden]: q_proj, k_proj, v_proj stacked
    std::vector<float> qkv_bias;    // [q_dim + 2 * kv_dim] or empty
    std::vector<float> q_norm;      // [head_dim] or empty
    std::vector<float> k_norm;      // [head_dim] or empty
    std::vector<float> o_proj;      // [hidden, q_dim]
    std::vector<float> post_norm;   // [hidden]
    std::vector<float> gate_up;     // [2 * intermediate, hidden]: gate_proj, up_proj stacked
    std::vector<float> down;        // [hidden, intermediate]
    int32_t window = 0;             // sliding window in tokens, 0: full
  };

  void check_plan(const meta::StepPlan& plan) const;
  void reserve_rows(int64_t m, int64_t num_logits_rows);
  void run_layer(const meta::StepPlan& plan, const Layer& layer, int64_t index);
  void embed_tokens(const meta::StepPlan& plan);
  // Completes a row-parallel layer's output: the sum of every rank's partial [M, hidden].
  void all_reduce_rows(float* rows, int64_t m);
  void project_logits(int64_t num_logits, float* logits);  // last_ rows -> [rows, vocab_size_]

  model::ModelConfig config_;
  parallel::Communicator* comm_ = nullptr;  // null: the whole model
  parallel::ShardInfo shard_;
  int64_t vocab_size_ = 0;  // the whole model's; config_.vocab_size is this rank's rows
  int64_t q_dim_ = 0, kv_dim_ = 0, qkv_dim_ = 0;
  std::vector<float> embed_;  // [vocab rows, hidden]: config_.vocab_size rows
  std::vector<float> final_norm_;
  std::vector<float> lm_head_;  // [vocab rows, hidden]; empty when tied to embed_
  std::vector<Layer> layers_;
  Rope rope_;
  PagedKvCache kv_;
  ThreadPool pool_;
  const meta::AttentionWorkList& work_list_for(int32_t window) const;

  AttentionRunner attention_;
  // Tiles of 64 rows as on the GPU; KV split every 512 positions (a multiple of every block
  // size the engine allows), fixed by position so that results do not depend on the batch.
  meta::WorkListOptions work_options_{64, 512};
  std::vector<std::pair<int32_t, meta::AttentionWorkList>> work_lists_;  // per window, this step

  // Step buffers, grown when M grows and otherwise reused.
  int64_t capacity_rows_ = 0;
  std::vector<float> hidden_, normed_, qkv_, attn_, proj_, gate_up_, act_, cos_, sin_, last_;
  std::vector<float> step_logits_;  // forward_and_sample's
  // Tensor parallelism: this rank's logits [rows, vocab rows] and every rank's, gathered:
  // [size, rows, vocab rows].
  std::vector<float> rank_logits_, gathered_logits_;
};

}  // namespace xy::backend::cpu
