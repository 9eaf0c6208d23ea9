// The CPU backend's element-wise and per-row operators, fp32. Each row is computed on its own,
// in an order that depends only on that row, so results never depend on the batch.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xyserve/model/config.h"

namespace xy::backend::cpu {

// out[i, :] = table[token_ids[i], :] for i in [0, M).  table: [vocab, dim]; out: [M, dim].
// Precondition: every id is in [0, vocab).
void embedding_gather(const float* table, int64_t vocab, int64_t dim,
                      std::span<const int32_t> token_ids, float* out);

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, for r in [0, rows), as Hugging Face's
// LlamaRMSNorm in fp32 (the mean is accumulated in double). x and out may alias.
//   x, out: [rows, dim];  weight: [dim].
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, double eps,
              float* out);

// x[i] += y[i]
void add_inplace(float* x, const float* y, int64_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).  out may alias gate or up.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// Rotary position embedding in Hugging Face's rotate_half layout (GPT-NeoX style: the first
// half of each head pairs with the second half). inv_freq follows transformers'
// ROPE_INIT_FUNCTIONS for default, linear and llama3 scaling, computed in double.
class Rope {
 public:
  Rope(const model::RopeConfig& config, int64_t head_dim);

  int64_t head_dim() const { return head_dim_; }
  const std::vector<double>& inv_freq() const { return inv_freq_; }

  // cos_out[i, j] = cos(positions[i] * inv_freq[j]), sin_out likewise; both [M, head_dim / 2].
  void fill_tables(std::span<const int32_t> positions, float* cos_out, float* sin_out) const;

 private:
  int64_t head_dim_;
  std::vector<double> inv_freq_;  // [head_dim / 2]
};

// Rotates every head of x in place: x is [M, num_heads, head_dim] with row stride `row_stride`
// floats; cos and sin are [M, head_dim / 2] from Rope::fill_tables.
//   x1 = x[:half], x2 = x[half:];  x1' = x1 cos - x2 sin;  x2' = x2 cos + x1 sin.
void apply_rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, int64_t row_stride,
                const float* cos, const float* sin);

}  // namespace xy::backend::cpu
