#include "xyserve/model/architecture.h"

#include <array>

#include "xyserve/common/error.h"

namespace xy::model {

std::span<const Architecture* const> architectures() {
  static const std::array<const Architecture*, 4> kAll = {
      &llama_architecture(), &qwen2_architecture(), &qwen3_architecture(),
      &mistral_architecture()};
  return kAll;
}

const Architecture* find_architecture(std::string_view name) {
  for (const Architecture* a : architectures()) {
    if (a->name == name) return a;
  }
  return nullptr;
}

const Architecture* find_architecture_by_short_name(std::string_view short_name) {
  for (const Architecture* a : architectures()) {
    if (a->short_name == short_name) return a;
  }
  return nullptr;
}

std::string list_architecture_names() {
  std::string out;
  for (const Architecture* a : architectures()) {
    if (!out.empty()) out += ", ";
    out += a->name;
  }
  return out;
}

void parse_qwen_sliding_window(const JsonFields& fields, ModelConfig& config,
                               int64_t default_max_window_layers) {
  const bool use_window = fields.optional_bool("use_sliding_window").value_or(false);
  // Qwen2Config's default sliding_window is 4096 when the key is absent; an explicit null means
  // no window at all.
  std::optional<int64_t> window;
  if (use_window) {
    window = fields.contains_key("sliding_window") ? fields.optional_int("sliding_window", 1)
                                                   : std::optional<int64_t>(4096);
  }
  const int64_t max_window_layers =
      fields.optional_int("max_window_layers", 0).value_or(default_max_window_layers);
  config.sliding_window.assign(size_t(config.num_layers), 0);
  if (const nlohmann::json* types = fields.get("layer_types")) {
    if (!types->is_array() || int64_t(types->size()) != config.num_layers) {
      fields.fail("layer_types", cat("a list of ", config.num_layers,
                                     " \"full_attention\" / \"sliding_attention\" strings"));
    }
    for (int64_t l = 0; l < config.num_layers; ++l) {
      const nlohmann::json& t = (*types)[size_t(l)];
      if (t == "full_attention") continue;
      if (t != "sliding_attention") {
        fields.fail("layer_types",
                    "a list of \"full_attention\" / \"sliding_attention\" strings");
      }
      // A sliding layer needs a window; transformers sets sliding_window to None unless
      // use_sliding_window, in which case the layer attends fully.
      if (window) config.sliding_window[size_t(l)] = *window;
    }
    return;
  }
  if (!window) return;
  for (int64_t l = max_window_layers; l < config.num_layers; ++l) {
    config.sliding_window[size_t(l)] = *window;
  }
}

void write_qwen_sliding_window(const ModelConfig& config, nlohmann::json& out) {
  int64_t window = 0;
  for (int64_t w : config.sliding_window) {
    if (w == 0) continue;
    if (window != 0 && w != window) {
      throw InvalidArgument(cat(config.architecture,
                                ": layers with different sliding windows cannot be written to "
                                "config.json (found ",
                                window, " and ", w, ")"));
    }
    window = w;
  }
  if (window == 0) {
    out["use_sliding_window"] = false;
    out["sliding_window"] = nullptr;
    out["max_window_layers"] = config.num_layers;
    return;
  }
  // The rule form needs "full below k, windowed from k on"; otherwise list every layer.
  int64_t first_windowed = 0;
  while (first_windowed < int64_t(config.sliding_window.size()) &&
         config.sliding_window[size_t(first_windowed)] == 0) {
    ++first_windowed;
  }
  bool rule_form = true;
  for (size_t l = size_t(first_windowed); l < config.sliding_window.size(); ++l) {
    rule_form = rule_form && config.sliding_window[l] == window;
  }
  out["use_sliding_window"] = true;
  out["sliding_window"] = window;
  out["max_window_layers"] = first_windowed;
  if (!rule_form) {
    nlohmann::json types = nlohmann::json::array();
    for (int64_t w : config.sliding_window) {
      types.push_back(w ? "sliding_attention" : "full_attention");
    }
    out["layer_types"] = std::move(types);
  }
}

}  // namespace xy::model
