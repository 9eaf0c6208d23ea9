// config.json parsing for each architecture, and the errors for malformed ones.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "xyserve/common/error.h"
#include "xyserve/model/config.h"
#include "xyserve/model/presets.h"

namespace xy::model {
namespace {

using nlohmann::json;

// Fields as in meta-llama/Llama-2-7b-hf's config.json.
json llama2_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true,
    "vocab_size": 32000})");
}

// Fields as in meta-llama/Llama-3.1-8B-Instruct's config.json.
json llama31_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "use_cache": true, "vocab_size": 128256})");
}

// Fields as in Qwen/Qwen2.5-0.5B-Instruct's config.json.
json qwen25_config() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

// Fields as in Qwen/Qwen3-0.6B's config.json: head_dim 128 while hidden / heads = 64.
json qwen3_config() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
    "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

// Fields as in mistralai/Mistral-7B-v0.1's config.json.
json mistral_config() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
    "vocab_size": 32000})");
}

ModelConfig parse(const json& j) { return parse_config_json(j.dump(), "/models/x/config.json"); }

std::string parse_error(const json& j) {
  try {
    parse(j);
  } catch (const ModelError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ModelError for " << j.dump();
  return "";
}

TEST(ConfigTest, ParsesLlama2) {
  const ModelConfig c = parse(llama2_config());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.scaling, RopeScalingType::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.sliding_window, std::vector<int64_t>(32, 0));
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
}

TEST(ConfigTest, DefaultsKvHeadsAndHeadDimFromHeads) {
  json j = llama2_config();
  j.erase("num_key_value_heads");
  j.erase("bos_token_id");
  j.erase("torch_dtype");
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 4096 / 32);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.dtype, DType::kBF16);
}

TEST(ConfigTest, ParsesLlama31RopeScalingAndEosList) {
  const ModelConfig c = parse(llama31_config());
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.scaling, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.dtype, DType::kBF16);
}

TEST(ConfigTest, AcceptsLegacyTypeKeyAndLinearScaling) {
  json j = llama2_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.rope.scaling, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(parse(j).rope.scaling, RopeScalingType::kLlama3);
}

TEST(ConfigTest, AcceptsTransformers5RopeParameters) {
  json j = llama31_config();
  j["rope_parameters"] = j["rope_scaling"];
  j["rope_parameters"]["rope_theta"] = 250000.0;
  j.erase("rope_scaling");
  j.erase("rope_theta");
  const ModelConfig c = parse(j);
  EXPECT_DOUBLE_EQ(c.rope.theta, 250000.0);
  EXPECT_EQ(c.rope.scaling, RopeScalingType::kLlama3);
}

TEST(ConfigTest, Llama32TiedEmbeddings) {
  json j = llama31_config();
  j["tie_word_embeddings"] = true;
  j["hidden_size"] = 2048;
  j["head_dim"] = 64;
  EXPECT_TRUE(parse(j).tie_word_embeddings);
  EXPECT_EQ(parse(j).head_dim, 64);
}

TEST(ConfigTest, Qwen2HasQkvBiasAndNoWindowUnlessEnabled) {
  const ModelConfig c = parse(qwen25_config());
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  // use_sliding_window false: sliding_window 32768 is ignored, as transformers does.
  EXPECT_EQ(c.sliding_window, std::vector<int64_t>(24, 0));
}

TEST(ConfigTest, Qwen2SlidingWindowCoversLayersFromMaxWindowLayersOn) {
  json j = qwen25_config();
  j["use_sliding_window"] = true;
  j["sliding_window"] = 4096;
  for (int64_t k : {0, 5, 21, 24}) {
    j["max_window_layers"] = k;
    const ModelConfig c = parse(j);
    for (int64_t l = 0; l < 24; ++l) {
      EXPECT_EQ(c.sliding_window[size_t(l)], l >= k ? 4096 : 0) << "k=" << k << " layer " << l;
    }
  }
  // An explicit layer_types list wins over the rule.
  json types = json::array();
  for (int l = 0; l < 24; ++l) types.push_back(l % 2 ? "sliding_attention" : "full_attention");
  j["layer_types"] = types;
  const ModelConfig c = parse(j);
  for (int64_t l = 0; l < 24; ++l) EXPECT_EQ(c.sliding_window[size_t(l)], l % 2 ? 4096 : 0);
}

TEST(ConfigTest, Qwen3HasQkNormAndItsOwnHeadDim) {
  const ModelConfig c = parse(qwen3_config());
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_NE(c.head_dim * c.num_heads, c.hidden_size);
  EXPECT_EQ(c.sliding_window, std::vector<int64_t>(28, 0));
  json j = qwen3_config();
  j.erase("head_dim");
  EXPECT_EQ(parse(j).head_dim, 128);  // Qwen3Config's default, not hidden / heads
}

TEST(ConfigTest, MistralWindowSetNullOrAbsent) {
  json j = mistral_config();
  EXPECT_EQ(parse(j).sliding_window, std::vector<int64_t>(32, 4096));
  j["sliding_window"] = nullptr;  // Mistral 7B v0.2+: full attention
  EXPECT_EQ(parse(j).sliding_window, std::vector<int64_t>(32, 0));
  j.erase("sliding_window");  // MistralConfig's default
  EXPECT_EQ(parse(j).sliding_window, std::vector<int64_t>(32, 4096));
}

// Each broken config: the mutation, and what the message must name besides the file.
struct BrokenConfig {
  const char* what;
  std::function<void(json&)> mutate;
  std::vector<std::string> expected;
};

TEST(ConfigTest, RejectsBrokenConfigsNamingFileAndField) {
  const std::vector<BrokenConfig> cases = {
      {"unknown architecture", [](json& j) { j["architectures"] = {"GPT2LMHeadModel"}; },
       {"'architectures'", "GPT2LMHeadModel", "LlamaForCausalLM"}},
      {"empty architectures", [](json& j) { j["architectures"] = json::array(); },
       {"'architectures'"}},
      {"missing architectures", [](json& j) { j.erase("architectures"); }, {"'architectures'", "missing"}},
      {"missing hidden_size", [](json& j) { j.erase("hidden_size"); }, {"'hidden_size'", "missing"}},
      {"missing vocab_size", [](json& j) { j.erase("vocab_size"); }, {"'vocab_size'"}},
      {"string heads", [](json& j) { j["num_attention_heads"] = "abc"; },
       {"'num_attention_heads'", "expected a positive integer", "\"abc\""}},
      {"zero layers", [](json& j) { j["num_hidden_layers"] = 0; }, {"'num_hidden_layers'", "0"}},
      {"negative vocab", [](json& j) { j["vocab_size"] = -5; }, {"'vocab_size'", "-5"}},
      {"absurd layer count", [](json& j) { j["num_hidden_layers"] = int64_t(1) << 40; },
       {"'num_hidden_layers'", "1099511627776"}},
      {"absurd hidden size", [](json& j) { j["hidden_size"] = uint64_t(1) << 63; },
       {"'hidden_size'"}},
      {"fractional size", [](json& j) { j["hidden_size"] = 4096.5; }, {"'hidden_size'", "4096.5"}},
      {"bool tie", [](json& j) { j["tie_word_embeddings"] = "yes"; }, {"'tie_word_embeddings'"}},
      {"string eps", [](json& j) { j["rms_norm_eps"] = "1e-5"; }, {"'rms_norm_eps'"}},
      {"hidden not divisible by heads", [](json& j) { j["hidden_size"] = 4000; j["num_attention_heads"] = 30; j["num_key_value_heads"] = 30; },
       {"'num_attention_heads'", "4000", "30"}},
      {"heads not divisible by kv heads", [](json& j) { j["num_key_value_heads"] = 5; },
       {"'num_key_value_heads'", "32", "5"}},
      {"odd head_dim", [](json& j) { j["head_dim"] = 127; }, {"'head_dim'", "127"}},
      {"unsupported rope", [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; },
       {"'rope_scaling.rope_type'", "yarn"}},
      {"llama3 rope missing factor",
       [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"low_freq_factor", 1.0}}; },
       {"'rope_scaling.factor'"}},
      {"rope_scaling not object", [](json& j) { j["rope_scaling"] = 2; }, {"'rope_scaling'"}},
      {"bad dtype", [](json& j) { j["torch_dtype"] = "int8"; }, {"'torch_dtype'", "int8"}},
      {"bad eos", [](json& j) { j["eos_token_id"] = "</s>"; }, {"'eos_token_id'"}},
      {"bad eos list", [](json& j) { j["eos_token_id"] = {1, "x"}; }, {"'eos_token_id'"}},
      {"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, {"'hidden_act'", "gelu"}},
      {"llama attention bias", [](json& j) { j["attention_bias"] = true; }, {"'attention_bias'"}},
      {"not an object", [](json& j) { j = json::array({1, 2}); }, {"object"}},
  };
  for (const BrokenConfig& bc : cases) {
    SCOPED_TRACE(bc.what);
    json j = llama2_config();
    bc.mutate(j);
    const std::string message = parse_error(j);
    EXPECT_NE(message.find("/models/x/config.json"), std::string::npos) << message;
    for (const std::string& e : bc.expected) {
      EXPECT_NE(message.find(e), std::string::npos) << "'" << e << "' not in: " << message;
    }
  }
}

TEST(ConfigTest, RejectsInvalidJsonNamingTheFile) {
  try {
    parse_config_json("{\"architectures\": [", "/models/x/config.json");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("/models/x/config.json: invalid JSON"), std::string::npos)
        << e.what();
  }
}

TEST(ConfigTest, Qwen2BadLayerTypesNamed) {
  json j = qwen25_config();
  j["layer_types"] = {"full_attention"};
  EXPECT_NE(parse_error(j).find("'layer_types'"), std::string::npos);
}

// config_to_json writes what parse_config_json reads back unchanged, for every preset and
// architecture, plus the Hugging Face keys transformers needs.
TEST(ConfigTest, WrittenConfigParsesBackToTheSameConfig) {
  for (const PresetInfo& p : list_presets()) {
    std::vector<std::string> archs = {p.arch};
    if (p.arch.empty()) archs = {"llama", "qwen2", "qwen3", "mistral"};
    for (const std::string& arch : archs) {
      SCOPED_TRACE(p.name + " " + arch);
      const ModelConfig c = preset_config(arch, p.name, 0);
      const std::string text = config_to_json(c);
      const json j = json::parse(text);
      for (const char* key : {"architectures", "model_type", "torch_dtype", "bos_token_id",
                              "eos_token_id", "tie_word_embeddings", "rope_theta", "rope_scaling",
                              "head_dim", "rms_norm_eps", "hidden_act"}) {
        EXPECT_TRUE(j.contains(key)) << key;
      }
      if (arch == "llama") {
        EXPECT_EQ(j["attention_bias"], false);
      }
      if (arch == "qwen2" || arch == "qwen3") {
        EXPECT_TRUE(j.contains("use_sliding_window"));
        EXPECT_TRUE(j.contains("max_window_layers"));
      }
      const ModelConfig r = parse_config_json(text, "config.json");
      EXPECT_EQ(r.architecture, c.architecture);
      EXPECT_EQ(r.vocab_size, c.vocab_size);
      EXPECT_EQ(r.hidden_size, c.hidden_size);
      EXPECT_EQ(r.intermediate_size, c.intermediate_size);
      EXPECT_EQ(r.num_layers, c.num_layers);
      EXPECT_EQ(r.num_heads, c.num_heads);
      EXPECT_EQ(r.num_kv_heads, c.num_kv_heads);
      EXPECT_EQ(r.head_dim, c.head_dim);
      EXPECT_EQ(r.max_position_embeddings, c.max_position_embeddings);
      EXPECT_EQ(r.rms_norm_eps, c.rms_norm_eps);
      EXPECT_EQ(r.rope.theta, c.rope.theta);
      EXPECT_EQ(r.rope.scaling, c.rope.scaling);
      EXPECT_EQ(r.rope.factor, c.rope.factor);
      EXPECT_EQ(r.rope.original_max_position, c.rope.original_max_position);
      EXPECT_EQ(r.tie_word_embeddings, c.tie_word_embeddings);
      EXPECT_EQ(r.qkv_bias, c.qkv_bias);
      EXPECT_EQ(r.qk_norm, c.qk_norm);
      EXPECT_EQ(r.sliding_window, c.sliding_window);
      EXPECT_EQ(r.dtype, c.dtype);
      EXPECT_EQ(r.bos_token_id, c.bos_token_id);
      EXPECT_EQ(r.eos_token_ids, c.eos_token_ids);
    }
  }
}

// Qwen2 window patterns round-trip through config.json, including ones that need layer_types.
TEST(ConfigTest, Qwen2WindowPatternsRoundTrip) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    ModelConfig c = preset_config("qwen2", "small", 0);
    const int64_t window = 1 + int64_t(rng() % 5000);
    for (auto& w : c.sliding_window) w = (rng() % 2) ? window : 0;
    EXPECT_EQ(parse_config_json(config_to_json(c), "config.json").sliding_window, c.sliding_window);
  }
}

}  // namespace
}  // namespace xy::model
