// What a step samples: one entry per logits row of the StepPlan, so that a backend chooses the
// tokens where the logits are (on the GPU: only token ids, and logprobs when asked, come back).
// Plain data; the engine fills it from each request's state (engine/token_verifier.h) and every
// backend follows the same rules (backend/cpu/sampler.h states them):
//   1. penalties from the row's PenaltyTokens; 2. temperature 0: argmax (lowest id on ties);
//   3. otherwise top-k, top-p, min-p on the tempered softmax; 4. the token where the mass of
//   the kept tokens, most likely first (ties: lower id first), first exceeds uniform x total.
// Logprobs are of the raw logits (before penalties and temperature), as vLLM returns them.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "xyserve/meta/sampling_params.h"

namespace xy::meta {

// A uniform double in [0, 1) from the top 53 bits of one draw: the same on every platform (no
// std::*_distribution, whose algorithm is unspecified). Every draw of sampling and verification.
inline double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

// A token of the row's penalty context: every distinct token of the prompt (when the
// repetition penalty is on) and of the output so far plus the draft path to the row, with how
// often it occurs in the latter. Repetition applies to every entry; frequency and presence to
// entries with output_count > 0.
struct PenaltyToken {
  int32_t token = 0;
  int32_t output_count = 0;
};

// Appends the penalty context of `params` to `out`: nothing when no penalty is on; else each
// distinct token of `output` (with its count) and, when the repetition penalty is on, of
// `prompt`. `scratch` is reused working memory.
void append_penalty_tokens(const SamplingParams& params, std::span<const int32_t> prompt,
                           std::span<const int32_t> output, std::vector<PenaltyToken>& out,
                           std::vector<int32_t>& scratch);

struct RowSampling {
  SamplingParams params;
  // The draw for temperature > 0, in [0, 1), taken from the request's own generator so that a
  // seed gives the same tokens on every backend.
  double uniform = 0.0;
  // This row's entries in SamplingPlan::penalties: [penalties_begin, penalties_end).
  int32_t penalties_begin = 0;
  int32_t penalties_end = 0;
  // The row's raw logits come back instead of a token (a sampled verify of drafts, which the
  // host decides with rejection sampling).
  bool return_logits = false;
};

struct SamplingPlan {
  std::vector<RowSampling> rows;  // one per logits row, in plan order
  std::vector<PenaltyToken> penalties;

  // The largest params.logprobs over rows (0 when none asks for top logprobs).
  int32_t max_top_logprobs() const {
    int32_t n = 0;
    for (const RowSampling& r : rows) n = r.params.logprobs > n ? r.params.logprobs : n;
    return n;
  }
  int32_t num_logits_returned() const {
    int32_t n = 0;
    for (const RowSampling& r : rows) n += r.return_logits ? 1 : 0;
    return n;
  }
};

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

// What comes back for a SamplingPlan.
struct SamplingOutput {
  std::vector<int32_t> tokens;  // [rows]; -1 for a return_logits row
  std::vector<float> logprobs;  // [rows]: raw logprob of tokens[i] (0 for a return_logits row)
  // [rows][top_n], top_n = plan.max_top_logprobs(): the top_n largest raw logits of each row,
  // most likely first, ties to the lower id; a row that asked for fewer uses its first entries.
  int32_t top_n = 0;
  std::vector<TokenLogprob> top_logprobs;
  // [num_logits_returned][vocab]: the raw logits of the return_logits rows, in row order.
  std::vector<float> logits;
};

}  // namespace xy::meta
