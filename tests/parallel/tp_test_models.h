// Tiny random-weight models for the tensor-parallel tests: the tiny preset of an architecture
// (hidden 64, 2 layers, 4 heads / 2 KV heads, head_dim 16, intermediate 128) with a vocabulary of
// 509, which no tensor-parallel size > 1 divides (so the padded vocabulary slices are exercised),
// and variants of its head counts. Written once per process (fp32) and loaded.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::testing {

inline constexpr int64_t kTpVocab = 509;

struct TpModel {
  std::string arch = "llama";
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  bool tied = false;

  std::string name() const {
    return arch + "_h" + std::to_string(num_heads) + "_kv" + std::to_string(num_kv_heads) +
           (tied ? "_tied" : "");
  }
  model::ModelConfig config() const {
    model::ModelConfig c = model::preset_config(arch, "tiny", kTpVocab);
    c.num_heads = num_heads;
    c.num_kv_heads = num_kv_heads;
    c.tie_word_embeddings = tied;
    return c;
  }
};

// The weights of `m`, cached per process.
inline const model::ModelWeights& tp_weights(const TpModel& m) {
  static std::map<std::string, std::unique_ptr<model::ModelWeights>> cache;
  auto& w = cache[m.name()];
  if (!w) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("xy_tp_test_" + m.name() + "_" + std::to_string(::getpid()));
    model::write_random_checkpoint(m.config(), dir, /*seed=*/11, DType::kF32);
    w = model::load_model(dir);
    std::filesystem::remove_all(dir);
  }
  return *w;
}

}  // namespace xy::testing
