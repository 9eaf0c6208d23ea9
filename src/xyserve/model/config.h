// The model's hyper-parameters, read from config.json and checked by the architecture that
// owns it (architecture.h). Immutable after load.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/common/dtype.h"

namespace xy::model {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScalingType scaling = RopeScalingType::kNone;
  double factor = 1.0;                    // linear and llama3
  double low_freq_factor = 1.0;           // llama3
  double high_freq_factor = 4.0;          // llama3
  int64_t original_max_position = 8192;   // llama3: original_max_position_embeddings
};

struct ModelConfig {
  std::string architecture;  // the `architectures[0]` name, e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // config.head_dim, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2: q/k/v projections carry a bias
  bool qk_norm = false;   // Qwen3: RMSNorm over each head of q and k before RoPE
  // Per layer: the attention window in tokens (a query at position p sees keys at positions
  // > p - window), or 0 for full attention. Mistral sets it for every layer when configured.
  std::vector<int64_t> sliding_window;
  DType dtype = DType::kBF16;  // torch_dtype: what the checkpoint says it was trained in
  int64_t bos_token_id = -1;   // -1: none
  std::vector<int64_t> eos_token_ids;
};

// Reads and validates config.json in `dir`. Throws ModelError naming the file and field.
ModelConfig load_config(const std::filesystem::path& dir);

// Parses the text of a config.json; `source` starts every error message (the file's path).
ModelConfig parse_config_json(std::string_view text, const std::string& source);

// The Hugging Face config.json for `config`, in the form transformers writes for its
// architecture (the inverse of load_config). Throws InvalidArgument if the config is not
// something that architecture can express (e.g. a Llama with a sliding window).
std::string config_to_json(const ModelConfig& config);

// The torch_dtype string for a dtype: "bfloat16", "float16", "float32".
std::string_view torch_dtype_name(DType dtype);

}  // namespace xy::model
