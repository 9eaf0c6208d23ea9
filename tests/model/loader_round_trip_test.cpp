// write_random_checkpoint -> load_model round trips, for every architecture and dtype.
#include <cmath>
#include <set>

#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/safetensors.h"
#include "xyserve/model/weights.h"

namespace xy::model {
namespace {

using testing::ScratchDir;

const char* const kArchs[] = {"llama", "qwen2", "qwen3", "mistral"};
const DType kDtypes[] = {DType::kBF16, DType::kF16, DType::kF32};

std::vector<float> to_f32(const WeightTensor& t) {
  std::vector<float> out(size_t(t.num_elements()));
  convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

struct Stats {
  double mean = 0, std = 0, min = 1e30, max = -1e30;
};

Stats stats(const std::vector<float>& v) {
  Stats s;
  double sum = 0, sum2 = 0;
  for (float x : v) {
    sum += x;
    sum2 += double(x) * x;
    s.min = std::min(s.min, double(x));
    s.max = std::max(s.max, double(x));
  }
  s.mean = sum / double(v.size());
  s.std = std::sqrt(std::max(0.0, sum2 / double(v.size()) - s.mean * s.mean));
  return s;
}

// Every tensor of `w` with its Hugging Face name, in the slot it belongs to (the names are
// spelled out here rather than taken from tensor_layout, so a renamed tensor fails the test).
std::vector<std::pair<std::string, const WeightTensor*>> named_tensors(const ModelWeights& w) {
  std::vector<std::pair<std::string, const WeightTensor*>> out = {
      {"model.embed_tokens.weight", &w.embed_tokens}, {"model.norm.weight", &w.final_norm}};
  if (!w.config.tie_word_embeddings) out.push_back({"lm_head.weight", &w.lm_head});
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", &L.input_norm});
    out.push_back({p + "post_attention_layernorm.weight", &L.post_attention_norm});
    out.push_back({p + "self_attn.q_proj.weight", &L.q_proj});
    out.push_back({p + "self_attn.k_proj.weight", &L.k_proj});
    out.push_back({p + "self_attn.v_proj.weight", &L.v_proj});
    out.push_back({p + "self_attn.o_proj.weight", &L.o_proj});
    out.push_back({p + "mlp.gate_proj.weight", &L.gate_proj});
    out.push_back({p + "mlp.up_proj.weight", &L.up_proj});
    out.push_back({p + "mlp.down_proj.weight", &L.down_proj});
    if (w.config.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", &L.q_bias});
      out.push_back({p + "self_attn.k_proj.bias", &L.k_bias});
      out.push_back({p + "self_attn.v_proj.bias", &L.v_bias});
    }
    if (w.config.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", &L.q_norm});
      out.push_back({p + "self_attn.k_norm.weight", &L.k_norm});
    }
  }
  return out;
}

TEST(LoaderTest, RoundTripEveryArchitectureAndDtype) {
  for (const char* arch : kArchs) {
    for (DType dtype : kDtypes) {
      SCOPED_TRACE(std::string(arch) + " " + std::string(dtype_name(dtype)));
      ScratchDir dir;
      const ModelConfig config = preset_config(arch, "tiny", 300);
      write_random_checkpoint(config, dir.path(), 1234, dtype);
      ASSERT_TRUE(std::filesystem::exists(dir / "model.safetensors"));
      ASSERT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
      const auto w = load_model(dir.path());
      const ModelConfig& c = w->config;
      EXPECT_EQ(c.architecture, config.architecture);
      EXPECT_EQ(c.vocab_size, 300);
      EXPECT_EQ(c.hidden_size, 64);
      EXPECT_EQ(c.num_layers, 2);
      EXPECT_EQ(c.num_heads, 4);
      EXPECT_EQ(c.num_kv_heads, 2);
      EXPECT_EQ(c.head_dim, 16);
      EXPECT_EQ(c.intermediate_size, 128);
      EXPECT_EQ(c.dtype, dtype);
      EXPECT_EQ(c.qkv_bias, std::string(arch) == "qwen2");
      EXPECT_EQ(c.qk_norm, std::string(arch) == "qwen3");
      EXPECT_EQ(c.sliding_window, config.sliding_window);
      ASSERT_EQ(w->layers.size(), 2u);

      // Presence: biases only for qwen2, q/k norms only for qwen3.
      EXPECT_EQ(w->layers[1].q_bias.present(), c.qkv_bias);
      EXPECT_EQ(w->layers[1].k_norm.present(), c.qk_norm);

      size_t num_tensors = 0;
      for (const auto& [name, t] : named_tensors(*w)) {
        SCOPED_TRACE(name);
        ++num_tensors;
        ASSERT_TRUE(t->present());
        EXPECT_EQ(t->name, name);
        EXPECT_EQ(t->dtype, dtype);
        EXPECT_EQ(t->num_bytes, size_t(t->num_elements()) * dtype_size(dtype));
        const Stats s = stats(to_f32(*t));
        const bool is_norm = name.find("norm") != std::string::npos;
        const bool is_bias = name.ends_with(".bias");
        if (is_norm) {
          // 1 + noise: never far from 1, never all exactly 1.
          EXPECT_GE(s.min, 0.89);
          EXPECT_LE(s.max, 1.11);
          EXPECT_GT(s.std, 0.01);
        } else if (is_bias) {
          EXPECT_LE(std::max(-s.min, s.max), 0.0201);
          EXPECT_GT(s.std, 0.001);
        } else {
          EXPECT_NEAR(s.std, 0.02, 0.003);
          EXPECT_NEAR(s.mean, 0.0, 0.003);
          EXPECT_LE(std::max(-s.min, s.max), 0.035);
        }
      }
      // Nothing left over: the file holds exactly the tensors named above.
      const auto file = SafetensorsFile::open(dir / "model.safetensors");
      EXPECT_EQ(file->tensors().size(), num_tensors);
      for (const auto& [name, t] : named_tensors(*w)) EXPECT_NE(file->find(name), nullptr) << name;
    }
  }
}

// The dtype changes only the rounding: the f32 checkpoint rounded to bf16 or f16 gives the
// other checkpoints of the same seed bit for bit.
TEST(LoaderTest, DtypeOnlyChangesRounding) {
  ScratchDir d32, d16, dbf;
  const ModelConfig config = preset_config("qwen2", "tiny", 0);
  write_random_checkpoint(config, d32.path(), 77, DType::kF32);
  write_random_checkpoint(config, d16.path(), 77, DType::kF16);
  write_random_checkpoint(config, dbf.path(), 77, DType::kBF16);
  const auto w32 = load_model(d32.path());
  const auto w16 = load_model(d16.path());
  const auto wbf = load_model(dbf.path());
  const auto n32 = named_tensors(*w32), n16 = named_tensors(*w16), nbf = named_tensors(*wbf);
  ASSERT_EQ(n32.size(), n16.size());
  ASSERT_EQ(n32.size(), nbf.size());
  for (size_t i = 0; i < n32.size(); ++i) {
    const auto* f = static_cast<const float*>(n32[i].second->data);
    const auto* h = static_cast<const uint16_t*>(n16[i].second->data);
    const auto* b = static_cast<const uint16_t*>(nbf[i].second->data);
    for (int64_t k = 0; k < n32[i].second->num_elements(); ++k) {
      ASSERT_EQ(f32_to_f16(f[k]), h[k]) << n32[i].first << " element " << k;
      ASSERT_EQ(f32_to_bf16(f[k]), b[k]) << n32[i].first << " element " << k;
    }
  }
}

TEST(LoaderTest, SameSeedSameBytesOtherSeedOtherBytes) {
  ScratchDir a, b, c;
  const ModelConfig config = preset_config("llama", "tiny", 0);
  write_random_checkpoint(config, a.path(), 5);
  write_random_checkpoint(config, b.path(), 5);
  write_random_checkpoint(config, c.path(), 6);
  const std::string fa = testing::read_file(a / "model.safetensors");
  EXPECT_EQ(fa, testing::read_file(b / "model.safetensors"));
  EXPECT_NE(fa, testing::read_file(c / "model.safetensors"));
  EXPECT_EQ(fa.size(), testing::read_file(c / "model.safetensors").size());
}

// Small shards force several files; the loaded weights equal the single-file checkpoint's.
TEST(LoaderTest, ShardedRoundTripEqualsSingleFile) {
  ScratchDir single, sharded;
  const ModelConfig config = preset_config("qwen3", "small", 1000);
  write_random_checkpoint(config, single.path(), 9, DType::kBF16);
  // One layer's tensors are ~1.9 MB in bf16; 1 MB shards give one or two tensors per shard.
  write_random_checkpoint(config, sharded.path(), 9, DType::kBF16, 1'000'000);
  ASSERT_TRUE(std::filesystem::exists(sharded / "model.safetensors.index.json"));
  ASSERT_FALSE(std::filesystem::exists(sharded / "model.safetensors"));
  const nlohmann::json index =
      nlohmann::json::parse(testing::read_file(sharded / "model.safetensors.index.json"));
  std::set<std::string> shard_files;
  for (const auto& [name, file] : index["weight_map"].items()) shard_files.insert(file);
  ASSERT_GT(shard_files.size(), 3u);
  const size_t n = shard_files.size();
  size_t total = 0;
  for (size_t i = 1; i <= n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i, n);
    EXPECT_TRUE(shard_files.count(name)) << name;
    const auto file = SafetensorsFile::open(sharded / name);
    for (const auto& t : file->tensors()) total += t.num_bytes;
    // No shard is over the limit unless it holds a single tensor larger than the limit.
    if (file->tensors().size() > 1) {
      size_t bytes = 0;
      for (const auto& t : file->tensors()) bytes += t.num_bytes;
      EXPECT_LE(bytes, 1'000'000u) << name;
    }
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), total);

  const auto ws = load_model(single.path());
  const auto wh = load_model(sharded.path());
  EXPECT_EQ(wh->files.size(), n);
  const auto a = named_tensors(*ws), b = named_tensors(*wh);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].second->num_bytes, b[i].second->num_bytes) << a[i].first;
    EXPECT_EQ(0, std::memcmp(a[i].second->data, b[i].second->data, a[i].second->num_bytes))
        << a[i].first;
  }
}

TEST(LoaderTest, TiedEmbeddingsShareOneView) {
  ScratchDir dir;
  ModelConfig config = preset_config("llama", "tiny", 0);
  config.tie_word_embeddings = true;
  write_random_checkpoint(config, dir.path(), 3);
  const auto file = SafetensorsFile::open(dir / "model.safetensors");
  EXPECT_EQ(file->find("lm_head.weight"), nullptr);
  const auto w = load_model(dir.path());
  EXPECT_TRUE(w->config.tie_word_embeddings);
  EXPECT_EQ(w->lm_head.data, w->embed_tokens.data);
  EXPECT_EQ(w->lm_head.shape, w->embed_tokens.shape);
}

TEST(LoaderTest, RewritingADirectoryReplacesTheOldCheckpoint) {
  ScratchDir dir;
  const ModelConfig config = preset_config("llama", "tiny", 0);
  write_random_checkpoint(config, dir.path(), 1, DType::kBF16, 100'000);
  ASSERT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  write_random_checkpoint(config, dir.path(), 2, DType::kF32);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_FALSE(e.path().filename().string().starts_with("model-")) << e.path();
  }
  EXPECT_EQ(load_model(dir.path())->config.dtype, DType::kF32);
}

TEST(LoaderTest, ProgressIsMonotoneAndEndsAtTheTotal) {
  ScratchDir dir;
  write_random_checkpoint(preset_config("mistral", "tiny", 0), dir.path(), 4);
  for (bool prefault : {false, true}) {
    SCOPED_TRACE(prefault ? "prefault" : "lazy");
    std::vector<std::pair<size_t, size_t>> calls;
    LoadOptions options;
    options.prefault = prefault;
    options.on_progress = [&](size_t done, size_t total) { calls.emplace_back(done, total); };
    const auto w = load_model(dir.path(), options);
    ASSERT_GE(calls.size(), 2u);
    size_t expected_total = 0;
    for (const auto& [name, t] : named_tensors(*w)) expected_total += t->num_bytes;
    EXPECT_EQ(calls.front().first, 0u);
    for (size_t i = 1; i < calls.size(); ++i) {
      EXPECT_GE(calls[i].first, calls[i - 1].first);
      EXPECT_EQ(calls[i].second, expected_total);
    }
    EXPECT_EQ(calls.back().first, expected_total);
  }
}

}  // namespace
}  // namespace xy::model
