// The CUDA backend: runs a StepPlan through the model on one GPU in bf16 (fp32 accumulation,
// fp32 residual stream), over a paged bf16 KV cache, with the same semantics as the CPU
// reference (backend/cpu): KV slots, draft trees, KV block copies and slot moves, sliding
// windows, q/k norms, biases, RoPE variants, tied heads.
//
// Per step: the plan and its attention work lists are packed on the host and uploaded in one
// copy (device_plan.h); then the KV housekeeping, the embedding, every layer (norm, qkv GEMM,
// prologue with RoPE and the KV write, attention over the work list, merge, o_proj, norm,
// gate/up GEMM, SiLU-and-mul, down GEMM) and the final norm + LM head on the logits rows only;
// the logits come back to the host in fp32.
//
// Decode-only steps run as CUDA graphs, one per batch-size bucket (cuda_graphs.h), unless
// options.cuda_graphs is off; a replay computes exactly what the same padded step run eagerly
// computes. options.deterministic makes a row's logits independent of the batch around it
// (DESIGN.md, "Correctness"): KV spans split at fixed positions as on the CPU backend, attention
// reduced in one order for every tile (kernels.h), cuBLASLt held to one algorithm per shape.
//
// Tensor parallelism: with a communicator, the backend runs one rank's shard of the model
// (parallel/shard.h): its attention heads, MLP columns and vocabulary rows, and a KV cache of
// its KV heads only (block tables are the same on every rank). The o_proj and down_proj outputs
// are partial sums over the rank's heads or columns: they are all-reduced in bf16, in place,
// before the fused residual add + RMSNorm that consumes them (as vLLM and Megatron-LM reduce,
// in the activation dtype; reducing in fp32 would need fp32 GEMM outputs, which SmoothGEMM routes
// to cuBLASLt only, and a kernel of its own for the add). The vocabulary-parallel embedding is
// all-reduced in fp32 (exact: one rank's row plus zeros); the LM head's logits slices are
// all-gathered and laid side by side (vocab_parallel.h), so every rank ends the step with the
// whole [rows, V] logits, and forward_and_sample samples them. Collectives go on the backend's
// stream (options.bind_communicator_stream), so they are ordered with its kernels and decode
// graphs capture them. Without a communicator none of this runs: no extra kernel or copy.
//
// Threading: forward() runs on the engine thread only (a tensor-parallel rank's thread); all
// work goes on the backend's stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/backend/cuda/cuda_graphs.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/device_sampler.h"
#include "xyserve/backend/cuda/smooth_gemm.h"
#include "xyserve/meta/attention_work_list.h"
#include "xyserve/model/weights.h"
#include "xyserve/parallel/communicator.h"
#include "xyserve/parallel/shard.h"

namespace xy::backend::cuda {

struct CudaBackendOptions {
  // > 0: exactly this many KV blocks. 0: as many as fit in gpu_memory_utilization of the GPU's
  // memory after the weights and the step workspace.
  int32_t num_kv_blocks = 0;
  double gpu_memory_utilization = 0.9;
  int32_t block_size = 16;
  int device = 0;
  int32_t max_num_tokens = 8192;   // rows per step: sizes the step workspace
  int32_t max_logits_rows = 1024;  // logits rows per step
  // Decode-only steps of up to this many requests (and max_logits_rows, max_num_tokens) replay
  // CUDA graphs captured per bucket; vLLM's --enforce-eager is cuda_graphs = false. 512 as
  // vLLM's largest capture size: past it a decode step is long enough (~40 ms on an H200 for
  // Llama-3-8B) that its ~325 launches are lost in it.
  bool cuda_graphs = true;
  int32_t cuda_graph_max_batch = 512;
  // Batch-invariant (deterministic) mode: a row's result does not depend on which rows share
  // its step, so greedy output is the same batched or alone, chunked or not, with prefix hits
  // or speculation or not. Costs speed: fixed 512-position KV splits, one cuBLASLt algorithm
  // per GEMM shape, no key split of small attention tiles.
  bool deterministic = false;
  // SmoothGEMM's dispatch table (`xyserve tune`); empty: every GEMM on cuBLASLt (--gemm cublas).
  meta::GemmTable gemm_table;
  // Attention kernels (kernels.h). kAuto: steps whose every request brings at most
  // kDecodeMaxRows / group query tokens (decodes, short verifies) run the decode-specialised
  // kernel, other steps the wgmma kernel, deterministic mode the mma.sync kernel throughout;
  // head dims or block sizes a kernel lacks fall back to the next. kTensorCore: the mma.sync
  // kernel for every step (the first version, kept for comparison).
  xy::cuda::AttentionKernel attention = xy::cuda::AttentionKernel::kAuto;
  // The layer's four GEMMs launched with programmatic dependent launch: the kernels before them
  // (norm, attention or merge, SiLU-mul) let dependents start early, and a SmoothGEMM kernel
  // streams its first weights before it waits for their output (gemm.h, GemmArgs::pdl). cuBLASLt
  // routes launch normally whatever this says.
  bool pdl = true;
  // Tensor parallelism: the weights are rank shard.rank's shard of shard.size (their config has
  // the rank's head counts, intermediate size and V' vocabulary rows), and `communicator` (that
  // rank's, of a group of that size) joins the ranks' partial results. Null: the whole model,
  // and the two fields below are unused.
  parallel::Communicator* communicator = nullptr;
  parallel::ShardInfo shard{};
  // Required with a communicator: the constructor calls it once with the backend's stream, to
  // have the communicator enqueue its collectives there (NcclCommunicator::set_stream). The
  // stream is non-blocking, so collectives anywhere else would not be ordered with its kernels.
  std::function<void(cudaStream_t)> bind_communicator_stream;
};

class CudaBackend : public Backend {
 public:
  // Uploads every weight as bf16 (bf16 as stored; f16 and f32 converted on the host). Throws
  // ModelError naming the tensor when a shape does not match the config, InvalidArgument for
  // options the GPU cannot hold, CudaError for a CUDA failure.
  CudaBackend(const model::ModelWeights& weights, const CudaBackendOptions& options);
  ~CudaBackend() override;

  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override;
  // No copy of the logits to the host: at batch 256 and a 128k vocabulary they are 131 MB a step.
  void forward_without_logits(const meta::StepPlan& plan) override;
  // run_step, then the DeviceSampler on the logits rows: only tokens, logprobs and the logits
  // rows the sampling plan asks for come back. Device time between the step's first command and
  // the sampler's last is added to device_busy_s().
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override;
  std::optional<double> device_busy_s() const override { return device_busy_s_; }

  int64_t vocab_size() const override { return vocab_size_; }  // the whole model's
  int32_t num_kv_blocks() const override { return num_kv_blocks_; }
  int32_t block_size() const override { return block_size_; }
  // The config of the weights it runs: under tensor parallelism, the shard's.
  const model::ModelConfig& config() const { return config_; }

  // Bytes of weights on the GPU, and of KV per token (all layers, K and V): for MBU figures.
  size_t weight_bytes() const { return weight_bytes_; }
  size_t kv_bytes_per_token() const;
  cudaStream_t stream() const { return stream_.get(); }
  // Enqueues the step without copying logits back or synchronising (benchmarks time this with
  // events); forward() = run_step + copy + sync.
  void run_step(const meta::StepPlan& plan);
  // The logits of the last run_step, [num_logits_rows, vocab_size()] fp32 on the device (a graph
  // step leaves padding rows' garbage after them: read the plan's num_logits_rows only).
  const float* device_logits() const { return logits_.get(); }
  // Decode steps that replayed a graph, and those that ran eagerly to capture one (a bucket's
  // first step, or its first after a buffer moved).
  int64_t cuda_graph_replays() const { return graph_replays_; }
  int64_t cuda_graph_captures() const { return graph_captures_; }

 private:
  using bf16 = xy::cuda::bf16;
  struct Layer {
    xy::cuda::DeviceBuffer<bf16> input_norm, qkv, qkv_bias, q_norm, k_norm, o_proj, post_norm,
        gate_up, down;
    int32_t window = 0;
  };

  void check_plan(const meta::StepPlan& plan) const;
  // The attention kernel of a step (CudaBackendOptions::attention).
  xy::cuda::AttentionKernel choose_attention_kernel(const meta::StepPlan& plan) const;
  // Chooses the kernel and the KV split, builds the work lists and grows the partial buffers.
  void plan_attention(const meta::StepPlan& plan);
  void run_kv_copies_and_moves(const xy::cuda::DevicePlanView& view);
  // Everything after the KV housekeeping: embedding, layers, final norm and LM head. What a
  // decode graph captures.
  void run_forward(const xy::cuda::DevicePlanView& view);
  void run_layer(const xy::cuda::DevicePlanView& view, int64_t index);
  void embed_tokens(const xy::cuda::DevicePlanView& view);
  // Completes a row-parallel projection's output, [m, hidden] bf16: every rank's partial, summed.
  void all_reduce_projection(xy::cuda::bf16* rows, int32_t m);
  void project_logits(const xy::cuda::DevicePlanView& view);  // last_ rows -> logits_
  void run_decode_graph(const meta::StepPlan& plan, xy::cuda::DecodeGraph& graph);

  model::ModelConfig config_;
  CudaBackendOptions options_;
  parallel::Communicator* comm_ = nullptr;  // null: the whole model
  parallel::ShardInfo shard_;
  int64_t vocab_size_ = 0;  // the whole model's; config_.vocab_size is this rank's rows
  int32_t block_size_ = 16;
  int32_t num_kv_blocks_ = 0;  // the engine's; one more, past them, takes padding rows' KV
  size_t kv_plane_elems_ = 0;  // one layer's K (or V): (num_kv_blocks_ + 1) blocks
  int32_t trash_slot_ = 0;     // first slot of the padding block
  int64_t q_dim_ = 0, kv_dim_ = 0, qkv_dim_ = 0;
  size_t weight_bytes_ = 0;

  int device_ = 0;  // made current before anything below is created
  xy::cuda::Stream stream_;
  xy::cuda::SmoothGemm gemm_;
  xy::cuda::DeviceSampler sampler_;
  xy::cuda::Event step_start_{cudaEventDefault}, step_end_{cudaEventDefault};
  double device_busy_s_ = 0.0;
  xy::cuda::DeviceBuffer<bf16> embed_, final_norm_, lm_head_;  // lm_head_ empty when tied
  std::vector<Layer> layers_;
  xy::cuda::DeviceBuffer<double> inv_freq_;  // [head_dim / 2], the CPU backend's values
  xy::cuda::DeviceBuffer<bf16> kv_cache_;   // [layers][K, V][blocks * block_size][kv_heads][head_dim]

  // Step workspace, sized once for max_num_tokens rows.
  xy::cuda::DeviceBuffer<float> residual_;  // [M, hidden] fp32
  xy::cuda::DeviceBuffer<bf16> normed_, qkv_, attn_, proj_, gate_up_, act_, last_;
  xy::cuda::DeviceBuffer<float> logits_;    // [max_logits_rows, vocab_size_]
  // Tensor parallelism only: this rank's logits slice [rows, V'] and every rank's, gathered:
  // [size, rows, V'] (rows: the step's logits rows).
  xy::cuda::DeviceBuffer<float> rank_logits_, gathered_logits_;
  xy::cuda::DeviceBuffer<float> partial_out_, partial_stats_;  // grown to the step's partials
  uint64_t partials_generation_ = 0;  // bumped when they move (graphs over them are stale)

  meta::WorkListOptions work_options_{xy::cuda::kAttentionTileRows, 512};
  xy::cuda::AttentionKernel attention_kernel_ = xy::cuda::AttentionKernel::kTensorCore;  // this step's
  int32_t fixed_kv_split_ = 512;  // the CPU backend's split, used in deterministic mode
  std::vector<int32_t> windows_;  // distinct layer windows
  std::vector<std::pair<int32_t, meta::AttentionWorkList>> work_lists_;
  xy::cuda::DevicePlan device_plan_;
  int32_t last_num_logits_ = 0;
  int num_sms_ = 0;
  int l2_bytes_ = 0;

  std::vector<int32_t> graph_buckets_;                // empty: no graphs
  std::vector<xy::cuda::DecodeGraph> decode_graphs_;  // one per bucket
  int64_t graph_replays_ = 0, graph_captures_ = 0;
};

}  // namespace xy::backend::cuda
