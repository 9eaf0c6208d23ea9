#include "xyserve/backend/cpu/ops.h"

#include <cmath>
#include <numbers>

#include "xyserve/common/check.h"

namespace xy::backend::cpu {

void embedding_gather(const float* table, int64_t vocab, int64_t dim,
                      std::span<const int32_t> token_ids, float* out) {
  for (size_t i = 0; i < token_ids.size(); ++i) {
    const int32_t id = token_ids[i];
    XY_CHECK(id >= 0 && id < vocab, "token id ", id, " at row ", i, " outside [0, ", vocab, ")");
    const float* src = table + int64_t(id) * dim;
    float* dst = out + int64_t(i) * dim;
    for (int64_t j = 0; j < dim; ++j) dst[j] = src[j];
  }
}

void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, double eps,
              float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = out + r * dim;
    double sum_sq = 0.0;
    for (int64_t j = 0; j < dim; ++j) sum_sq += double(xr[j]) * double(xr[j]);
    const double inv_rms = 1.0 / std::sqrt(sum_sq / double(dim) + eps);
    for (int64_t j = 0; j < dim; ++j) yr[j] = float(double(xr[j]) * inv_rms) * weight[j];
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

Rope::Rope(const model::RopeConfig& config, int64_t head_dim) : head_dim_(head_dim) {
  XY_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope head_dim ", head_dim, " must be even");
  const int64_t half = head_dim / 2;
  inv_freq_.resize(size_t(half));
  for (int64_t j = 0; j < half; ++j) {
    inv_freq_[size_t(j)] = 1.0 / std::pow(config.theta, double(2 * j) / double(head_dim));
  }
  switch (config.scaling) {
    case model::RopeScalingType::kNone:
      break;
    case model::RopeScalingType::kLinear:
      // position / factor == position * (inv_freq / factor)
      for (double& f : inv_freq_) f /= config.factor;
      break;
    case model::RopeScalingType::kLlama3: {
      // transformers' _compute_llama3_parameters: long wavelengths are slowed by `factor`, short
      // ones kept, and the band between is interpolated smoothly.
      const double old_len = double(config.original_max_position);
      const double low_freq_wavelen = old_len / config.low_freq_factor;
      const double high_freq_wavelen = old_len / config.high_freq_factor;
      for (double& f : inv_freq_) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_freq_wavelen) {
          f = f / config.factor;
        } else if (wavelen >= high_freq_wavelen) {
          const double smooth = (old_len / wavelen - config.low_freq_factor) /
                                (config.high_freq_factor - config.low_freq_factor);
          f = (1.0 - smooth) * f / config.factor + smooth * f;
        }
      }
      break;
    }
  }
}

void Rope::fill_tables(std::span<const int32_t> positions, float* cos_out, float* sin_out) const {
  const int64_t half = head_dim_ / 2;
  for (size_t i = 0; i < positions.size(); ++i) {
    for (int64_t j = 0; j < half; ++j) {
      const double angle = double(positions[i]) * inv_freq_[size_t(j)];
      cos_out[int64_t(i) * half + j] = float(std::cos(angle));
      sin_out[int64_t(i) * half + j] = float(std::sin(angle));
    }
  }
}

void apply_rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, int64_t row_stride,
                const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < m; ++i) {
    const float* c = cos + i * half;
    const float* s = sin + i * half;
    for (int64_t h = 0; h < num_heads; ++h) {
      float* x1 = x + i * row_stride + h * head_dim;
      float* x2 = x1 + half;
      for (int64_t j = 0; j < half; ++j) {
        const float a = x1[j], b = x2[j];
        x1[j] = a * c[j] - b * s[j];
        x2[j] = b * c[j] + a * s[j];
      }
    }
  }
}

}  // namespace xy::backend::cpu
