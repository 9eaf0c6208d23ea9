// The registry of supported architectures, keyed by config.json's `architectures[0]` name. Each
// architecture lives in its own small file (llama.cpp, qwen2.cpp, qwen3.cpp, mistral.cpp) and
// says what sets it apart from the common Llama-style decoder: biases, q/k norms, sliding
// windows, its config.json fields, its tensor names. architecture.cpp lists them explicitly
// (static registrar objects in a static library would be dropped by the linker).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "xyserve/model/config.h"
#include "xyserve/model/json_fields.h"
#include "xyserve/model/tensor_layout.h"

namespace xy::model {

struct Architecture {
  std::string_view name;        // config.json architectures[0], e.g. "LlamaForCausalLM"
  std::string_view model_type;  // config.json model_type, e.g. "llama"
  std::string_view short_name;  // what `xyserve make-model --arch` takes, e.g. "llama"

  // Reads the fields only this architecture has, after load_config has read the common ones
  // into `config`. Throws ModelError naming the field.
  void (*parse_config)(const JsonFields& fields, ModelConfig& config);

  // The inverse for writing config.json: adds this architecture's fields to `out`, which already
  // holds the common ones. Throws InvalidArgument if `config` cannot be expressed (e.g. a
  // sliding-window pattern the architecture has no field for).
  void (*write_config)(const ModelConfig& config, nlohmann::json& out);

  // The tensors a checkpoint holds, with their Hugging Face names and shapes.
  std::vector<TensorSpec> (*tensors)(const ModelConfig& config);
};

// Every supported architecture, in a fixed order.
std::span<const Architecture* const> architectures();

// Null if `name` is not supported.
const Architecture* find_architecture(std::string_view name);
const Architecture* find_architecture_by_short_name(std::string_view short_name);

// "LlamaForCausalLM, Qwen2ForCausalLM, ..." for error messages.
std::string list_architecture_names();

// Qwen2/Qwen3 sliding-window rule, as transformers applies it (Qwen2Config/Qwen3Config):
// the window is `sliding_window` if `use_sliding_window` is true, else none; when there is a
// window, layers with index >= `max_window_layers` use it and the ones below attend fully
// (transformers' docstring calls max_window_layers "the number of layers using SWA", but the code
// gives SWA to layers i >= max_window_layers). An explicit `layer_types` list ("full_attention" /
// "sliding_attention", newer transformers) overrides the rule.
void parse_qwen_sliding_window(const JsonFields& fields, ModelConfig& config,
                               int64_t default_max_window_layers);
// Writes use_sliding_window / sliding_window / max_window_layers (and layer_types when the
// pattern is not "full below k, window from k on").
void write_qwen_sliding_window(const ModelConfig& config, nlohmann::json& out);

// The architectures, one per file.
const Architecture& llama_architecture();
const Architecture& qwen2_architecture();
const Architecture& qwen3_architecture();
const Architecture& mistral_architecture();

}  // namespace xy::model
