#include "xyserve/backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "xyserve/backend/cpu/gemm.h"
#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"

namespace xy::backend::cpu {
namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Appends the tensor, converted to fp32, to `out` after checking its shape.
void append_f32(const model::WeightTensor& t, const std::vector<int64_t>& shape,
                std::vector<float>& out) {
  if (!t.present()) throw ModelError(cat("tensor '", t.name, "' is missing"));
  if (t.shape != shape) {
    throw ModelError(cat("tensor '", t.name, "' has wrong shape; expected ", shape_str(shape),
                         ", got ", shape_str(t.shape)));
  }
  const size_t n = size_t(t.num_elements());
  XY_CHECK(t.num_bytes == n * dtype_size(t.dtype), "tensor ", t.name, " byte size");
  const size_t base = out.size();
  out.resize(base + n);
  convert_to_f32(t.dtype, t.data, out.data() + base, n);
}

std::vector<float> to_f32(const model::WeightTensor& t, const std::vector<int64_t>& shape) {
  std::vector<float> out;
  append_f32(t, shape, out);
  return out;
}

// out[i, :] = table[token_ids[i] - begin, :] for the ids in [begin, begin + rows), else zeros:
// a vocabulary-parallel rank's share of the embedding, which the all-reduce over ranks completes
// (exactly: each row is its one owner's plus zeros).  table: [rows, dim];  out: [M, dim].
void embedding_gather_range(const float* table, int64_t begin, int64_t rows, int64_t dim,
                            std::span<const int32_t> token_ids, float* out) {
  for (size_t i = 0; i < token_ids.size(); ++i) {
    const int64_t row = int64_t(token_ids[i]) - begin;
    float* dst = out + int64_t(i) * dim;
    if (row >= 0 && row < rows) std::copy_n(table + row * dim, dim, dst);
    else std::fill_n(dst, dim, 0.0f);
  }
}

}  // namespace

CpuBackend::CpuBackend(const model::ModelWeights& weights, const CpuBackendOptions& options)
    : config_(weights.config),
      comm_(options.communicator),
      shard_(options.shard),
      vocab_size_(options.communicator ? options.shard.vocab_size : weights.config.vocab_size),
      rope_(weights.config.rope, weights.config.head_dim),
      kv_(weights.config.num_layers, options.num_kv_blocks, options.block_size,
          weights.config.num_kv_heads, weights.config.head_dim),
      pool_(options.num_threads) {
  const auto& c = config_;
  const int32_t bs = options.block_size;
  work_options_.kv_split = (work_options_.kv_split + bs - 1) / bs * bs;
  work_options_.tile_rows = std::max<int32_t>(work_options_.tile_rows, int32_t(c.num_heads / c.num_kv_heads));
  const int64_t h = c.hidden_size, hd = c.head_dim, inter = c.intermediate_size;
  q_dim_ = c.num_heads * hd;
  kv_dim_ = c.num_kv_heads * hd;
  qkv_dim_ = q_dim_ + 2 * kv_dim_;
  XY_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0, "heads ", c.num_heads,
           " kv_heads ", c.num_kv_heads);
  XY_CHECK(int64_t(weights.layers.size()) == c.num_layers, "layers ", weights.layers.size());
  if (comm_) {
    XY_CHECK(comm_->size() == shard_.size && comm_->rank() == shard_.rank, "communicator rank ",
             comm_->rank(), " of ", comm_->size(), " for shard ", shard_.rank, " of ", shard_.size);
    XY_CHECK(c.vocab_size == shard_.vocab_per_rank && shard_.vocab_per_rank * shard_.size >= vocab_size_,
             "shard vocabulary rows ", c.vocab_size);
  }

  embed_ = to_f32(weights.embed_tokens, {c.vocab_size, h});
  final_norm_ = to_f32(weights.final_norm, {h});
  const bool tied = weights.lm_head.data == weights.embed_tokens.data;
  if (!tied) lm_head_ = to_f32(weights.lm_head, {c.vocab_size, h});

  layers_.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const model::LayerWeights& w = weights.layers[size_t(i)];
    Layer& l = layers_[size_t(i)];
    l.input_norm = to_f32(w.input_norm, {h});
    append_f32(w.q_proj, {q_dim_, h}, l.qkv);
    append_f32(w.k_proj, {kv_dim_, h}, l.qkv);
    append_f32(w.v_proj, {kv_dim_, h}, l.qkv);
    if (c.qkv_bias) {
      append_f32(w.q_bias, {q_dim_}, l.qkv_bias);
      append_f32(w.k_bias, {kv_dim_}, l.qkv_bias);
      append_f32(w.v_bias, {kv_dim_}, l.qkv_bias);
    }
    if (c.qk_norm) {
      l.q_norm = to_f32(w.q_norm, {hd});
      l.k_norm = to_f32(w.k_norm, {hd});
    }
    l.o_proj = to_f32(w.o_proj, {h, q_dim_});
    l.post_norm = to_f32(w.post_attention_norm, {h});
    append_f32(w.gate_proj, {inter, h}, l.gate_up);
    append_f32(w.up_proj, {inter, h}, l.gate_up);
    l.down = to_f32(w.down_proj, {h, inter});
    l.window = size_t(i) < c.sliding_window.size() ? int32_t(c.sliding_window[size_t(i)]) : 0;
  }
}

CpuBackend::~CpuBackend() = default;

void CpuBackend::check_plan(const meta::StepPlan& plan) const {
  meta::check_step_plan(plan, kv_.block_size(), num_kv_blocks());
}

void CpuBackend::reserve_rows(int64_t m, int64_t num_logits_rows) {
  const int64_t rows = std::max(m, num_logits_rows);
  if (rows <= capacity_rows_) return;
  const auto& c = config_;
  capacity_rows_ = rows;
  if (comm_) {
    rank_logits_.resize(size_t(rows * c.vocab_size));
    gathered_logits_.resize(size_t(comm_->size() * rows * c.vocab_size));
  }
  hidden_.resize(size_t(rows * c.hidden_size));
  normed_.resize(size_t(rows * c.hidden_size));
  proj_.resize(size_t(rows * c.hidden_size));
  last_.resize(size_t(rows * c.hidden_size));
  qkv_.resize(size_t(rows * qkv_dim_));
  attn_.resize(size_t(rows * q_dim_));
  gate_up_.resize(size_t(rows * 2 * c.intermediate_size));
  act_.resize(size_t(rows * c.intermediate_size));
  cos_.resize(size_t(rows * c.head_dim / 2));
  sin_.resize(size_t(rows * c.head_dim / 2));
}

void CpuBackend::run_layer(const meta::StepPlan& plan, const Layer& l, int64_t index) {
  const auto& c = config_;
  const int64_t m = plan.num_rows(), h = c.hidden_size, hd = c.head_dim;
  const int64_t inter = c.intermediate_size;
  float* q = qkv_.data();
  float* k = q + q_dim_;
  float* v = k + kv_dim_;

  // Attention block: x += o_proj(attn(rope(qkv(norm(x)))))
  rms_norm(hidden_.data(), l.input_norm.data(), m, h, c.rms_norm_eps, normed_.data());
  linear(normed_.data(), m, h, l.qkv.data(), qkv_dim_,
         l.qkv_bias.empty() ? nullptr : l.qkv_bias.data(), qkv_.data(), &pool_);
  if (c.qk_norm) {  // Qwen3: RMSNorm over each head of q and k, before RoPE
    for (int64_t i = 0; i < m; ++i) {
      rms_norm(q + i * qkv_dim_, l.q_norm.data(), c.num_heads, hd, c.rms_norm_eps,
               q + i * qkv_dim_);
      rms_norm(k + i * qkv_dim_, l.k_norm.data(), c.num_kv_heads, hd, c.rms_norm_eps,
               k + i * qkv_dim_);
    }
  }
  apply_rope(q, m, c.num_heads, hd, qkv_dim_, cos_.data(), sin_.data());
  apply_rope(k, m, c.num_kv_heads, hd, qkv_dim_, cos_.data(), sin_.data());
  kv_.write(index, plan, k, v, qkv_dim_);

  AttentionLayerArgs args;
  args.plan = &plan;
  args.q = q;
  args.q_row_stride = qkv_dim_;
  args.kv = kv_.layer(index);
  args.num_heads = c.num_heads;
  args.window = l.window;
  args.scale = float(1.0 / std::sqrt(double(hd)));
  args.out = attn_.data();
  attention_.run(args, work_list_for(l.window), &pool_);
  linear(attn_.data(), m, q_dim_, l.o_proj.data(), h, nullptr, proj_.data(), &pool_);
  all_reduce_rows(proj_.data(), m);
  add_inplace(hidden_.data(), proj_.data(), m * h);

  // MLP block: x += down(silu(gate(norm(x))) * up(norm(x)))
  rms_norm(hidden_.data(), l.post_norm.data(), m, h, c.rms_norm_eps, normed_.data());
  linear(normed_.data(), m, h, l.gate_up.data(), 2 * inter, nullptr, gate_up_.data(), &pool_);
  for (int64_t i = 0; i < m; ++i) {
    const float* gate = gate_up_.data() + i * 2 * inter;
    silu_mul(gate, gate + inter, inter, act_.data() + i * inter);
  }
  linear(act_.data(), m, inter, l.down.data(), h, nullptr, proj_.data(), &pool_);
  all_reduce_rows(proj_.data(), m);
  add_inplace(hidden_.data(), proj_.data(), m * h);
}

void CpuBackend::all_reduce_rows(float* rows, int64_t m) {
  if (comm_) comm_->all_reduce_sum(rows, m * config_.hidden_size);
}

void CpuBackend::embed_tokens(const meta::StepPlan& plan) {
  const int64_t h = config_.hidden_size;
  if (!comm_) {
    embedding_gather(embed_.data(), config_.vocab_size, h, plan.token_ids, hidden_.data());
    return;
  }
  embedding_gather_range(embed_.data(), shard_.vocab_begin, config_.vocab_size, h, plan.token_ids,
                         hidden_.data());
  all_reduce_rows(hidden_.data(), plan.num_rows());
}

void CpuBackend::project_logits(int64_t num_logits, float* logits) {
  const int64_t h = config_.hidden_size;
  const float* head = lm_head_.empty() ? embed_.data() : lm_head_.data();
  if (!comm_) {
    linear(last_.data(), num_logits, h, head, vocab_size_, nullptr, logits, &pool_);
    return;
  }
  // Vocabulary-parallel LM head: rank r computes logits [rows, V'] of vocabulary rows
  // [r V', (r+1) V'); the gather stacks them as [size, rows, V'], and each row's slices are laid
  // side by side in rank order, the padding past the vocabulary dropped.
  const int64_t per_rank = config_.vocab_size;
  linear(last_.data(), num_logits, h, head, per_rank, nullptr, rank_logits_.data(), &pool_);
  comm_->all_gather(rank_logits_.data(), gathered_logits_.data(), num_logits * per_rank);
  for (int32_t r = 0; r < comm_->size(); ++r) {
    const int64_t begin = r * per_rank;
    const int64_t n = std::clamp<int64_t>(vocab_size_ - begin, 0, per_rank);
    const float* slice = gathered_logits_.data() + r * num_logits * per_rank;
    for (int64_t i = 0; i < num_logits; ++i)
      std::copy_n(slice + i * per_rank, n, logits + i * vocab_size_ + begin);
  }
}

const meta::AttentionWorkList& CpuBackend::work_list_for(int32_t window) const {
  for (const auto& [w, list] : work_lists_)
    if (w == window) return list;
  XY_CHECK(false, "no attention work list for window ", window);
  return work_lists_.front().second;
}

void CpuBackend::forward(const meta::StepPlan& plan, std::vector<float>& logits) {
  check_plan(plan);
  const auto& c = config_;
  const int64_t m = plan.num_rows(), h = c.hidden_size;
  const int64_t num_logits = plan.num_logits_rows();
  logits.resize(size_t(num_logits * vocab_size_));
  kv_.apply_copies_and_moves(plan);
  if (m == 0) return;
  reserve_rows(m, num_logits);

  embed_tokens(plan);
  rope_.fill_tables(plan.positions, cos_.data(), sin_.data());
  // Plan once, run many: one attention work list per distinct window, shared by its layers.
  work_lists_.clear();
  for (const Layer& l : layers_) {
    bool have = false;
    for (const auto& [window, list] : work_lists_) have |= window == l.window;
    if (have) continue;
    meta::AttentionShape shape{int32_t(c.num_heads), int32_t(c.num_kv_heads), l.window};
    work_lists_.emplace_back(l.window, meta::build_attention_work_list(plan, shape, work_options_));
  }
  for (int64_t i = 0; i < c.num_layers; ++i) run_layer(plan, layers_[size_t(i)], i);

  // Only the rows that need logits go through the final norm and the LM head: each request's
  // last num_logits_rows rows, in plan order.
  int64_t out_row = 0;
  for (const auto& r : plan.requests) {
    for (int32_t j = r.num_new_tokens - r.num_logits_rows; j < r.num_new_tokens; ++j, ++out_row) {
      std::copy_n(hidden_.data() + (r.first_row + j) * h, h, last_.data() + out_row * h);
    }
  }
  if (num_logits == 0) return;
  rms_norm(last_.data(), final_norm_.data(), num_logits, h, c.rms_norm_eps, last_.data());
  project_logits(num_logits, logits.data());
}

void CpuBackend::forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                                    meta::SamplingOutput& out) {
  XY_CHECK(int32_t(sampling.rows.size()) == plan.num_logits_rows(), sampling.rows.size(),
           " sampling rows for ", plan.num_logits_rows(), " logits rows");
  forward(plan, step_logits_);
  sample_rows(step_logits_, vocab_size_, sampling, out);
}

}  // namespace xy::backend::cpu
