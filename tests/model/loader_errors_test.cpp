// Every kind of broken model directory: load_model throws ModelError whose message names the file
// and the field or tensor at fault (and expected against found where there is one).
#include <functional>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/safetensors.h"
#include "xyserve/model/weights.h"

namespace xy::model {
namespace {

using testing::ScratchDir;

std::string load_error(const std::filesystem::path& dir) {
  try {
    load_model(dir);
  } catch (const ModelError& e) {
    return e.what();
  }
  ADD_FAILURE() << "load_model(" << dir << ") did not throw ModelError";
  return "";
}

void expect_mentions(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) {
    EXPECT_NE(message.find(p), std::string::npos) << "'" << p << "' not in: " << message;
  }
}

// A tiny valid checkpoint in `dir`.
void write_tiny(const ScratchDir& dir, const char* arch = "llama",
                uint64_t max_shard_bytes = kDefaultMaxShardBytes) {
  write_random_checkpoint(preset_config(arch, "tiny", 0), dir.path(), 17, DType::kBF16,
                          max_shard_bytes);
}

// Rewrites a safetensors file after `mutate` edits its tensors.
void rewrite(const std::filesystem::path& path,
             const std::function<void(std::vector<TensorToWrite>&)>& mutate) {
  std::vector<TensorToWrite> tensors;
  {
    const auto file = SafetensorsFile::open(path);
    for (const SafetensorsTensor& t : file->tensors()) {
      const auto* p = static_cast<const uint8_t*>(file->data(t));
      tensors.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(p, p + t.num_bytes)});
    }
  }
  mutate(tensors);
  write_safetensors(path, tensors);
}

void edit_config(const ScratchDir& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(testing::read_file(dir / "config.json"));
  edit(j);
  testing::write_file(dir / "config.json", j.dump());
}

TEST(LoaderTest, MissingDirectoryIsNamed) {
  ScratchDir dir;
  expect_mentions(load_error(dir / "no_such_model"), {(dir / "no_such_model").string(), "does not exist"});
}

TEST(LoaderTest, FileInsteadOfDirectoryIsNamed) {
  ScratchDir dir;
  testing::write_file(dir / "file", "x");
  expect_mentions(load_error(dir / "file"), {(dir / "file").string(), "not a directory"});
}

TEST(LoaderTest, MissingConfigIsNamed) {
  ScratchDir dir;
  write_tiny(dir);
  std::filesystem::remove(dir / "config.json");
  expect_mentions(load_error(dir.path()), {(dir / "config.json").string(), "not found"});
}

TEST(LoaderTest, BadJsonInConfigIsNamed) {
  ScratchDir dir;
  write_tiny(dir);
  testing::write_file(dir / "config.json", "{\"architectures\": [\"LlamaForCausalLM\"],,}");
  expect_mentions(load_error(dir.path()), {(dir / "config.json").string(), "invalid JSON", "line 1"});
}

TEST(LoaderTest, ConfigErrorsNameFileAndField) {
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"unknown architecture", [](auto& j) { j["architectures"] = {"FalconForCausalLM"}; },
       {"'architectures'", "FalconForCausalLM"}},
      {"missing field", [](auto& j) { j.erase("intermediate_size"); }, {"'intermediate_size'"}},
      {"wrong type", [](auto& j) { j["num_attention_heads"] = "abc"; },
       {"'num_attention_heads'", "expected a positive integer, found \"abc\""}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    write_tiny(dir);
    edit_config(dir, c.edit);
    const std::string message = load_error(dir.path());
    expect_mentions(message, {(dir / "config.json").string()});
    expect_mentions(message, c.expected);
  }
}

TEST(LoaderTest, NoWeightsIsNamed) {
  ScratchDir dir;
  write_tiny(dir);
  std::filesystem::remove(dir / "model.safetensors");
  expect_mentions(load_error(dir.path()),
                  {dir.path().string(), "model.safetensors", "model.safetensors.index.json"});
}

TEST(LoaderTest, MissingTensorIsNamedWithItsShape) {
  ScratchDir dir;
  write_tiny(dir);
  rewrite(dir / "model.safetensors", [](auto& tensors) {
    std::erase_if(tensors, [](const TensorToWrite& t) {
      return t.name == "model.layers.1.mlp.up_proj.weight";
    });
  });
  expect_mentions(load_error(dir.path()), {(dir / "model.safetensors").string(),
                                           "missing tensor 'model.layers.1.mlp.up_proj.weight'",
                                           "[128, 64]"});
}

TEST(LoaderTest, MissingNormWeightIsNamed) {
  ScratchDir dir;
  write_tiny(dir, "qwen3");
  rewrite(dir / "model.safetensors", [](auto& tensors) {
    std::erase_if(tensors, [](const TensorToWrite& t) {
      return t.name == "model.layers.0.self_attn.k_norm.weight";
    });
  });
  expect_mentions(load_error(dir.path()), {"model.layers.0.self_attn.k_norm.weight"});
}

TEST(LoaderTest, WrongShapeNamesExpectedAndFound) {
  ScratchDir dir;
  write_tiny(dir);
  // k_proj is [num_kv_heads * head_dim, hidden] = [32, 64]; store it transposed.
  rewrite(dir / "model.safetensors", [](auto& tensors) {
    for (auto& t : tensors) {
      if (t.name == "model.layers.1.self_attn.k_proj.weight") t.shape = {64, 32};
    }
  });
  expect_mentions(load_error(dir.path()),
                  {"model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight' has shape "
                   "[64, 32], expected [32, 64]"});
}

TEST(LoaderTest, UntiedModelWithoutLmHeadFails) {
  ScratchDir dir;
  write_tiny(dir);
  rewrite(dir / "model.safetensors", [](auto& tensors) {
    std::erase_if(tensors, [](const TensorToWrite& t) { return t.name == "lm_head.weight"; });
  });
  expect_mentions(load_error(dir.path()), {"missing tensor 'lm_head.weight'"});
  // The same file loads once config.json says the embeddings are tied.
  edit_config(dir, [](auto& j) { j["tie_word_embeddings"] = true; });
  const auto w = load_model(dir.path());
  EXPECT_EQ(w->lm_head.data, w->embed_tokens.data);
}

TEST(LoaderTest, UnusedTensorsAreIgnored) {
  ScratchDir dir;
  write_tiny(dir);
  rewrite(dir / "model.safetensors", [](auto& tensors) {
    tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {8},
                       std::vector<uint8_t>(32, 0)});
  });
  EXPECT_EQ(load_model(dir.path())->layers.size(), 2u);
}

// The header-level breakages of safetensors, inside a model directory.
TEST(LoaderTest, BrokenSafetensorsIsNamed) {
  struct Case {
    const char* what;
    std::function<void(std::string&)> corrupt;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"truncated", [](std::string& b) { b.resize(b.size() - 100); },
       {"outside the data area", "truncated"}},
      {"header length beyond file",
       [](std::string& b) {
         const uint64_t n = b.size();
         for (int i = 0; i < 8; ++i) b[size_t(i)] = char((n >> (8 * i)) & 0xff);
       },
       {"header length", "exceeds the file size"}},
      {"cut inside the header", [](std::string& b) { b.resize(100); }, {"exceeds the file size"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    write_tiny(dir);
    std::string bytes = testing::read_file(dir / "model.safetensors");
    c.corrupt(bytes);
    testing::write_file(dir / "model.safetensors", bytes);
    const std::string message = load_error(dir.path());
    expect_mentions(message, {(dir / "model.safetensors").string()});
    expect_mentions(message, c.expected);
  }
}

// Hand-written headers for the per-tensor breakages: offsets outside the file, overlap,
// byte length against dtype and shape, unsupported dtype.
TEST(LoaderTest, BrokenTensorEntriesAreNamed) {
  auto header = [](const std::string& dtype, const std::string& shape, int begin, int end,
                   const std::string& extra) {
    return "{\"model.embed_tokens.weight\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}" +
           extra + "}";
  };
  struct Case {
    const char* what;
    std::string file;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"offsets outside", testing::raw_safetensors(header("F32", "[4]", 0, 64, ""), std::string(16, 'x')),
       {"'model.embed_tokens.weight'", "[0, 64]", "outside"}},
      {"overlap",
       testing::raw_safetensors(
           header("F32", "[4]", 0, 16,
                  ",\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}"),
           std::string(24, 'x')),
       {"'model.embed_tokens.weight'", "'model.norm.weight'", "overlap"}},
      {"length mismatch", testing::raw_safetensors(header("BF16", "[4,4]", 0, 16, ""), std::string(16, 'x')),
       {"'model.embed_tokens.weight'", "[4, 4]", "needs 32"}},
      {"unsupported dtype", testing::raw_safetensors(header("F64", "[2]", 0, 16, ""), std::string(16, 'x')),
       {"'model.embed_tokens.weight'", "F64"}},
      {"bool dtype", testing::raw_safetensors(header("BOOL", "[2]", 0, 2, ""), std::string(2, 'x')),
       {"'model.embed_tokens.weight'", "BOOL"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    write_tiny(dir);
    testing::write_file(dir / "model.safetensors", c.file);
    const std::string message = load_error(dir.path());
    expect_mentions(message, {(dir / "model.safetensors").string()});
    expect_mentions(message, c.expected);
  }
}

TEST(LoaderTest, IndexNamingAMissingShardNamesBoth) {
  ScratchDir dir;
  write_tiny(dir, "llama", 50'000);
  const nlohmann::json index =
      nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
  const std::string shard = index["weight_map"]["model.norm.weight"];
  std::filesystem::remove(dir / shard);
  expect_mentions(load_error(dir.path()),
                  {(dir / "model.safetensors.index.json").string(), shard, "does not exist"});
}

TEST(LoaderTest, MalformedIndexIsNamed) {
  struct Case {
    const char* what;
    std::string text;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"not JSON", "{\"weight_map\": {", {"invalid JSON"}},
      {"no weight_map", "{\"metadata\": {}}", {"'weight_map'"}},
      {"weight_map not an object", "{\"weight_map\": [1]}", {"'weight_map'"}},
      {"file name not a string", "{\"weight_map\": {\"model.norm.weight\": 3}}",
       {"'weight_map'", "model.norm.weight"}},
      {"path outside the directory", "{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}",
       {"'weight_map'", "../x.safetensors"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    write_tiny(dir, "llama", 50'000);
    testing::write_file(dir / "model.safetensors.index.json", c.text);
    const std::string message = load_error(dir.path());
    expect_mentions(message, {(dir / "model.safetensors.index.json").string()});
    expect_mentions(message, c.expected);
  }
}

TEST(LoaderTest, IndexWithoutATensorNamesIt) {
  ScratchDir dir;
  write_tiny(dir, "llama", 50'000);
  nlohmann::json index = nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
  index["weight_map"].erase("model.layers.0.mlp.gate_proj.weight");
  testing::write_file(dir / "model.safetensors.index.json", index.dump());
  expect_mentions(load_error(dir.path()), {"model.safetensors.index.json",
                                           "missing tensor 'model.layers.0.mlp.gate_proj.weight'"});
}

TEST(LoaderTest, IndexPointingAtTheWrongShardNamesBoth) {
  ScratchDir dir;
  write_tiny(dir, "llama", 50'000);
  nlohmann::json index = nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
  const std::string right = index["weight_map"]["model.norm.weight"];
  const std::string wrong = index["weight_map"]["model.embed_tokens.weight"];
  ASSERT_NE(right, wrong);
  index["weight_map"]["model.norm.weight"] = wrong;
  testing::write_file(dir / "model.safetensors.index.json", index.dump());
  expect_mentions(load_error(dir.path()), {wrong, "missing tensor 'model.norm.weight'",
                                           "model.safetensors.index.json"});
}

TEST(LoaderTest, BrokenShardIsNamed) {
  ScratchDir dir;
  write_tiny(dir, "llama", 50'000);
  const nlohmann::json index =
      nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
  const std::string shard = index["weight_map"]["model.layers.1.mlp.down_proj.weight"];
  std::string bytes = testing::read_file(dir / shard);
  bytes.resize(bytes.size() / 2);
  testing::write_file(dir / shard, bytes);
  expect_mentions(load_error(dir.path()), {(dir / shard).string()});
}

}  // namespace
}  // namespace xy::model

namespace xy::model {
namespace {

TEST(LoaderTest, MisalignedTensorIsNamed) {
  ScratchDir dir;
  write_tiny(dir);
  // Re-encode the checkpoint by hand, padding the header so the data area (and with it every
  // BF16 tensor) starts at an odd byte offset.
  std::vector<testing::RawTensor> raw;
  {
    const auto file = SafetensorsFile::open(dir / "model.safetensors");
    for (const SafetensorsTensor& t : file->tensors()) {
      raw.push_back({t.name, std::string(dtype_name(t.dtype)), t.shape,
                     std::string(static_cast<const char*>(file->data(t)), t.num_bytes)});
    }
  }
  std::string bytes = testing::encode_safetensors(raw);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  if ((8 + n) % 2 == 0) {
    bytes.insert(size_t(8 + n), 1, ' ');
    ++n;
    for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((n >> (8 * i)) & 0xff);
  }
  testing::write_file(dir / "model.safetensors", bytes);
  const std::string message = load_error(dir.path());
  expect_mentions(message, {(dir / "model.safetensors").string(), "not a multiple", "BF16"});
}

}  // namespace
}  // namespace xy::model
