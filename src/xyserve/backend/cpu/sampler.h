// Chooses the next token from one row of logits, as vLLM does, in this order:
//   1. penalties: repetition (over prompt + output tokens: a positive logit is divided by the
//      penalty, a negative one multiplied), frequency (minus penalty x count in the output) and
//      presence (minus penalty if present in the output);
//   2. temperature: 0 is greedy (argmax, the lowest id on ties; the filters below are skipped);
//      otherwise logits / temperature;
//   3. top-k (the k largest; a tie with the k-th value is kept), then top-p (the smallest set of
//      most likely tokens whose mass reaches top_p, always at least one), then min-p (drop a
//      token whose probability is below min_p x the largest), each on the distribution the
//      previous step left, renormalised;
//   4. one draw from `rng`.
// Logprobs are those of the raw model logits (log_softmax before penalties, temperature and
// filters), which is what vLLM returns by default ("raw_logprobs"): they say what the model
// thought, whatever the request's sampling settings.
//
// Same rng state, same inputs -> same result, on any machine with the same libstdc++ mt19937_64
// (the draw uses only rng() bits, no std::*_distribution whose algorithm is unspecified).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "xyserve/meta/sampling_params.h"
#include "xyserve/meta/sampling_plan.h"

namespace xy::backend::cpu {

using meta::TokenLogprob;

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;                    // of `token`, from the raw logits
  std::vector<TokenLogprob> top_logprobs;  // params.logprobs >= 0: the n most likely, raw
};

struct TokenProb {
  int32_t token = -1;
  double prob = 0.0;
};

// Step 1, in place. Precondition: token ids in [0, logits.size()). `scratch` is reused
// working memory (the overload without it allocates).
void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                     std::vector<int32_t>& scratch);
void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids);
// Step 1 from a row's penalty context (meta/sampling_plan.h), in place.
void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const meta::PenaltyToken> penalties);

// Steps 2-3 for temperature > 0: the tokens that may be drawn with their renormalised
// probabilities, most likely first (ties: lower id first). `logits` are after penalties.
void sampling_distribution(std::span<const float> logits, const meta::SamplingParams& params,
                           std::vector<TokenProb>& out);

// The lowest id among the largest logits.
int32_t argmax(std::span<const float> logits);

// Step 4: the token where the cumulative probability of `dist` (most likely first) first
// exceeds `uniform` in [0, 1); the last token when rounding leaves the sum short.
int32_t draw(std::span<const TokenProb> dist, double uniform);

using meta::uniform01;  // the `uniform` of a RowSampling

// Samples every row of `plan` from logits [plan.rows.size(), vocab] (backend/backend.h's
// forward_and_sample on the CPU; the reference that the GPU sampler is tested against).
void sample_rows(std::span<const float> logits, int64_t vocab, const meta::SamplingPlan& plan,
                 meta::SamplingOutput& out);

// Holds the scratch buffers of sampling so that a step allocates nothing once warm.
// Not thread-safe: one Sampler per thread.
class Sampler {
 public:
  SampleResult sample(std::span<const float> logits, const meta::SamplingParams& params,
                      std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                      std::mt19937_64& rng);

 private:
  std::vector<float> work_;
  std::vector<TokenProb> dist_;
  std::vector<int32_t> ids_;
};

// sample() on a thread-local Sampler.
SampleResult sample(std::span<const float> logits, const meta::SamplingParams& params,
                    std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                    std::mt19937_64& rng);

}  // namespace xy::backend::cpu
