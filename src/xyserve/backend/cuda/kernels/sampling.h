// The sampling kernel: one CTA per logits row applies meta/sampling_plan.h's rules (penalties,
// greedy or temperature/top-k/top-p/min-p and one draw, raw logprobs, top-n raw logprobs) and
// writes only the token, its logprob and the top-n entries. DeviceSampler (device_sampler.h)
// packs the plan and owns the buffers; this is the launcher it calls.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "xyserve/meta/sampling_plan.h"

namespace xy::cuda {

// Top logprobs per row the kernel can return: per-thread candidate lists of this length live in
// registers/local memory. OpenAI documents 20 as its cap and the server allows no more
// (server/openai_request.h, max_logprobs).
inline constexpr int32_t kMaxTopLogprobs = 20;

// Largest vocabulary: ids fit in 24 bits (the tie-breaking select works on them) and the bitmap
// of penalised ids (vocab / 8 bytes) fits in shared memory beside the candidate list.
inline constexpr int64_t kMaxSamplingVocab = int64_t(1) << 19;

// Candidates (tokens whose probability is at least 2^-40 of the most likely one's) that a CTA
// keeps in shared memory, 8 bytes each: when a row has no more, every search after the first
// two passes runs from shared memory instead of re-reading the row; 128 KiB leaves room for the
// penalty bitmap within the 227 KiB an H100/H200 CTA may take.
inline constexpr int32_t kSamplingListCapacity = 16384;

// tokens[row] codes besides token ids (DeviceSampler turns the last two into errors).
inline constexpr int32_t kSamplingReturnedLogits = -1;      // a return_logits row
inline constexpr int32_t kSamplingNoFiniteLogit = -2;       // nothing has a finite probability
inline constexpr int32_t kSamplingDuplicatePenalty = -3;    // a token twice in the row's penalties

// One logits row's settings, packed on the host.
struct SamplingRow {
  double uniform = 0.0;      // [0, 1): the draw
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int32_t top_k = 0;               // <= 0: no limit
  int32_t num_top_logprobs = 0;    // entries of the row's top_logprobs to fill, in [0, top_n]
  int32_t penalties_begin = 0;     // the row's entries in `penalties`
  int32_t penalties_end = 0;
  int32_t return_logits = 0;       // nonzero: no token (the host copies the raw row)
};
static_assert(std::is_trivially_copyable_v<SamplingRow> && sizeof(SamplingRow) == 56);

struct SamplingArgs {
  const float* logits = nullptr;  // [num_rows, vocab] fp32
  int64_t vocab = 0;
  int32_t num_rows = 0;
  const SamplingRow* rows = nullptr;             // [num_rows]
  const meta::PenaltyToken* penalties = nullptr;  // each token at most once per row
  bool any_penalties = false;  // some row has penalty entries (sizes the bitmap)
  bool any_sampled = false;    // some row has temperature > 0 (sizes the candidate list)
  int32_t top_n = 0;           // width of top_logprobs, <= kMaxTopLogprobs
  int32_t* tokens = nullptr;   // [num_rows]: token id or a kSampling* code
  float* logprobs = nullptr;   // [num_rows]: raw logprob of the token (0 for a code)
  meta::TokenLogprob* top_logprobs = nullptr;  // [num_rows, top_n]; {-1, 0} past a row's n
};

// Preconditions (checked by DeviceSampler on the host): 0 < vocab <= kMaxSamplingVocab, penalty
// token ids in [0, vocab), penalties ranges within the array, top_n <= kMaxTopLogprobs.
// Deterministic: the same inputs give bitwise the same outputs.
void launch_sampling(const SamplingArgs& args, cudaStream_t stream);

}  // namespace xy::cuda
