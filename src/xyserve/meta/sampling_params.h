// How a request wants its next token chosen. Field names and defaults follow the OpenAI API and
// vLLM's SamplingParams, so that the server passes them through unchanged.
#pragma once

#include <cstdint>
#include <optional>

namespace xy::meta {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]
  int32_t top_k = 0;         // 0 or -1: no limit
  float min_p = 0.0f;        // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; over prompt and output tokens (as vLLM)
  float frequency_penalty = 0.0f;   // [-2, 2]; over output tokens
  float presence_penalty = 0.0f;    // [-2, 2]; over output tokens
  std::optional<uint64_t> seed;     // same seed, same output
  int32_t logprobs = -1;            // -1: none; n >= 0: the chosen token's and the top n

  bool greedy() const { return temperature <= 0.0f; }
};

}  // namespace xy::meta
