// LlamaForCausalLM: Llama 2, Llama 3 / 3.1 (rope_scaling "llama3"), Llama 3.2 (tied
// embeddings). The plain decoder every other architecture here starts from.
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"

namespace xy::model {
namespace {

void parse_llama(const JsonFields& fields, ModelConfig& config) {
  // LlamaConfig's attention_bias puts a bias on q, k, v *and* o; mlp_bias on all three MLP
  // projections. No released Llama uses either, and LayerWeights has no slot for them: refuse
  // rather than silently drop weights.
  if (fields.optional_bool("attention_bias").value_or(false)) {
    fields.fail_message("attention_bias", "true is not supported (no released Llama uses it)");
  }
  if (fields.optional_bool("mlp_bias").value_or(false)) {
    fields.fail_message("mlp_bias", "true is not supported (no released Llama uses it)");
  }
}

void write_llama(const ModelConfig& config, nlohmann::json& out) {
  for (int64_t w : config.sliding_window) {
    if (w != 0) throw InvalidArgument("LlamaForCausalLM has no sliding-window attention");
  }
  if (config.qkv_bias || config.qk_norm) {
    throw InvalidArgument("LlamaForCausalLM has no q/k/v bias and no q/k norm");
  }
  out["attention_bias"] = false;
  out["mlp_bias"] = false;
  out["pretraining_tp"] = 1;
}

}  // namespace

const Architecture& llama_architecture() {
  static const Architecture kLlama{"LlamaForCausalLM", "llama", "llama", &parse_llama,
                                   &write_llama, &hf_decoder_tensors};
  return kLlama;
}

}  // namespace xy::model
