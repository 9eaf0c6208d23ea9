// MistralForCausalLM: Llama plus one sliding window for every layer (Mistral 7B v0.1: 4096;
// v0.2 and later write `"sliding_window": null`, full attention).
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"

namespace xy::model {
namespace {

// MistralConfig's default when the key is absent; an explicit null means no window.
constexpr int64_t kMistralDefaultWindow = 4096;

void parse_mistral(const JsonFields& fields, ModelConfig& config) {
  const int64_t window = fields.contains_key("sliding_window")
                             ? fields.optional_int("sliding_window", 1).value_or(0)
                             : kMistralDefaultWindow;
  config.sliding_window.assign(size_t(config.num_layers), window);
}

void write_mistral(const ModelConfig& config, nlohmann::json& out) {
  if (config.qkv_bias || config.qk_norm) {
    throw InvalidArgument("MistralForCausalLM has no q/k/v bias and no q/k norm");
  }
  const int64_t window = config.sliding_window.empty() ? 0 : config.sliding_window[0];
  for (int64_t w : config.sliding_window) {
    if (w != window) {
      throw InvalidArgument("MistralForCausalLM uses one sliding window for every layer");
    }
  }
  if (window) {
    out["sliding_window"] = window;
  } else {
    out["sliding_window"] = nullptr;
  }
}

}  // namespace

const Architecture& mistral_architecture() {
  static const Architecture kMistral{"MistralForCausalLM", "mistral", "mistral", &parse_mistral,
                                     &write_mistral, &hf_decoder_tensors};
  return kMistral;
}

}  // namespace xy::model
