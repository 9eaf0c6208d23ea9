// Tiny random-weight models of each architecture for engine tests: written once per process
// into a temp dir (fp32, vocab 512 so logits stay cheap) and run on the fp32 CPU backend.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::testing {

inline constexpr int64_t kTinyVocab = 512;

// The weights of the tiny preset of `arch`, cached per process.
inline const model::ModelWeights& tiny_weights(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<model::ModelWeights>> cache;
  auto& w = cache[arch];
  if (!w) {
    const model::ModelConfig config = model::preset_config(arch, "tiny", kTinyVocab);
    const auto dir = std::filesystem::temp_directory_path() /
                     ("xy_engine_test_" + arch + "_" + std::to_string(::getpid()));
    model::write_random_checkpoint(config, dir, /*seed=*/7, DType::kF32);
    w = model::load_model(dir);
    std::filesystem::remove_all(dir);
  }
  return *w;
}

inline std::unique_ptr<backend::cpu::CpuBackend> tiny_backend(const std::string& arch,
                                                              int32_t num_kv_blocks = 512,
                                                              int32_t block_size = 16) {
  backend::cpu::CpuBackendOptions o;
  o.num_kv_blocks = num_kv_blocks;
  o.block_size = block_size;
  o.num_threads = 1;
  return std::make_unique<backend::cpu::CpuBackend>(tiny_weights(arch), o);
}

// Random prompts; every third repeats a short motif, so n-gram drafts find matches.
inline std::vector<std::vector<int32_t>> random_prompts(int n, int min_len, int max_len, uint64_t seed,
                                                        int64_t vocab = kTinyVocab) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; ++i) {
    const int len = min_len + int(rng() % uint64_t(max_len - min_len + 1));
    std::vector<int32_t> p;
    if (i % 3 == 0) {
      std::vector<int32_t> motif(2 + rng() % 4);
      for (auto& t : motif) t = int32_t(rng() % uint64_t(vocab));
      while (int(p.size()) < len) p.push_back(motif[p.size() % motif.size()]);
    } else {
      for (int j = 0; j < len; ++j) p.push_back(int32_t(rng() % uint64_t(vocab)));
    }
    prompts.push_back(std::move(p));
  }
  return prompts;
}

inline engine::GenerationOptions greedy_options(int32_t max_tokens) {
  engine::GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = max_tokens;
  o.ignore_eos = true;
  return o;
}

inline std::vector<std::vector<int32_t>> outputs_of(const std::vector<engine::GenerationResult>& results) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : results) out.push_back(r.output_ids);
  return out;
}

}  // namespace xy::testing
