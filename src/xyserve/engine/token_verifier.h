// Turns one request's logits rows into its next tokens: a plain sample for a decode or the end
// of a prefill, or the verification of its drafts (sched/rejection_sampler.h) for a verify.
// Each row's distribution comes from the backend/cpu sampler's own steps (penalties over the
// output so far plus the draft path to that row, temperature, top-k/p, min-p), so the tokens
// emitted follow exactly the distribution that decoding without drafts samples from, and under
// greedy decoding are exactly its tokens.
//
// Not thread-safe (scratch buffers); the engine thread owns one.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/sched/request.h"
#include "xyserve/sched/scheduler.h"

namespace xy::engine {

struct VerifiedTokens {
  sched::SampledTokens sampled;
  std::vector<float> logprobs;  // raw logprob of each token in sampled.tokens
  std::vector<std::vector<backend::cpu::TokenLogprob>> top_logprobs;  // when asked
};

class TokenVerifier {
 public:
  // `logits`: [1 + r.draft_tokens.size(), vocab], row 0 the last real token's.
  VerifiedTokens run(const sched::Request& r, std::span<const float> logits, int64_t vocab,
                     std::mt19937_64& rng);

 private:
  // The logits of `row` after penalties, with the output followed by the draft path to row.
  std::span<float> penalized_row(const sched::Request& r, std::span<const float> logits,
                                 int64_t vocab, int32_t row);

  backend::cpu::Sampler sampler_;
  std::vector<float> work_;
  std::vector<int32_t> context_, scratch_;
  std::vector<backend::cpu::TokenProb> dist_;
  std::vector<double> dense_;
};

// log_softmax(logits)[token], and the top n (n >= 0) by logit, ties to the lower id.
float raw_logprob(std::span<const float> logits, int32_t token);
std::vector<backend::cpu::TokenLogprob> raw_top_logprobs(std::span<const float> logits, int32_t n);

}  // namespace xy::engine
