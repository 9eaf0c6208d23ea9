#include "xyserve/engine/token_verifier.h"

#include <algorithm>
#include <cmath>

#include "xyserve/common/check.h"
#include "xyserve/sched/rejection_sampler.h"

namespace xy::engine {
namespace {

bool has_penalties(const meta::SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

double log_sum_exp(std::span<const float> logits) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (const float x : logits) sum += std::exp(double(x) - max);
  return double(max) + std::log(sum);
}

}  // namespace

float raw_logprob(std::span<const float> logits, int32_t token) {
  return float(double(logits[size_t(token)]) - log_sum_exp(logits));
}

std::vector<backend::cpu::TokenLogprob> raw_top_logprobs(std::span<const float> logits, int32_t n) {
  const double lse = log_sum_exp(logits);
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
  const size_t k = std::min(size_t(n), ids.size());
  std::partial_sort(ids.begin(), ids.begin() + std::ptrdiff_t(k), ids.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
  });
  std::vector<backend::cpu::TokenLogprob> out(k);
  for (size_t i = 0; i < k; ++i) out[i] = {ids[i], float(double(logits[size_t(ids[i])]) - lse)};
  return out;
}

std::span<float> TokenVerifier::penalized_row(const sched::Request& r, std::span<const float> logits,
                                              int64_t vocab, int32_t row) {
  const std::span<const float> raw = logits.subspan(size_t(row * vocab), size_t(vocab));
  work_.assign(raw.begin(), raw.end());
  if (!has_penalties(r.sampling)) return work_;
  // Output so far, then the drafts from the root down to this row's node.
  context_.assign(r.token_ids.begin() + r.num_prompt_tokens, r.token_ids.end());
  const sched::DraftProposal draft{r.draft_tokens, r.draft_parents};
  const size_t base = context_.size();
  for (int32_t node = row - 1; node >= 0; node = draft.parent(node))
    context_.push_back(r.draft_tokens[size_t(node)]);
  std::reverse(context_.begin() + std::ptrdiff_t(base), context_.end());
  const std::span<const int32_t> prompt(r.token_ids.data(), size_t(r.num_prompt_tokens));
  backend::cpu::apply_penalties(work_, r.sampling, prompt, context_, scratch_);
  return work_;
}

void TokenVerifier::add_rows(const sched::Request& r, std::mt19937_64& rng, meta::SamplingPlan& plan) {
  const int32_t num_rows = 1 + int32_t(r.draft_tokens.size());
  const bool sampled_verify = !r.sampling.greedy() && num_rows > 1;
  const std::span<const int32_t> prompt(r.token_ids.data(), size_t(r.num_prompt_tokens));
  const sched::DraftProposal draft{r.draft_tokens, r.draft_parents};
  for (int32_t row = 0; row < num_rows; ++row) {
    meta::RowSampling rs;
    rs.params = r.sampling;
    rs.return_logits = sampled_verify;
    if (!r.sampling.greedy() && !sampled_verify) rs.uniform = backend::cpu::uniform01(rng);
    rs.penalties_begin = rs.penalties_end = int32_t(plan.penalties.size());
    if (!sampled_verify && has_penalties(r.sampling)) {
      // Output so far, then the drafts from the root down to this row's node.
      context_.assign(r.token_ids.begin() + r.num_prompt_tokens, r.token_ids.end());
      const size_t base = context_.size();
      for (int32_t node = row - 1; node >= 0; node = draft.parent(node))
        context_.push_back(r.draft_tokens[size_t(node)]);
      std::reverse(context_.begin() + std::ptrdiff_t(base), context_.end());
      meta::append_penalty_tokens(r.sampling, prompt, context_, plan.penalties, scratch_);
      rs.penalties_end = int32_t(plan.penalties.size());
    }
    plan.rows.push_back(rs);
  }
}

VerifiedTokens TokenVerifier::finish(const sched::Request& r, const meta::SamplingOutput& out,
                                     int32_t first_row, int32_t* first_logits_row, int64_t vocab,
                                     std::mt19937_64& rng) {
  const int32_t num_rows = 1 + int32_t(r.draft_tokens.size());
  XY_CHECK(first_row + num_rows <= int32_t(out.tokens.size()), "request ", r.id, ": rows ", first_row,
           "+", num_rows, " of ", out.tokens.size());
  if (!r.sampling.greedy() && num_rows > 1) {
    const size_t begin = size_t(*first_logits_row) * size_t(vocab);
    XY_CHECK(begin + size_t(num_rows * vocab) <= out.logits.size(), "request ", r.id, ": logits rows");
    *first_logits_row += num_rows;
    return verify_sampled(r, std::span(out.logits).subspan(begin, size_t(num_rows * vocab)), vocab, rng);
  }
  VerifiedTokens v;
  v.sampled.request_id = r.id;
  // Token i was drawn at the row of its parent: row 0, then the accepted nodes' rows. Under
  // greedy verification the token accepted at a row is that row's argmax, so every emitted
  // token is its row's sampled token, with that row's logprobs.
  std::vector<int32_t> rows;
  if (num_rows == 1) {
    rows.push_back(0);
    v.sampled.tokens.push_back(out.tokens[size_t(first_row)]);
  } else {
    const sched::DraftProposal draft{r.draft_tokens, r.draft_parents};
    const sched::VerifyOutcome o =
        sched::verify_greedy(draft, [&](int32_t row) { return out.tokens[size_t(first_row + row)]; });
    v.sampled.accepted = o.accepted;
    rows.push_back(0);
    for (const int32_t node : o.accepted) {
      v.sampled.tokens.push_back(r.draft_tokens[size_t(node)]);
      rows.push_back(1 + node);
    }
    v.sampled.tokens.push_back(o.next_token);
  }
  if (r.sampling.logprobs >= 0) {
    const size_t n = size_t(std::min(r.sampling.logprobs, out.top_n));
    for (const int32_t row : rows) {
      const size_t i = size_t(first_row + row);
      v.logprobs.push_back(out.logprobs[i]);
      const auto* top = out.top_logprobs.data() + i * size_t(out.top_n);
      v.top_logprobs.emplace_back(top, top + n);
    }
  }
  return v;
}

VerifiedTokens TokenVerifier::run(const sched::Request& r, std::span<const float> logits, int64_t vocab,
                                  std::mt19937_64& rng) {
  meta::SamplingPlan plan;
  add_rows(r, rng, plan);
  XY_CHECK(int64_t(logits.size()) == int64_t(plan.rows.size()) * vocab, "request ", r.id, ": ",
           logits.size(), " logits for ", plan.rows.size(), " rows of ", vocab);
  meta::SamplingOutput out;
  backend::cpu::sample_rows(logits, vocab, plan, out);
  int32_t first_logits_row = 0;
  return finish(r, out, 0, &first_logits_row, vocab, rng);
}

VerifiedTokens TokenVerifier::verify_sampled(const sched::Request& r, std::span<const float> logits,
                                             int64_t vocab, std::mt19937_64& rng) {
  VerifiedTokens out;
  out.sampled.request_id = r.id;
  const sched::DraftProposal draft{r.draft_tokens, r.draft_parents};
  const sched::VerifyOutcome v = sched::verify_point_mass(
      draft,
      [&](int32_t row) -> std::span<const double> {
        backend::cpu::sampling_distribution(penalized_row(r, logits, vocab, row), r.sampling, dist_);
        dense_.assign(size_t(vocab), 0.0);
        for (const auto& tp : dist_) dense_[size_t(tp.token)] = tp.prob;
        return dense_;
      },
      rng);
  out.sampled.accepted = v.accepted;
  for (const int32_t node : v.accepted) out.sampled.tokens.push_back(r.draft_tokens[size_t(node)]);
  out.sampled.tokens.push_back(v.next_token);
  if (r.sampling.logprobs >= 0) {
    // Token i was drawn at the row of its parent: row 0, then the accepted nodes' rows.
    for (size_t i = 0; i < out.sampled.tokens.size(); ++i) {
      const int32_t row = i == 0 ? 0 : 1 + v.accepted[i - 1];
      const std::span<const float> raw = logits.subspan(size_t(row * vocab), size_t(vocab));
      out.logprobs.push_back(raw_logprob(raw, out.sampled.tokens[i]));
      out.top_logprobs.push_back(raw_top_logprobs(raw, r.sampling.logprobs));
    }
  }
  return out;
}

}  // namespace xy::engine
