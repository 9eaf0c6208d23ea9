// Qwen2ForCausalLM (Qwen2, Qwen2.5): Llama plus a bias on the q, k and v projections (always,
// whatever the config says) and an optional sliding window on the upper layers.
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"

namespace xy::model {
namespace {

// Qwen2Config's default max_window_layers.
constexpr int64_t kQwen2DefaultMaxWindowLayers = 28;

void parse_qwen2(const JsonFields& fields, ModelConfig& config) {
  config.qkv_bias = true;  // Qwen2Attention builds q/k/v with bias=True unconditionally
  parse_qwen_sliding_window(fields, config, kQwen2DefaultMaxWindowLayers);
}

void write_qwen2(const ModelConfig& config, nlohmann::json& out) {
  if (!config.qkv_bias || config.qk_norm) {
    throw InvalidArgument("Qwen2ForCausalLM always has q/k/v biases and no q/k norm");
  }
  write_qwen_sliding_window(config, out);
}

}  // namespace

const Architecture& qwen2_architecture() {
  static const Architecture kQwen2{"Qwen2ForCausalLM", "qwen2", "qwen2", &parse_qwen2,
                                   &write_qwen2, &hf_decoder_tensors};
  return kQwen2;
}

}  // namespace xy::model
