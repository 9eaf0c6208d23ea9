#include "xyserve/backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>

#include "xyserve/backend/cpu/ops.h"
#include "xyserve/backend/cuda/decode_split.h"
#include "xyserve/backend/cuda/vocab_parallel.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/common/log.h"

namespace xy::backend::cuda {
namespace {

using xy::cuda::bf16;
using xy::cuda::DeviceBuffer;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void check_tensor(const model::WeightTensor& t, const std::vector<int64_t>& shape) {
  if (!t.present()) throw ModelError(cat("tensor '", t.name, "' is missing"));
  if (t.shape != shape)
    throw ModelError(cat("tensor '", t.name, "' has wrong shape; expected ", shape_str(shape),
                         ", got ", shape_str(t.shape)));
  XY_CHECK(t.num_bytes == size_t(t.num_elements()) * dtype_size(t.dtype), "tensor ", t.name, " byte size");
}

// Copies `t` as bf16 into dst at element `offset`. bf16 goes straight from the mapped file;
// f16 and f32 are converted on the host in chunks (fp32 -> bf16 rounds to nearest even).
void upload_into(const model::WeightTensor& t, const std::vector<int64_t>& shape, bf16* dst,
                 size_t offset) {
  check_tensor(t, shape);
  const size_t n = size_t(t.num_elements());
  if (t.dtype == DType::kBF16) {
    XY_CUDA_CHECK(cudaMemcpy(dst + offset, t.data, n * 2, cudaMemcpyHostToDevice));
    return;
  }
  constexpr size_t kChunk = size_t(1) << 22;
  std::vector<float> f32(std::min(n, kChunk));
  std::vector<uint16_t> b16(f32.size());
  const auto* src = static_cast<const std::byte*>(t.data);
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t c = std::min(kChunk, n - i);
    convert_to_f32(t.dtype, src + i * dtype_size(t.dtype), f32.data(), c);
    for (size_t j = 0; j < c; ++j) b16[j] = f32_to_bf16(f32[j]);
    XY_CUDA_CHECK(cudaMemcpy(dst + offset + i, b16.data(), c * 2, cudaMemcpyHostToDevice));
  }
}

DeviceBuffer<bf16> upload(const model::WeightTensor& t, const std::vector<int64_t>& shape) {
  DeviceBuffer<bf16> buf(size_t(t.present() ? t.num_elements() : 0));
  upload_into(t, shape, buf.get(), 0);
  return buf;
}

// Makes `device` current for this thread (before the stream and buffers are made) and returns it.
int select_device(int device) {
  XY_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

}  // namespace

CudaBackend::CudaBackend(const model::ModelWeights& weights, const CudaBackendOptions& options)
    : config_(weights.config),
      options_(options),
      comm_(options.communicator),
      shard_(options.shard),
      vocab_size_(options.communicator ? options.shard.vocab_size : weights.config.vocab_size),
      block_size_(options.block_size),
      device_(select_device(options.device)),
      gemm_(options.gemm_table, std::max(options.max_num_tokens, options.max_logits_rows)) {
  const auto& c = config_;
  if (options.block_size <= 0) throw InvalidArgument(cat("cuda backend: block_size ", options.block_size));
  if (options.max_num_tokens <= 0 || options.max_logits_rows <= 0)
    throw InvalidArgument("cuda backend: max_num_tokens and max_logits_rows must be positive");
  XY_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0, "heads ", c.num_heads,
           " kv_heads ", c.num_kv_heads);
  XY_CHECK(int64_t(weights.layers.size()) == c.num_layers, "layers ", weights.layers.size());
  if (c.head_dim % 8 != 0)
    throw ModelError(cat("cuda backend: head_dim ", c.head_dim, " is not a multiple of 8"));
  if (comm_) {
    XY_CHECK(comm_->size() == shard_.size && comm_->rank() == shard_.rank, "communicator rank ",
             comm_->rank(), " of ", comm_->size(), " for shard ", shard_.rank, " of ", shard_.size);
    XY_CHECK(c.vocab_size == shard_.vocab_per_rank && shard_.vocab_per_rank * shard_.size >= vocab_size_,
             "shard vocabulary rows ", c.vocab_size);
    XY_CHECK(bool(options.bind_communicator_stream), "a communicator without bind_communicator_stream");
    options.bind_communicator_stream(stream_.get());
  }
  const int64_t h = c.hidden_size, hd = c.head_dim, inter = c.intermediate_size;
  q_dim_ = c.num_heads * hd;
  kv_dim_ = c.num_kv_heads * hd;
  qkv_dim_ = q_dim_ + 2 * kv_dim_;
  fixed_kv_split_ = (512 + block_size_ - 1) / block_size_ * block_size_;  // as the CPU backend
  work_options_.kv_split = fixed_kv_split_;
  if (options.deterministic) gemm_.set_batch_invariant(true);
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, options.device));
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes_, cudaDevAttrL2CacheSize, options.device));
  work_options_.tile_rows = xy::cuda::kAttentionTileRows;
  if (c.num_heads / c.num_kv_heads > xy::cuda::kAttentionTileRows)
    throw ModelError(cat("cuda backend: GQA group ", c.num_heads / c.num_kv_heads, " exceeds ",
                         xy::cuda::kAttentionTileRows));

  embed_ = upload(weights.embed_tokens, {c.vocab_size, h});
  final_norm_ = upload(weights.final_norm, {h});
  const bool tied = weights.lm_head.data == weights.embed_tokens.data;
  if (!tied) lm_head_ = upload(weights.lm_head, {c.vocab_size, h});
  layers_.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const model::LayerWeights& w = weights.layers[size_t(i)];
    Layer& l = layers_[size_t(i)];
    l.input_norm = upload(w.input_norm, {h});
    l.qkv.reset(size_t(qkv_dim_ * h));
    upload_into(w.q_proj, {q_dim_, h}, l.qkv.get(), 0);
    upload_into(w.k_proj, {kv_dim_, h}, l.qkv.get(), size_t(q_dim_ * h));
    upload_into(w.v_proj, {kv_dim_, h}, l.qkv.get(), size_t((q_dim_ + kv_dim_) * h));
    if (c.qkv_bias) {
      l.qkv_bias.reset(size_t(qkv_dim_));
      upload_into(w.q_bias, {q_dim_}, l.qkv_bias.get(), 0);
      upload_into(w.k_bias, {kv_dim_}, l.qkv_bias.get(), size_t(q_dim_));
      upload_into(w.v_bias, {kv_dim_}, l.qkv_bias.get(), size_t(q_dim_ + kv_dim_));
    }
    if (c.qk_norm) {
      l.q_norm = upload(w.q_norm, {hd});
      l.k_norm = upload(w.k_norm, {hd});
    }
    l.o_proj = upload(w.o_proj, {h, q_dim_});
    l.post_norm = upload(w.post_attention_norm, {h});
    l.gate_up.reset(size_t(2 * inter * h));
    upload_into(w.gate_proj, {inter, h}, l.gate_up.get(), 0);
    upload_into(w.up_proj, {inter, h}, l.gate_up.get(), size_t(inter * h));
    l.down = upload(w.down_proj, {h, inter});
    l.window = size_t(i) < c.sliding_window.size() ? int32_t(c.sliding_window[size_t(i)]) : 0;
    if (std::find(windows_.begin(), windows_.end(), l.window) == windows_.end()) windows_.push_back(l.window);
    weight_bytes_ += (l.input_norm.size() + l.qkv.size() + l.qkv_bias.size() + l.q_norm.size() +
                      l.k_norm.size() + l.o_proj.size() + l.post_norm.size() + l.gate_up.size() +
                      l.down.size()) * sizeof(bf16);
  }
  weight_bytes_ += (embed_.size() + final_norm_.size() + lm_head_.size()) * sizeof(bf16);

  // The CPU backend's inv_freq (ops.cpp, in double), so both rotate by the same angles.
  const backend::cpu::Rope rope(c.rope, hd);
  inv_freq_.reset(rope.inv_freq().size());
  XY_CUDA_CHECK(cudaMemcpy(inv_freq_.get(), rope.inv_freq().data(), inv_freq_.bytes(), cudaMemcpyHostToDevice));

  const size_t rows = size_t(options.max_num_tokens);
  residual_.reset(rows * size_t(h));
  normed_.reset(rows * size_t(h));
  proj_.reset(rows * size_t(h));
  qkv_.reset(rows * size_t(qkv_dim_));
  attn_.reset(rows * size_t(q_dim_));
  gate_up_.reset(rows * size_t(2 * inter));
  act_.reset(rows * size_t(inter));
  last_.reset(size_t(options.max_logits_rows) * size_t(h));
  logits_.reset(size_t(options.max_logits_rows) * size_t(vocab_size_));
  if (comm_) {
    rank_logits_.reset(size_t(options.max_logits_rows) * size_t(c.vocab_size));
    gathered_logits_.reset(size_t(comm_->size()) * rank_logits_.size());
  }
  // A graph step's padding rows get no attention task, so their rows of attn_ keep whatever was
  // there: zeros from here on, or an earlier step's (finite) output, never uninitialised bits.
  XY_CUDA_CHECK(cudaMemsetAsync(attn_.get(), 0, attn_.bytes(), stream_.get()));

  // The KV cache takes what is left of the memory budget (vLLM's gpu_memory_utilization), less
  // one block past the engine's for the KV of graph steps' padding rows.
  const size_t block_bytes = size_t(block_size_) * kv_bytes_per_token();
  if (options.num_kv_blocks > 0) {
    num_kv_blocks_ = options.num_kv_blocks;
  } else {
    size_t free_bytes = 0, total_bytes = 0;
    XY_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double budget = double(total_bytes) * options.gpu_memory_utilization - double(total_bytes - free_bytes);
    if (budget < 2.0 * double(block_bytes))
      throw InvalidArgument(cat("cuda backend: no room for the KV cache: ", (total_bytes - free_bytes) >> 20,
                                " MiB in use of ", total_bytes >> 20, " MiB, gpu_memory_utilization ",
                                options.gpu_memory_utilization));
    num_kv_blocks_ = int32_t(std::min<double>(budget / double(block_bytes) - 1.0, 1 << 30));
  }
  kv_plane_elems_ = size_t(num_kv_blocks_ + 1) * size_t(block_size_) * size_t(kv_dim_);
  trash_slot_ = num_kv_blocks_ * block_size_;
  kv_cache_.reset(size_t(num_kv_blocks_ + 1) * block_bytes / sizeof(bf16));
  // Zero-filled as on the CPU: a slot never written reads as 0, never as garbage (or NaN).
  XY_CUDA_CHECK(cudaMemsetAsync(kv_cache_.get(), 0, kv_cache_.bytes(), stream_.get()));
  XY_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));

  if (options.cuda_graphs) {
    graph_buckets_ = xy::cuda::decode_graph_buckets(
        std::min({options.cuda_graph_max_batch, options.max_logits_rows, options.max_num_tokens}));
    decode_graphs_.reserve(graph_buckets_.size());
    for (int32_t rows : graph_buckets_) decode_graphs_.emplace_back(rows);
  }
}

// Graphs and buffers go only once the stream has finished with them.
CudaBackend::~CudaBackend() { (void)cudaStreamSynchronize(stream_.get()); }

size_t CudaBackend::kv_bytes_per_token() const {
  return size_t(config_.num_layers) * 2 * size_t(kv_dim_) * sizeof(bf16);
}

void CudaBackend::check_plan(const meta::StepPlan& plan) const {
  if (plan.block_size != block_size_)
    throw InvalidArgument(cat("cuda backend: plan block_size ", plan.block_size, " != ", block_size_));
  if (plan.num_rows() > options_.max_num_tokens)
    throw InvalidArgument(cat("cuda backend: step of ", plan.num_rows(), " rows exceeds max_num_tokens ",
                              options_.max_num_tokens));
  if (plan.num_logits_rows() > options_.max_logits_rows)
    throw InvalidArgument(cat("cuda backend: step of ", plan.num_logits_rows(),
                              " logits rows exceeds max_logits_rows ", options_.max_logits_rows));
  // The checks every backend relies on (meta/), then token ids: every id the device will
  // dereference is checked here, since a bad one would be a silent out-of-bounds access.
  meta::check_step_plan(plan, block_size_, num_kv_blocks_);
  for (size_t i = 0; i < plan.token_ids.size(); ++i)
    XY_CHECK(plan.token_ids[i] >= 0 && plan.token_ids[i] < vocab_size_, "token id ",
             plan.token_ids[i], " at row ", i, " outside [0, ", vocab_size_, ")");
}

void CudaBackend::run_layer(const xy::cuda::DevicePlanView& view, int64_t index) {
  const auto& c = config_;
  const Layer& l = layers_[size_t(index)];
  const cudaStream_t s = stream_.get();
  const int32_t m = view.num_rows;
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  const float eps = float(c.rms_norm_eps);
  bf16* k_cache = kv_cache_.get() + size_t(index) * 2 * kv_plane_elems_;
  bf16* v_cache = k_cache + kv_plane_elems_;

  // x += down(...) of the previous layer (none before layer 0); normed = norm(x)
  xy::cuda::launch_add_rms_norm(residual_.get(), index == 0 ? nullptr : proj_.get(), l.input_norm.get(),
                                nullptr, m, h, eps, normed_.get(), s);
  gemm_.run(normed_.get(), l.qkv.get(), qkv_.get(), xy::cuda::GemmOut::kBF16, m, int(qkv_dim_), int(h), s, options_.pdl);
  xy::cuda::QkvPrologueArgs pa;
  pa.qkv = qkv_.get();
  pa.m = m;
  pa.num_heads = int32_t(c.num_heads);
  pa.num_kv_heads = int32_t(c.num_kv_heads);
  pa.head_dim = int32_t(c.head_dim);
  pa.bias = l.qkv_bias.get();
  pa.q_norm = l.q_norm.get();
  pa.k_norm = l.k_norm.get();
  pa.eps = eps;
  pa.inv_freq = inv_freq_.get();
  pa.positions = view.positions;
  pa.kv_slots = view.kv_slots;
  pa.k_cache = k_cache;
  pa.v_cache = v_cache;
  xy::cuda::launch_qkv_prologue(pa, s);

  const auto& work = view.for_window(l.window);
  xy::cuda::AttentionArgs aa;
  aa.q = qkv_.get();
  aa.q_row_stride = qkv_dim_;
  aa.num_q_rows = m;
  aa.k_cache = k_cache;
  aa.v_cache = v_cache;
  aa.block_size = block_size_;
  aa.num_kv_heads = int32_t(c.num_kv_heads);
  aa.head_dim = int32_t(c.head_dim);
  aa.group = int32_t(c.num_heads / c.num_kv_heads);
  aa.window = l.window;
  aa.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  xy::cuda::bind_attention_plan(aa, view, work);
  aa.batch_invariant = options_.deterministic;
  aa.out = attn_.get();
  aa.partial_rows = work_options_.tile_rows;
  aa.partial_out = partial_out_.get();
  aa.partial_max = partial_stats_.get();
  aa.partial_sum = partial_stats_.get() + (partial_stats_.size() / 2);
  xy::cuda::launch_attention(aa, s, attention_kernel_);
  xy::cuda::launch_attention_merge(aa, work.merges, work.num_merges, s, work.merge_count);
  gemm_.run(attn_.get(), l.o_proj.get(), proj_.get(), xy::cuda::GemmOut::kBF16, m, int(h), int(q_dim_), s, options_.pdl);
  all_reduce_projection(proj_.get(), m);

  xy::cuda::launch_add_rms_norm(residual_.get(), proj_.get(), l.post_norm.get(), nullptr, m, h, eps,
                                normed_.get(), s);
  gemm_.run(normed_.get(), l.gate_up.get(), gate_up_.get(), xy::cuda::GemmOut::kBF16, m, int(2 * inter), int(h), s, options_.pdl);
  xy::cuda::launch_silu_mul(gate_up_.get(), m, inter, act_.get(), s);
  gemm_.run(act_.get(), l.down.get(), proj_.get(), xy::cuda::GemmOut::kBF16, m, int(h), int(inter), s, options_.pdl);
  all_reduce_projection(proj_.get(), m);  // added by the next layer's first norm, or the final norm
}

void CudaBackend::all_reduce_projection(bf16* rows, int32_t m) {
  if (comm_) comm_->all_reduce_sum(rows, int64_t(m) * config_.hidden_size, DType::kBF16);
}

void CudaBackend::embed_tokens(const xy::cuda::DevicePlanView& view) {
  const auto& c = config_;
  const cudaStream_t s = stream_.get();
  if (!comm_) {
    xy::cuda::launch_embedding(embed_.get(), c.hidden_size, view.token_ids, view.num_rows, residual_.get(), s);
    return;
  }
  xy::cuda::launch_vocab_parallel_embedding(embed_.get(), shard_.vocab_begin, c.vocab_size, c.hidden_size,
                                            view.token_ids, view.num_rows, residual_.get(), s);
  comm_->all_reduce_sum(residual_.get(), int64_t(view.num_rows) * c.hidden_size);
}

void CudaBackend::project_logits(const xy::cuda::DevicePlanView& view) {
  const auto& c = config_;
  const cudaStream_t s = stream_.get();
  const bf16* head = lm_head_.size() ? lm_head_.get() : embed_.get();
  const int32_t rows = view.num_logits_rows;
  if (!comm_) {
    gemm_.run(last_.get(), head, logits_.get(), xy::cuda::GemmOut::kF32, rows, int(c.vocab_size), int(c.hidden_size), s);
    return;
  }
  // Vocabulary-parallel LM head: this rank's V' = c.vocab_size logits of each row, gathered from
  // every rank as [size, rows, V'], then laid out [rows, V].
  gemm_.run(last_.get(), head, rank_logits_.get(), xy::cuda::GemmOut::kF32, rows, int(c.vocab_size),
            int(c.hidden_size), s);
  comm_->all_gather(rank_logits_.get(), gathered_logits_.get(), int64_t(rows) * c.vocab_size);
  xy::cuda::assemble_gathered_logits(gathered_logits_.get(), comm_->size(), rows, c.vocab_size, vocab_size_,
                                     logits_.get(), s);
}

namespace {

bool tensor_core_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }
bool power_of_two_block(int32_t block_size) { return block_size >= 8 && (block_size & (block_size - 1)) == 0; }

}  // namespace

xy::cuda::AttentionKernel CudaBackend::choose_attention_kernel(const meta::StepPlan& plan) const {
  using xy::cuda::AttentionKernel;
  const auto& c = config_;
  if (!tensor_core_head_dim(c.head_dim)) return AttentionKernel::kCudaCore;
  // The mma.sync kernel is the one whose reduction order is batch invariant (kernels.h).
  if (options_.deterministic || options_.attention == AttentionKernel::kTensorCore || !power_of_two_block(block_size_))
    return AttentionKernel::kTensorCore;
  const int64_t group = c.num_heads / c.num_kv_heads;
  bool small_queries = group <= xy::cuda::kDecodeMaxRows;
  for (const auto& r : plan.requests) small_queries = small_queries && r.num_new_tokens * group <= xy::cuda::kDecodeMaxRows;
  return small_queries ? AttentionKernel::kDecode : AttentionKernel::kWgmma;
}

void CudaBackend::plan_attention(const meta::StepPlan& plan) {
  const auto& c = config_;
  attention_kernel_ = choose_attention_kernel(plan);
  work_options_.tile_rows = attention_kernel_ == xy::cuda::AttentionKernel::kDecode  ? xy::cuda::kDecodeMaxRows
                            : attention_kernel_ == xy::cuda::AttentionKernel::kWgmma ? 2 * xy::cuda::kAttentionTileRows
                                                                                     : xy::cuda::kAttentionTileRows;
  if (options_.deterministic) {
    // Spans cut at multiples of a fixed split, as on the CPU backend: a row's split (and so its
    // merge order) then depends on its position only (meta/attention_work_list.h).
    work_options_.kv_split = fixed_kv_split_;
  } else if (attention_kernel_ == xy::cuda::AttentionKernel::kDecode) {
    // The decode kernel's own rule (decode_split.h). One split serves every window's list; the
    // unwindowed count is the larger, so the conservative one.
    const int32_t group = int32_t(c.num_heads / c.num_kv_heads);
    work_options_.kv_split = xy::cuda::decode_kv_split(plan, work_options_.tile_rows / group,
                                                       {int32_t(c.num_kv_heads), block_size_, 0, num_sms_});
  } else {
    // KV split: the largest power of two from 16k positions down to 64 (a multiple of the block
    // size) that still gives the step enough tasks to fill the SMs. A step with many tasks keeps
    // its spans whole (splitting long prefill at 512 cost it 15-20%: bench/cuda/attention_bench.md);
    // a decode of one request over 512 keys would otherwise be 8 tasks on a 132-SM H200. The split
    // changes rounding only (merges are exact in real arithmetic).
    const int32_t tile_tokens = work_options_.tile_rows / int32_t(c.num_heads / c.num_kv_heads);
    auto round_split = [&](int32_t split) { return std::max(block_size_, split / block_size_ * block_size_); };
    int32_t split = round_split(16384);
    while (split > round_split(64)) {
      int64_t tasks = 0;
      for (const auto& r : plan.requests)
        tasks += int64_t((r.num_new_tokens + tile_tokens - 1) / tile_tokens) *
                 ((r.num_computed_tokens + r.num_new_tokens + split - 1) / split);
      if (tasks * c.num_kv_heads >= num_sms_) break;
      const int32_t next = round_split(split / 2);
      if (next == split) break;
      split = next;
    }
    work_options_.kv_split = split;
  }
  // L2 sections for the kernels of many-task steps; the decode kernel's split rule simulates
  // the deal of a list sorted by cost alone (decode_split.h), and a decode reads its KV once.
  work_options_.l2_section_positions =
      attention_kernel_ == xy::cuda::AttentionKernel::kDecode
          ? 0
          : xy::cuda::attention_l2_section_positions(l2_bytes_, int32_t(c.head_dim));
  // The wgmma kernel's steps with decodes beside chunks: decodes spread through the list, so that
  // they stream KV while other SMs compute (hybrid step 466 -> 457 us, attention_bench wgmma-mix).
  work_options_.interleave_small_tiles = attention_kernel_ == xy::cuda::AttentionKernel::kWgmma;
  // Plan once, run many: one work list per distinct window, shared by its layers.
  work_lists_.resize(windows_.size());
  int32_t max_partials = 0;
  for (size_t i = 0; i < windows_.size(); ++i) {
    const meta::AttentionShape shape{int32_t(c.num_heads), int32_t(c.num_kv_heads), windows_[i]};
    work_lists_[i] = {windows_[i], meta::build_attention_work_list(plan, shape, work_options_)};
    max_partials = std::max(max_partials, work_lists_[i].second.num_partials);
  }
  const size_t tile = size_t(work_options_.tile_rows);
  if (size_t(max_partials) * tile * size_t(c.head_dim) > partial_out_.size() ||
      size_t(max_partials) * tile * 2 > partial_stats_.size()) {
    // Grown rarely (a step with more split spans than any before); cudaFree waits for the
    // device, so no kernel of an earlier step still reads the old buffers. Graphs captured
    // over the old ones are stale from here on.
    const size_t n = size_t(max_partials) * 2;
    partial_out_.reset(n * tile * size_t(c.head_dim));
    partial_stats_.reset(n * tile * 2);
    ++partials_generation_;
  }
}

void CudaBackend::run_kv_copies_and_moves(const xy::cuda::DevicePlanView& view) {
  xy::cuda::launch_kv_copies_and_moves(kv_cache_.get(), int32_t(2 * config_.num_layers), int64_t(kv_plane_elems_),
                                       block_size_, kv_dim_, view.kv_copies, view.num_kv_copies,
                                       view.kv_moves, view.num_kv_moves, stream_.get());
}

void CudaBackend::run_forward(const xy::cuda::DevicePlanView& view) {
  const auto& c = config_;
  const cudaStream_t s = stream_.get();
  embed_tokens(view);
  for (int64_t i = 0; i < c.num_layers; ++i) run_layer(view, i);
  if (view.num_logits_rows == 0) return;
  // Final norm and LM head on the logits rows only (the last layer's down output added to them).
  xy::cuda::launch_add_rms_norm(residual_.get(), proj_.get(), final_norm_.get(), view.logits_rows,
                                view.num_logits_rows, c.hidden_size, float(c.rms_norm_eps), last_.get(), s);
  project_logits(view);
}

void CudaBackend::run_decode_graph(const meta::StepPlan& plan, xy::cuda::DecodeGraph& graph) {
  const cudaStream_t s = stream_.get();
  // A graph holds the addresses of the bucket's plan and of the partials: when either moved,
  // it is recorded again.
  if (graph.plan.reserve(plan, work_lists_) || graph.partials_generation != partials_generation_)
    graph.graph.reset();
  const xy::cuda::DevicePlanView& view = device_plan_.upload_padded(plan, work_lists_, graph.plan, trash_slot_, s);
  last_num_logits_ = plan.num_logits_rows();
  run_kv_copies_and_moves(view);
  if (graph.graph) {
    graph.graph.launch(s);
    ++graph_replays_;
    return;
  }
  // Not captured yet: run the padded step eagerly (this step's results; and every lazy first
  // use, such as cuBLASLt's algorithm choice for this M, kernel attributes and module loading,
  // happens outside the capture), then record the same launches for the bucket's next steps.
  run_forward(view);
  graph.graph.capture(s, [&] { run_forward(view); });
  graph.partials_generation = partials_generation_;
  ++graph_captures_;
}

void CudaBackend::run_step(const meta::StepPlan& plan) {
  // A tensor-parallel rank 0 runs its steps on the caller's thread, which need not be the one
  // that built it (and made its device current).
  if (comm_) XY_CUDA_CHECK(cudaSetDevice(device_));
  check_plan(plan);
  plan_attention(plan);
  const int32_t batch = plan.num_rows();
  if (!graph_buckets_.empty() && batch <= graph_buckets_.back() && xy::cuda::is_decode_only(plan)) {
    const size_t bucket = size_t(std::lower_bound(graph_buckets_.begin(), graph_buckets_.end(), batch) -
                                 graph_buckets_.begin());
    run_decode_graph(plan, decode_graphs_[bucket]);
    return;
  }
  const xy::cuda::DevicePlanView& view = device_plan_.upload(plan, work_lists_, stream_.get());
  last_num_logits_ = view.num_logits_rows;
  run_kv_copies_and_moves(view);
  if (view.num_rows == 0) return;
  run_forward(view);
}

void CudaBackend::forward(const meta::StepPlan& plan, std::vector<float>& logits) {
  run_step(plan);
  logits.resize(size_t(plan.num_logits_rows()) * size_t(vocab_size_));
  if (!logits.empty())
    XY_CUDA_CHECK(cudaMemcpyAsync(logits.data(), logits_.get(), logits.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_.get()));
  XY_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
}

void CudaBackend::forward_without_logits(const meta::StepPlan& plan) {
  run_step(plan);
  XY_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
}

void CudaBackend::forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                                     meta::SamplingOutput& out) {
  XY_CHECK(int32_t(sampling.rows.size()) == plan.num_logits_rows(), sampling.rows.size(),
           " sampling rows for ", plan.num_logits_rows(), " logits rows");
  const cudaStream_t s = stream_.get();
  XY_CUDA_CHECK(cudaEventRecord(step_start_.get(), s));
  run_step(plan);
  if (sampling.rows.empty()) {
    out = meta::SamplingOutput{};
  } else {
    sampler_.run(logits_.get(), vocab_size_, sampling, out, s);  // synchronises the stream
  }
  // Recorded on an idle stream (the sampler synchronised it): it completes at once, so busy time
  // counts the few microseconds since, and no device idle time between steps.
  XY_CUDA_CHECK(cudaEventRecord(step_end_.get(), s));
  XY_CUDA_CHECK(cudaEventSynchronize(step_end_.get()));
  float ms = 0.0f;
  XY_CUDA_CHECK(cudaEventElapsedTime(&ms, step_start_.get(), step_end_.get()));
  device_busy_s_ += double(ms) * 1e-3;
}

}  // namespace xy::backend::cuda
