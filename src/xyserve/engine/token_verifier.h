// Turns one request's logits rows into its next tokens: a plain sample for a decode or the end
// of a prefill, or the verification of its drafts (sched/rejection_sampler.h) for a verify.
// Each row's distribution follows the sampler's rules (penalties over the output so far plus
// the draft path to that row, temperature, top-k/p, min-p), so the tokens emitted follow
// exactly the distribution that decoding without drafts samples from, and under greedy
// decoding are exactly its tokens.
//
// Two halves around the backend's forward_and_sample: add_rows() says what each of the
// request's logits rows samples (the backend chooses tokens where the logits are), finish()
// turns the rows' results into the request's tokens. Greedy rows (with or without drafts) and
// a sampled plain decode come back as tokens; a sampled verify of drafts needs the whole
// distribution of every row on its path, so its rows come back as logits and are decided here.
//
// Not thread-safe (scratch buffers); the engine thread owns one.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/meta/sampling_plan.h"
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
  // Appends the 1 + r.draft_tokens.size() rows of `r` (row 0 the last real token's) to `plan`;
  // draws the uniform of a sampled decode from `rng`.
  void add_rows(const sched::Request& r, std::mt19937_64& rng, meta::SamplingPlan& plan);

  // The tokens of `r` from the results of its rows, which start at `first_row` of `out`; a
  // sampled verify's logits start at row `first_logits_row` of out.logits. Advances
  // *first_logits_row past the rows it used.
  VerifiedTokens finish(const sched::Request& r, const meta::SamplingOutput& out, int32_t first_row,
                        int32_t* first_logits_row, int64_t vocab, std::mt19937_64& rng);

  // add_rows + the CPU sampler + finish on `logits` [1 + drafts, vocab]: the whole path on
  // logits already on the host (tests).
  VerifiedTokens run(const sched::Request& r, std::span<const float> logits, int64_t vocab,
                     std::mt19937_64& rng);

 private:
  VerifiedTokens verify_sampled(const sched::Request& r, std::span<const float> logits, int64_t vocab,
                                std::mt19937_64& rng);

  // The logits of `row` after penalties, with the output followed by the draft path to row.
  std::span<float> penalized_row(const sched::Request& r, std::span<const float> logits,
                                 int64_t vocab, int32_t row);

  std::vector<float> work_;
  std::vector<int32_t> context_, scratch_;
  std::vector<backend::cpu::TokenProb> dist_;
  std::vector<double> dense_;
};

// log_softmax(logits)[token], and the top n (n >= 0) by logit, ties to the lower id.
float raw_logprob(std::span<const float> logits, int32_t token);
std::vector<backend::cpu::TokenLogprob> raw_top_logprobs(std::span<const float> logits, int32_t n);

}  // namespace xy::engine
