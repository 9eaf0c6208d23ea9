// Generates text for one request at a time on a backend: prefill the prompt, then decode a
// token per step, streaming text out. The hybrid engine (scheduler, batching, prefix cache)
// replaces this loop; it stays as the simplest correct path that `xyserve generate` uses.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/common/error.h"
#include "xyserve/meta/sampling_params.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::engine {

enum class FinishReason { kStop, kLength };

struct GenerateOptions {
  meta::SamplingParams sampling;
  int32_t max_tokens = 128;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS tokens
  int32_t prefill_chunk = 0;            // > 0: feed the prompt in chunks of this many tokens
};

struct GenerateResult {
  std::vector<int32_t> output_ids;
  std::vector<float> logprobs;  // of each chosen token, from the raw logits
  FinishReason finish_reason = FinishReason::kLength;
  std::string text;
};

class Generator {
 public:
  // `eos_token_ids`: tokens that end generation (config.json's and tokenizer_config.json's).
  Generator(backend::Backend& backend, const tokenizer::Tokenizer& tokenizer,
            std::vector<int32_t> eos_token_ids);

  // Runs one request to completion. `on_text` receives text as it becomes final (never a
  // partial UTF-8 sequence). Throws InvalidArgument when the prompt and max_tokens cannot fit
  // in the KV cache.
  GenerateResult generate(const std::vector<int32_t>& prompt_ids, const GenerateOptions& options,
                          const std::function<void(const std::string&)>& on_text = {});

 private:
  backend::Backend& backend_;
  const tokenizer::Tokenizer& tokenizer_;
  std::vector<int32_t> eos_token_ids_;
  std::vector<float> logits_;
};

}  // namespace xy::engine
