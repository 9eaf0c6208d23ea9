// Model presets: the real-model shapes give the parameter counts the released checkpoints have,
// and bad names are rejected with the valid ones listed.
#include <gtest/gtest.h>

#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"
#include "xyserve/model/presets.h"

namespace xy::model {
namespace {

int64_t num_parameters(const ModelConfig& c) {
  int64_t n = 0;
  for (const TensorSpec& s : find_architecture(c.architecture)->tensors(c)) n += s.num_elements();
  return n;
}

// The parameter counts Hugging Face shows for each released checkpoint (safetensors metadata
// of the model page), an independent check on every shape field, bias, norm and tie flag.
TEST(ConfigPresetTest, RealPresetsHaveTheReleasedParameterCounts) {
  const std::pair<const char*, int64_t> kReleased[] = {
      {"llama2-7b", 6'738'415'616},     // meta-llama/Llama-2-7b-hf
      {"llama3-8b", 8'030'261'248},     // meta-llama/Llama-3.1-8B
      {"llama3.2-1b", 1'235'814'400},   // meta-llama/Llama-3.2-1B
      {"llama3-70b", 70'553'706'496},   // meta-llama/Llama-3.1-70B
      {"qwen2-7b", 7'615'616'512},      // Qwen/Qwen2-7B-Instruct
      {"qwen2.5-0.5b", 494'032'768},    // Qwen/Qwen2.5-0.5B-Instruct
      {"qwen3-8b", 8'190'735'360},      // Qwen/Qwen3-8B
      {"mistral-7b", 7'241'732'096},    // mistralai/Mistral-7B-v0.1
  };
  for (const auto& [name, count] : kReleased) {
    EXPECT_EQ(num_parameters(preset_config("", name, 0)), count) << name;
  }
  // Every real preset is covered above.
  size_t real = 0;
  for (const PresetInfo& p : list_presets()) real += !p.arch.empty();
  EXPECT_EQ(real, std::size(kReleased));
}

TEST(ConfigPresetTest, RealPresetsCarryTheirArchitectureFeatures) {
  const ModelConfig llama3 = preset_config("llama", "llama3-8b", 0);
  EXPECT_EQ(llama3.rope.scaling, RopeScalingType::kLlama3);
  EXPECT_EQ(llama3.rope.theta, 500000.0);
  EXPECT_EQ(llama3.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(preset_config("mistral", "mistral-7b", 0).sliding_window, std::vector<int64_t>(32, 4096));
  EXPECT_TRUE(preset_config("qwen2", "qwen2-7b", 0).qkv_bias);
  EXPECT_TRUE(preset_config("qwen3", "qwen3-8b", 0).qk_norm);
  EXPECT_TRUE(preset_config("", "llama3.2-1b", 0).tie_word_embeddings);
}

TEST(ConfigPresetTest, TinyMatchesTheDocumentedShapeForEveryArchitecture) {
  for (const char* arch : {"llama", "qwen2", "qwen3", "mistral"}) {
    const ModelConfig c = preset_config(arch, "tiny", 1000);
    EXPECT_EQ(c.hidden_size, 64);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.intermediate_size, 128);
    EXPECT_EQ(c.max_position_embeddings, 4096);
    EXPECT_EQ(c.vocab_size, 1000);
  }
}

TEST(ConfigPresetTest, VocabOverrideDropsSpecialIdsOutsideIt) {
  const ModelConfig c = preset_config("llama", "llama3-8b", 1000);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ConfigPresetTest, BadNamesListTheValidOnes) {
  try {
    preset_config("gpt2", "tiny", 0);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'gpt2'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("llama, qwen2, qwen3, mistral"), std::string::npos);
  }
  try {
    preset_config("llama", "llama4-400b", 0);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'llama4-400b'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("tiny, small, llama2-7b"), std::string::npos);
  }
  EXPECT_THROW(preset_config("qwen2", "llama3-8b", 0), InvalidArgument);
  EXPECT_THROW(preset_config("llama", "tiny", -1), InvalidArgument);
}

}  // namespace
}  // namespace xy::model
