#include "xyserve/parallel/shard.h"

#include <algorithm>
#include <cstring>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"

namespace xy::parallel {
namespace {

using model::WeightTensor;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The source tensor must have the shape the config gives it before it is sliced.
const WeightTensor& checked(const WeightTensor& t, const std::vector<int64_t>& shape) {
  if (!t.present()) throw ModelError(cat("tensor '", t.name, "' is missing"));
  if (t.shape != shape) {
    throw ModelError(cat("tensor '", t.name, "' has wrong shape; expected ", shape_str(shape),
                         ", got ", shape_str(t.shape)));
  }
  XY_CHECK(t.num_bytes == size_t(t.num_elements()) * dtype_size(t.dtype), "tensor ", t.name,
           " byte size");
  return t;
}

// Cuts slices out of tensors, keeping the copies it makes in `storage`.
class Slicer {
 public:
  explicit Slicer(std::vector<std::vector<uint8_t>>& storage) : storage_(storage) {}

  // Rows [begin, begin + count) of t ([rows, ...]): a view, since rows are contiguous.
  WeightTensor rows(const WeightTensor& t, int64_t begin, int64_t count) const {
    XY_CHECK(begin >= 0 && count >= 0 && begin + count <= t.shape[0], t.name, " rows ", begin,
             "+", count);
    const size_t row_bytes = t.num_bytes / size_t(t.shape[0]);
    WeightTensor s = t;
    s.shape[0] = count;
    s.data = static_cast<const uint8_t*>(t.data) + size_t(begin) * row_bytes;
    s.num_bytes = size_t(count) * row_bytes;
    return s;
  }

  // Rows [begin, begin + count) of t, those past its last row zero: a view when there are none
  // such, else a copy.
  WeightTensor rows_padded(const WeightTensor& t, int64_t begin, int64_t count) {
    if (begin + count <= t.shape[0]) return rows(t, begin, count);
    const size_t row_bytes = t.num_bytes / size_t(t.shape[0]);
    const int64_t present = std::max<int64_t>(0, t.shape[0] - begin);
    std::vector<uint8_t>& bytes = allocate(size_t(count) * row_bytes);  // zeroed
    if (present > 0) {
      std::memcpy(bytes.data(), static_cast<const uint8_t*>(t.data) + size_t(begin) * row_bytes,
                  size_t(present) * row_bytes);
    }
    return copy_of(t, {count, t.shape[1]}, bytes);
  }

  // Columns [begin, begin + count) of t ([rows, cols]): a copy.
  WeightTensor columns(const WeightTensor& t, int64_t begin, int64_t count) {
    XY_CHECK(t.shape.size() == 2 && begin >= 0 && begin + count <= t.shape[1], t.name,
             " columns ", begin, "+", count);
    const size_t elem = dtype_size(t.dtype);
    const int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<uint8_t>& bytes = allocate(size_t(rows * count) * elem);
    const auto* src = static_cast<const uint8_t*>(t.data);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(bytes.data() + size_t(i * count) * elem, src + size_t(i * cols + begin) * elem,
                  size_t(count) * elem);
    }
    return copy_of(t, {rows, count}, bytes);
  }

 private:
  std::vector<uint8_t>& allocate(size_t n) { return storage_.emplace_back(n, uint8_t(0)); }

  static WeightTensor copy_of(const WeightTensor& t, std::vector<int64_t> shape,
                              const std::vector<uint8_t>& bytes) {
    WeightTensor s = t;
    s.shape = std::move(shape);
    s.data = bytes.data();
    s.num_bytes = bytes.size();
    return s;
  }

  std::vector<std::vector<uint8_t>>& storage_;
};

}  // namespace

void check_tensor_parallel(const model::ModelConfig& c, int32_t size) {
  if (size < 1) throw InvalidArgument(cat("tensor parallel size must be at least 1; found ", size));
  if (c.num_heads <= 0 || c.num_heads % size != 0) {
    throw InvalidArgument(cat("tensor parallel size ", size, " does not divide num_attention_heads (",
                              c.num_heads, "): each rank needs whole attention heads"));
  }
  const int64_t kv = c.num_kv_heads;
  if (kv <= 0 || (kv >= size ? kv % size != 0 : size % kv != 0)) {
    throw InvalidArgument(cat("tensor parallel size ", size, " does not fit num_key_value_heads (", kv,
                              "): the KV heads must split evenly over the ranks, or (when fewer "
                              "than the ranks) each be replicated on the same number of ranks"));
  }
  if (c.intermediate_size <= 0 || c.intermediate_size % size != 0) {
    throw InvalidArgument(cat("tensor parallel size ", size, " does not divide intermediate_size (",
                              c.intermediate_size, ")"));
  }
}

int64_t kv_heads_per_rank(const model::ModelConfig& c, int32_t size) {
  return c.num_kv_heads >= size ? c.num_kv_heads / size : 1;
}

ShardedWeights shard_weights(const model::ModelWeights& w, int32_t rank, int32_t size) {
  const model::ModelConfig& c = w.config;
  check_tensor_parallel(c, size);
  XY_CHECK(rank >= 0 && rank < size, "rank ", rank, " of ", size);
  XY_CHECK(int64_t(w.layers.size()) == c.num_layers, "layers ", w.layers.size());
  const int64_t h = c.hidden_size, hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;

  ShardedWeights out;
  ShardInfo& info = out.info;
  info.rank = rank;
  info.size = size;
  info.vocab_size = c.vocab_size;
  info.vocab_per_rank = (c.vocab_size + size - 1) / size;
  info.vocab_begin = rank * info.vocab_per_rank;
  const int64_t heads = c.num_heads / size, kv_heads = kv_heads_per_rank(c, size);
  const int64_t inter = c.intermediate_size / size;
  info.first_head = rank * heads;
  // Replicated (K < N): rank r's query heads [r H/N, (r+1) H/N) lie in one group of H/K heads,
  // because H/N divides H/K (N/K is whole); that group's KV head is r H/N / (H/K) = r K / N.
  info.first_kv_head = c.num_kv_heads >= size ? rank * kv_heads : rank * c.num_kv_heads / size;
  info.first_intermediate = rank * inter;

  model::ModelWeights& s = out.weights;
  s.config = c;
  s.config.num_heads = heads;
  s.config.num_kv_heads = kv_heads;
  s.config.intermediate_size = inter;
  s.config.vocab_size = info.vocab_per_rank;
  s.files = w.files;
  Slicer slice(out.storage);

  const bool tied = w.lm_head.data == w.embed_tokens.data;
  s.embed_tokens = slice.rows_padded(checked(w.embed_tokens, {c.vocab_size, h}), info.vocab_begin,
                                     info.vocab_per_rank);
  s.lm_head = tied ? s.embed_tokens
                   : slice.rows_padded(checked(w.lm_head, {c.vocab_size, h}), info.vocab_begin,
                                       info.vocab_per_rank);
  s.final_norm = checked(w.final_norm, {h});

  const int64_t q_begin = info.first_head * hd, kv_begin = info.first_kv_head * hd;
  for (const model::LayerWeights& l : w.layers) {
    model::LayerWeights& r = s.layers.emplace_back();
    r.input_norm = checked(l.input_norm, {h});
    r.q_proj = slice.rows(checked(l.q_proj, {q_dim, h}), q_begin, heads * hd);
    r.k_proj = slice.rows(checked(l.k_proj, {kv_dim, h}), kv_begin, kv_heads * hd);
    r.v_proj = slice.rows(checked(l.v_proj, {kv_dim, h}), kv_begin, kv_heads * hd);
    if (c.qkv_bias) {
      r.q_bias = slice.rows(checked(l.q_bias, {q_dim}), q_begin, heads * hd);
      r.k_bias = slice.rows(checked(l.k_bias, {kv_dim}), kv_begin, kv_heads * hd);
      r.v_bias = slice.rows(checked(l.v_bias, {kv_dim}), kv_begin, kv_heads * hd);
    }
    if (c.qk_norm) {
      r.q_norm = checked(l.q_norm, {hd});
      r.k_norm = checked(l.k_norm, {hd});
    }
    r.o_proj = slice.columns(checked(l.o_proj, {h, q_dim}), q_begin, heads * hd);
    r.post_attention_norm = checked(l.post_attention_norm, {h});
    r.gate_proj = slice.rows(checked(l.gate_proj, {c.intermediate_size, h}), info.first_intermediate, inter);
    r.up_proj = slice.rows(checked(l.up_proj, {c.intermediate_size, h}), info.first_intermediate, inter);
    r.down_proj = slice.columns(checked(l.down_proj, {h, c.intermediate_size}), info.first_intermediate, inter);
  }
  return out;
}

}  // namespace xy::parallel
