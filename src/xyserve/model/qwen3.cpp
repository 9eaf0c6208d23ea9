// Qwen3ForCausalLM: Llama plus an RMSNorm over each head of q and k before RoPE (q_norm, k_norm,
// weights of [head_dim]) and an explicit head_dim that need not equal hidden / heads
// (Qwen3-0.6B: hidden 1024, 16 heads, head_dim 128).
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"

namespace xy::model {
namespace {

// Qwen3Config's defaults for fields a config.json may leave out.
constexpr int64_t kQwen3DefaultHeadDim = 128;
constexpr int64_t kQwen3DefaultMaxWindowLayers = 28;

void parse_qwen3(const JsonFields& fields, ModelConfig& config) {
  config.qk_norm = true;
  // Qwen3Config defaults head_dim to 128, not hidden / heads.
  if (!fields.has("head_dim")) config.head_dim = kQwen3DefaultHeadDim;
  // Qwen3's attention_bias puts a bias on o_proj too, which LayerWeights has no slot for.
  if (fields.optional_bool("attention_bias").value_or(false)) {
    fields.fail_message("attention_bias", "true is not supported (no released Qwen3 uses it)");
  }
  parse_qwen_sliding_window(fields, config, kQwen3DefaultMaxWindowLayers);
}

void write_qwen3(const ModelConfig& config, nlohmann::json& out) {
  if (config.qkv_bias || !config.qk_norm) {
    throw InvalidArgument("Qwen3ForCausalLM always has q/k norms and no q/k/v bias");
  }
  out["attention_bias"] = false;
  write_qwen_sliding_window(config, out);
}

}  // namespace

const Architecture& qwen3_architecture() {
  static const Architecture kQwen3{"Qwen3ForCausalLM", "qwen3", "qwen3", &parse_qwen3,
                                   &write_qwen3, &hf_decoder_tensors};
  return kQwen3;
}

}  // namespace xy::model
