// Named model shapes for `xyserve make-model`: tiny/small test models for any architecture, and
// the real shapes of released models (random weights, real sizes) for benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/model/config.h"

namespace xy::model {

struct PresetInfo {
  std::string name;          // "tiny", "llama3-8b", ...
  std::string arch;          // "" for presets every architecture has, else "llama", "qwen2", ...
  std::string description;
};

// Every preset, in a fixed order.
std::vector<PresetInfo> list_presets();

// The config of `preset` for architecture `arch` ("llama", "qwen2", "qwen3", "mistral").
// "tiny" and "small" exist for every architecture; a real-model preset ("llama3-8b") belongs to
// one, and `arch` may be empty to mean "that one". `vocab_size` > 0 replaces the preset's
// vocabulary size (so a test model matches the tokenizer it ships with); 0 keeps it.
// Throws InvalidArgument listing the valid names for an unknown or mismatched arch/preset.
//
// Test presets, per architecture: qwen2 has q/k/v biases, qwen3 q/k norms, and mistral a
// sliding window small enough for short test prompts to cross it (tiny: 32, small: 128).
ModelConfig preset_config(std::string_view arch, std::string_view preset, int64_t vocab_size = 0);

}  // namespace xy::model
