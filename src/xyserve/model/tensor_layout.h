// The tensors a Hugging Face decoder checkpoint holds for a given config: names, shapes, where
// each one goes in ModelWeights, and how a random checkpoint initialises it. The loader and the
// checkpoint writer both walk this one list, so they cannot disagree on a name or a shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xyserve/model/config.h"
#include "xyserve/model/weights.h"

namespace xy::model {

// How write_random_checkpoint fills a tensor.
enum class TensorInit { kLinear, kBias, kNorm };

struct TensorSpec {
  std::string name;            // e.g. "model.layers.3.self_attn.k_proj.weight"
  std::vector<int64_t> shape;  // Hugging Face order: a Linear weight is [out, in]
  TensorInit init = TensorInit::kLinear;
  int64_t layer = -1;          // -1: a model-level tensor (model_slot), else layer_slot
  WeightTensor LayerWeights::*layer_slot = nullptr;
  WeightTensor ModelWeights::*model_slot = nullptr;

  int64_t num_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// The LlamaForCausalLM family layout shared by Llama, Qwen2, Qwen3 and Mistral, in the order a
// Hugging Face state dict lists them (embeddings, layers, final norm, lm_head). q/k/v biases only
// with config.qkv_bias, q/k norms only with config.qk_norm, lm_head only when not tied.
std::vector<TensorSpec> hf_decoder_tensors(const ModelConfig& config);

// "[1024, 4096]", the form error messages use for shapes.
std::string format_shape(const std::vector<int64_t>& shape);

}  // namespace xy::model
