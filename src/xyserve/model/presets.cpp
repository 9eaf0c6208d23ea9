#include "xyserve/model/presets.h"

#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"

namespace xy::model {
namespace {

struct Shape {
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, max_position;
};

ModelConfig from_shape(const Architecture& arch, const Shape& s) {
  ModelConfig c;
  c.architecture = std::string(arch.name);
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.max_position_embeddings = s.max_position;
  c.sliding_window.assign(size_t(s.layers), 0);
  c.qkv_bias = arch.short_name == "qwen2";
  c.qk_norm = arch.short_name == "qwen3";
  return c;
}

// Llama 3.1's rope_scaling (the llama3 presets are the 3.1 releases: 128k context).
void set_llama31_rope(ModelConfig& c) {
  c.rope.theta = 500000.0;
  c.rope.scaling = RopeScalingType::kLlama3;
  c.rope.factor = 8.0;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position = 8192;
}

// A test shape for any architecture.
ModelConfig test_preset(const Architecture& arch, bool small) {
  ModelConfig c = small ? from_shape(arch, {512, 256, 688, 4, 8, 2, 32, 4096})
                        : from_shape(arch, {256, 64, 128, 2, 4, 2, 16, 4096});
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  if (arch.short_name == "mistral") c.sliding_window.assign(size_t(c.num_layers), small ? 128 : 32);
  return c;
}

using RealPreset = ModelConfig (*)();

ModelConfig llama3_8b() {  // meta-llama/Llama-3.1-8B
  ModelConfig c = from_shape(llama_architecture(), {128256, 4096, 14336, 32, 32, 8, 128, 131072});
  c.rms_norm_eps = 1e-5;
  set_llama31_rope(c);
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  return c;
}

ModelConfig llama3_70b() {  // meta-llama/Llama-3.1-70B
  ModelConfig c = from_shape(llama_architecture(), {128256, 8192, 28672, 80, 64, 8, 128, 131072});
  c.rms_norm_eps = 1e-5;
  set_llama31_rope(c);
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  return c;
}

ModelConfig llama32_1b() {  // meta-llama/Llama-3.2-1B: tied embeddings, rope factor 32
  ModelConfig c = from_shape(llama_architecture(), {128256, 2048, 8192, 16, 32, 8, 64, 131072});
  c.rms_norm_eps = 1e-5;
  set_llama31_rope(c);
  c.rope.factor = 32.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  return c;
}

ModelConfig llama2_7b() {  // meta-llama/Llama-2-7b-hf
  ModelConfig c = from_shape(llama_architecture(), {32000, 4096, 11008, 32, 32, 32, 128, 4096});
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig qwen2_7b() {  // Qwen/Qwen2-7B-Instruct
  ModelConfig c = from_shape(qwen2_architecture(), {152064, 3584, 18944, 28, 28, 4, 128, 32768});
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1000000.0;
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  return c;
}

ModelConfig qwen25_05b() {  // Qwen/Qwen2.5-0.5B-Instruct: tied embeddings
  ModelConfig c = from_shape(qwen2_architecture(), {151936, 896, 4864, 24, 14, 2, 64, 32768});
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1000000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  return c;
}

ModelConfig qwen3_8b() {  // Qwen/Qwen3-8B
  ModelConfig c = from_shape(qwen3_architecture(), {151936, 4096, 12288, 36, 32, 8, 128, 40960});
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1000000.0;
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  return c;
}

ModelConfig mistral_7b() {  // mistralai/Mistral-7B-v0.1: 4096-token sliding window
  ModelConfig c = from_shape(mistral_architecture(), {32000, 4096, 14336, 32, 32, 8, 128, 32768});
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 10000.0;
  c.sliding_window.assign(32, 4096);
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

struct RealPresetEntry {
  const char* name;
  const char* arch;
  const char* description;
  RealPreset make;
};

constexpr RealPresetEntry kRealPresets[] = {
    {"llama2-7b", "llama", "Llama 2 7B shape (MHA, 4k context)", &llama2_7b},
    {"llama3-8b", "llama", "Llama 3.1 8B shape (GQA 32/8, llama3 rope scaling)", &llama3_8b},
    {"llama3.2-1b", "llama", "Llama 3.2 1B shape (tied embeddings)", &llama32_1b},
    {"llama3-70b", "llama", "Llama 3.1 70B shape (80 layers, GQA 64/8)", &llama3_70b},
    {"qwen2-7b", "qwen2", "Qwen2 7B shape (q/k/v bias, GQA 28/4)", &qwen2_7b},
    {"qwen2.5-0.5b", "qwen2", "Qwen2.5 0.5B shape (tied embeddings)", &qwen25_05b},
    {"qwen3-8b", "qwen3", "Qwen3 8B shape (q/k norm, GQA 32/8)", &qwen3_8b},
    {"mistral-7b", "mistral", "Mistral 7B v0.1 shape (sliding window 4096)", &mistral_7b},
};

std::string arch_short_names() {
  std::string out;
  for (const Architecture* a : architectures()) {
    if (!out.empty()) out += ", ";
    out += a->short_name;
  }
  return out;
}

std::string preset_names() {
  std::string out;
  for (const PresetInfo& p : list_presets()) {
    if (!out.empty()) out += ", ";
    out += p.name;
  }
  return out;
}

}  // namespace

std::vector<PresetInfo> list_presets() {
  std::vector<PresetInfo> out = {
      {"tiny", "", "test model: hidden 64, 2 layers, 4 heads / 2 KV heads, head_dim 16"},
      {"small", "", "test model: hidden 256, 4 layers, 8 heads / 2 KV heads, head_dim 32"},
  };
  for (const RealPresetEntry& e : kRealPresets) out.push_back({e.name, e.arch, e.description});
  return out;
}

ModelConfig preset_config(std::string_view arch_name, std::string_view preset,
                          int64_t vocab_size) {
  const Architecture* arch = nullptr;
  if (!arch_name.empty()) {
    arch = find_architecture_by_short_name(arch_name);
    if (!arch) {
      throw InvalidArgument(cat("unknown architecture '", arch_name, "' (valid: ",
                                arch_short_names(), ")"));
    }
  }
  if (vocab_size < 0) throw InvalidArgument(cat("vocab size must be positive, got ", vocab_size));
  ModelConfig config;
  if (preset == "tiny" || preset == "small") {
    config = test_preset(arch ? *arch : llama_architecture(), preset == "small");
  } else {
    const RealPresetEntry* entry = nullptr;
    for (const RealPresetEntry& e : kRealPresets) {
      if (preset == e.name) entry = &e;
    }
    if (!entry) {
      throw InvalidArgument(cat("unknown model preset '", preset, "' (valid: ", preset_names(), ")"));
    }
    if (arch && arch->short_name != entry->arch) {
      throw InvalidArgument(cat("preset '", preset, "' is a ", entry->arch,
                                " model, not ", arch_name, " (presets for any architecture: "
                                "tiny, small)"));
    }
    config = entry->make();
  }
  if (vocab_size > 0) {
    config.vocab_size = vocab_size;
    // Special-token ids outside a replaced vocabulary mean nothing; the caller sets its own.
    if (config.bos_token_id >= vocab_size) config.bos_token_id = -1;
    std::erase_if(config.eos_token_ids, [&](int64_t id) { return id >= vocab_size; });
  }
  return config;
}

}  // namespace xy::model
