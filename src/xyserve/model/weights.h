// The weights of a loaded model: views into memory-mapped safetensors files, in their stored
// dtype. Backends convert them to what they compute in (fp32 on the CPU, bf16 on the GPU).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "xyserve/common/dtype.h"
#include "xyserve/model/config.h"

namespace xy::model {

class MappedFile;  // safetensors.h

// A view of one stored tensor; `data` is null for an absent optional tensor.
struct WeightTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t num_bytes = 0;

  bool present() const { return data != nullptr; }
  int64_t num_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Shapes follow Hugging Face: a Linear weight is [out_features, in_features].
struct LayerWeights {
  WeightTensor input_norm;      // [hidden]
  WeightTensor q_proj;          // [num_heads * head_dim, hidden]
  WeightTensor k_proj;          // [num_kv_heads * head_dim, hidden]
  WeightTensor v_proj;          // [num_kv_heads * head_dim, hidden]
  WeightTensor q_bias, k_bias, v_bias;  // qkv_bias only: [out_features]
  WeightTensor q_norm, k_norm;  // qk_norm only: [head_dim]
  WeightTensor o_proj;          // [hidden, num_heads * head_dim]
  WeightTensor post_attention_norm;  // [hidden]
  WeightTensor gate_proj;       // [intermediate, hidden]
  WeightTensor up_proj;         // [intermediate, hidden]
  WeightTensor down_proj;       // [hidden, intermediate]
};

struct ModelWeights {
  ModelConfig config;
  WeightTensor embed_tokens;  // [vocab, hidden]
  WeightTensor final_norm;    // [hidden]
  WeightTensor lm_head;       // [vocab, hidden]; the same view as embed_tokens when tied
  std::vector<LayerWeights> layers;
  std::vector<std::shared_ptr<const MappedFile>> files;  // keeps the views alive
};

struct LoadOptions {
  // Called as tensors are resolved and their bytes touched: (bytes done, bytes total).
  std::function<void(size_t, size_t)> on_progress;
  // Read every page of every weight while loading (so the progress bar measures the disk, and the
  // first forward pass does not stall on page faults). Off: pages are read on first use.
  bool prefault = false;
};

// Loads config.json and the safetensors weights (single file or sharded through
// model.safetensors.index.json) from `dir`. Throws ModelError naming the file and the field or
// tensor, with expected against found. Every tensor is checked (presence, shape, bounds inside
// its file) before any data is read. Tensors the architecture does not use are ignored; a
// missing lm_head is allowed only with tie_word_embeddings (lm_head then views embed_tokens).
// Thread-safe (no shared state); the result is immutable and may be read from any thread.
std::unique_ptr<ModelWeights> load_model(const std::filesystem::path& dir,
                                         const LoadOptions& options = {});

}  // namespace xy::model
