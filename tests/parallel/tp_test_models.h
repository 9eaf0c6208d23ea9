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
#include <vector>

#include "support/plan_sequences.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::testing {

inline constexpr int64_t kTpVocab = 509;

// The steps the tensor-parallel suites compare: prefill chunks of three sequences (one chunk ending
// mid-prompt without logits), a draft-tree verify, then `decode_steps` steps of three decodes (30
// go past the mistral window, 32, and several block boundaries).
inline std::vector<meta::StepPlan> tp_test_steps(uint64_t seed, int32_t num_blocks, int32_t block_size,
                                                 int decode_steps) {
  PlanSequences seqs(kTpVocab, seed, num_blocks, block_size);
  const int32_t a = seqs.add_seq(40), b = seqs.add_seq(70), c = seqs.add_seq(5);
  std::vector<meta::StepPlan> plans(3);
  seqs.add_rows(plans[0], a, 40, 1);
  seqs.add_rows(plans[0], b, 30, 0);
  seqs.add_rows(plans[0], c, 5, 5);
  seqs.add_rows(plans[1], b, 40, 1);
  seqs.add_decode(plans[1], a);
  seqs.add_decode(plans[1], c);
  std::vector<int32_t> drafts;
  seqs.add_tree(plans[2], a, {-1, 0, 0, 1, 2, 1}, drafts);
  seqs.add_decode(plans[2], b);
  seqs.add_decode(plans[2], c);
  for (int step = 0; step < decode_steps; ++step) {
    meta::StepPlan& p = plans.emplace_back();
    for (const int32_t s : {a, b, c}) seqs.add_decode(p, s);
  }
  return plans;
}

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
