#include "xyserve/backend/cpu/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "xyserve/common/check.h"

namespace xy::backend::cpu {
namespace {

// Most likely first; ties: lower id first.
bool before(const TokenProb& a, const TokenProb& b) {
  return a.prob > b.prob || (a.prob == b.prob && a.token < b.token);
}

// log of sum(exp(logits)), in double.
double log_sum_exp(std::span<const float> logits) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float x : logits) mx = std::max(mx, x);
  double sum = 0.0;
  for (float x : logits) sum += std::exp(double(x) - double(mx));
  return double(mx) + std::log(sum);
}

}  // namespace

int32_t draw(std::span<const TokenProb> dist, double uniform) {
  XY_CHECK(!dist.empty());
  double cum = 0.0;
  for (const auto& t : dist) {
    cum += t.prob;
    if (uniform < cum) return t.token;
  }
  return dist.back().token;
}

void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const meta::PenaltyToken> penalties) {
  const int64_t vocab = int64_t(logits.size());
  const float rp = params.repetition_penalty;
  for (const meta::PenaltyToken& e : penalties) {
    XY_CHECK(e.token >= 0 && e.token < vocab, "token id ", e.token, " outside [0, ", vocab, ")");
    float& l = logits[size_t(e.token)];
    if (rp != 1.0f) l = l > 0.0f ? l / rp : l * rp;
    if (e.output_count > 0) l -= params.frequency_penalty * float(e.output_count) + params.presence_penalty;
  }
}

void sample_rows(std::span<const float> logits, int64_t vocab, const meta::SamplingPlan& plan,
                 meta::SamplingOutput& out) {
  const size_t rows = plan.rows.size();
  XY_CHECK(logits.size() == rows * size_t(vocab), logits.size(), " logits for ", rows, " rows of ", vocab);
  out.top_n = plan.max_top_logprobs();
  out.tokens.assign(rows, -1);
  out.logprobs.assign(rows, 0.0f);
  out.top_logprobs.assign(rows * size_t(out.top_n), meta::TokenLogprob{});
  out.logits.clear();
  std::vector<float> work;
  std::vector<TokenProb> dist;
  for (size_t i = 0; i < rows; ++i) {
    const meta::RowSampling& row = plan.rows[i];
    const std::span<const float> raw = logits.subspan(i * size_t(vocab), size_t(vocab));
    if (row.return_logits) {
      out.logits.insert(out.logits.end(), raw.begin(), raw.end());
      continue;
    }
    work.assign(raw.begin(), raw.end());
    XY_CHECK(row.penalties_begin >= 0 && row.penalties_begin <= row.penalties_end &&
             size_t(row.penalties_end) <= plan.penalties.size(), "row ", i, " penalties");
    apply_penalties(work, row.params,
                    std::span(plan.penalties).subspan(size_t(row.penalties_begin),
                                                      size_t(row.penalties_end - row.penalties_begin)));
    int32_t token;
    if (row.params.greedy()) {
      token = argmax(work);
    } else {
      sampling_distribution(work, row.params, dist);
      token = draw(dist, row.uniform);
    }
    out.tokens[i] = token;
    const double lse = log_sum_exp(raw);
    out.logprobs[i] = float(double(raw[size_t(token)]) - lse);
    const size_t n = size_t(std::max(0, std::min<int32_t>(row.params.logprobs, out.top_n)));
    if (n == 0) continue;
    dist.clear();
    for (size_t t = 0; t < raw.size(); ++t) dist.push_back({int32_t(t), double(raw[t])});
    const size_t k = std::min(n, dist.size());
    std::partial_sort(dist.begin(), dist.begin() + ptrdiff_t(k), dist.end(), before);
    for (size_t j = 0; j < k; ++j)
      out.top_logprobs[i * size_t(out.top_n) + j] = {dist[j].token, float(dist[j].prob - lse)};
  }
}

void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids) {
  std::vector<int32_t> scratch;
  apply_penalties(logits, params, prompt_ids, output_ids, scratch);
}

void apply_penalties(std::span<float> logits, const meta::SamplingParams& params,
                     std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                     std::vector<int32_t>& scratch) {
  const int64_t vocab = int64_t(logits.size());
  auto check_id = [&](int32_t id) {
    XY_CHECK(id >= 0 && id < vocab, "token id ", id, " outside [0, ", vocab, ")");
  };
  if (params.repetition_penalty != 1.0f) {
    const float rp = params.repetition_penalty;
    // Each distinct token once, whether it appears in the prompt, the output or both.
    std::vector<int32_t>& seen = scratch;
    seen.assign(prompt_ids.begin(), prompt_ids.end());
    seen.insert(seen.end(), output_ids.begin(), output_ids.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t id : seen) {
      check_id(id);
      float& l = logits[size_t(id)];
      l = l > 0.0f ? l / rp : l * rp;
    }
  }
  if (params.frequency_penalty != 0.0f || params.presence_penalty != 0.0f) {
    std::vector<int32_t>& ids = scratch;
    ids.assign(output_ids.begin(), output_ids.end());
    std::sort(ids.begin(), ids.end());
    for (size_t i = 0; i < ids.size();) {
      size_t j = i;
      while (j < ids.size() && ids[j] == ids[i]) ++j;
      check_id(ids[i]);
      logits[size_t(ids[i])] -= params.frequency_penalty * float(j - i) + params.presence_penalty;
      i = j;
    }
  }
}

int32_t argmax(std::span<const float> logits) {
  XY_CHECK(!logits.empty());
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: the first (lowest id) maximum stays
  }
  return int32_t(best);
}

void sampling_distribution(std::span<const float> logits, const meta::SamplingParams& params,
                           std::vector<TokenProb>& out) {
  XY_CHECK(params.temperature > 0.0f, "temperature ", params.temperature);
  const double inv_t = 1.0 / double(params.temperature);
  out.clear();
  // Hold scaled logits in `prob` until the softmax below.
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] == -std::numeric_limits<float>::infinity()) continue;
    out.push_back({int32_t(i), double(logits[i]) * inv_t});
  }
  XY_CHECK(!out.empty(), "every logit is -inf");
  const int64_t k = params.top_k;
  if (k > 0 && k < int64_t(out.size())) {
    std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), before);
    const double kth = out[size_t(k - 1)].prob;
    // Keep ties with the k-th value, as vLLM's threshold mask does.
    out.erase(
        std::remove_if(out.begin(), out.end(), [&](const TokenProb& t) { return t.prob < kth; }),
        out.end());
  }
  std::sort(out.begin(), out.end(), before);
  auto softmax = [&] {
    const double mx = out.front().prob;
    double sum = 0.0;
    for (auto& t : out) sum += (t.prob = std::exp(t.prob - mx));
    for (auto& t : out) t.prob /= sum;
  };
  auto renormalise = [&] {
    double sum = 0.0;
    for (const auto& t : out) sum += t.prob;
    for (auto& t : out) t.prob /= sum;
  };
  softmax();
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    size_t keep = 0;
    while (keep < out.size() && (keep == 0 || mass < double(params.top_p)))
      mass += out[keep++].prob;
    out.resize(keep);
    renormalise();
  }
  if (params.min_p > 0.0f) {
    const double floor = double(params.min_p) * out.front().prob;
    size_t keep = 1;
    while (keep < out.size() && out[keep].prob >= floor) ++keep;
    out.resize(keep);
    renormalise();
  }
}

SampleResult Sampler::sample(std::span<const float> logits, const meta::SamplingParams& params,
                             std::span<const int32_t> prompt_ids,
                             std::span<const int32_t> output_ids, std::mt19937_64& rng) {
  XY_CHECK(!logits.empty());
  SampleResult result;
  work_.assign(logits.begin(), logits.end());
  apply_penalties(work_, params, prompt_ids, output_ids, ids_);
  if (params.greedy()) {
    result.token = argmax(work_);
  } else {
    sampling_distribution(work_, params, dist_);
    result.token = draw(dist_, uniform01(rng));
  }
  const double lse = log_sum_exp(logits);
  result.logprob = float(double(logits[size_t(result.token)]) - lse);
  if (params.logprobs > 0) {
    const size_t n = std::min(size_t(params.logprobs), logits.size());
    dist_.clear();
    for (size_t i = 0; i < logits.size(); ++i) dist_.push_back({int32_t(i), double(logits[i])});
    std::partial_sort(dist_.begin(), dist_.begin() + ptrdiff_t(n), dist_.end(), before);
    result.top_logprobs.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      result.top_logprobs.push_back({dist_[i].token, float(dist_[i].prob - lse)});
    }
  }
  return result;
}

SampleResult sample(std::span<const float> logits, const meta::SamplingParams& params,
                    std::span<const int32_t> prompt_ids, std::span<const int32_t> output_ids,
                    std::mt19937_64& rng) {
  thread_local Sampler sampler;
  return sampler.sample(logits, params, prompt_ids, output_ids, rng);
}

}  // namespace xy::backend::cpu
