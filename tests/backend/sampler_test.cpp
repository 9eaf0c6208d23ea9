// The sampler: each step's exact effect on hand-built distributions, the draw's statistics,
// seeds, greedy ties and raw logprobs.
#include "xyserve/backend/cpu/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

namespace xy::backend::cpu {
namespace {

using meta::SamplingParams;

// Logits whose softmax is exactly proportional to `probs`.
std::vector<float> logits_for(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

std::vector<int32_t> tokens_of(const std::vector<TokenProb>& d) {
  std::vector<int32_t> t;
  for (const auto& x : d) t.push_back(x.token);
  return t;
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeOncePerToken) {
  std::vector<float> logits = {2.0f, 2.0f, -1.0f, -1.0f, 0.5f, 3.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {1, 1, 3}, output = {3, 4};
  apply_penalties(logits, p, prompt, output);
  EXPECT_EQ(logits, (std::vector<float>{2.0f, 1.0f, -1.0f, -2.0f, 0.25f, 3.0f}));
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountOnlyOutputTokens) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  SamplingParams p;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  const std::vector<int32_t> prompt = {0, 0, 0}, output = {2, 2, 2, 3};
  apply_penalties(logits, p, prompt, output);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, 1.0f, 1.0f - 1.5f - 0.25f, 1.0f - 0.5f - 0.25f}));
}

TEST(Sampler, GreedyTakesLowestIdOnTiesAndIgnoresFilters) {
  std::vector<float> logits = {0.0f, 1.0f, 5.0f, -2.0f, 5.0f, 5.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = 1;
  p.top_p = 0.1f;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sample(logits, p, {}, {}, rng).token, 2);
  // A repetition penalty moves the argmax.
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> seen = {2, 4};
  EXPECT_EQ(sample(logits, p, seen, {}, rng).token, 5);
}

TEST(Sampler, TopKKeepsTheKLargestAndTiesWithTheKth) {
  SamplingParams p;
  p.top_k = 2;
  std::vector<TokenProb> d;
  sampling_distribution(logits_for({0.1, 0.4, 0.2, 0.3}), p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(d[0].prob, 0.4 / 0.7, 1e-6);
  EXPECT_NEAR(d[1].prob, 0.3 / 0.7, 1e-6);
  sampling_distribution(std::vector<float>{1.0f, 3.0f, 2.0f, 2.0f, 0.0f}, p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{1, 2, 3}));
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingTheMass) {
  SamplingParams p;
  const auto logits = logits_for({0.05, 0.5, 0.15, 0.3});
  std::vector<TokenProb> d;
  p.top_p = 0.79f;
  sampling_distribution(logits, p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{1, 3}));
  p.top_p = 0.81f;
  sampling_distribution(logits, p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{1, 3, 2}));
  EXPECT_NEAR(d[2].prob, 0.15 / 0.95, 1e-6);
  p.top_p = 1e-6f;  // always at least one
  sampling_distribution(logits, p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{1}));
  EXPECT_DOUBLE_EQ(d[0].prob, 1.0);
}

TEST(Sampler, MinPDropsTokensBelowTheFractionOfTheMax) {
  SamplingParams p;
  p.min_p = 0.5f;
  std::vector<TokenProb> d;
  // Threshold 0.5 * 0.4 = 0.2: 0.19 goes, 0.205 and 0.21 stay.
  sampling_distribution(logits_for({0.4, 0.19, 0.21, 0.205}), p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{0, 2, 3}));
  EXPECT_NEAR(d[0].prob, 0.4 / 0.815, 1e-6);
}

TEST(Sampler, FiltersApplyInOrderTopKThenTopPThenMinP) {
  // top-k 3 leaves {0.4, 0.3, 0.2} / 0.9; top-p 0.7 keeps tokens {0, 1} (mass 0.78), now
  // {4/7, 3/7}; min-p 0.8 drops token 1 (3/7 < 0.8 * 4/7), min-p 0.7 keeps it (3/7 >= 0.7 * 4/7).
  SamplingParams p;
  p.top_k = 3;
  p.top_p = 0.7f;
  p.min_p = 0.8f;
  std::vector<TokenProb> d;
  sampling_distribution(logits_for({0.4, 0.3, 0.2, 0.1}), p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{0}));
  p.min_p = 0.7f;
  sampling_distribution(logits_for({0.4, 0.3, 0.2, 0.1}), p, d);
  EXPECT_EQ(tokens_of(d), (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(d[1].prob, 3.0 / 7.0, 1e-6);
}

// Chi-square goodness of fit of many draws against the distribution computed here from the
// definitions (softmax of logits / T, keep the top k, then the smallest top-p set).
TEST(Sampler, DrawsFollowTheRenormalisedDistribution) {
  const std::vector<float> logits = {0.3f, 1.2f, -0.5f, 0.9f, 2.0f, 0.0f, 1.5f, -1.0f, 0.7f, 1.1f};
  struct Case {
    float temperature, top_p;
    int32_t top_k;
  };
  for (const Case c :
       {Case{1.0f, 1.0f, 0}, Case{0.7f, 1.0f, 5}, Case{1.3f, 0.8f, 0}, Case{0.9f, 0.9f, 6}}) {
    // Expected: independent of sampling_distribution.
    std::vector<std::pair<double, int>> scaled;
    for (size_t i = 0; i < logits.size(); ++i)
      scaled.push_back({logits[i] / c.temperature, int(i)});
    std::sort(scaled.begin(), scaled.end(), [](auto a, auto b) { return a.first > b.first; });
    if (c.top_k > 0) scaled.resize(size_t(c.top_k));
    double z = 0;
    for (auto& s : scaled) z += std::exp(s.first);
    std::map<int, double> expected;
    double mass = 0;
    for (auto& s : scaled) {
      if (mass >= c.top_p) break;
      expected[s.second] = std::exp(s.first) / z;
      mass += std::exp(s.first) / z;
    }
    for (auto& [t, pr] : expected) pr /= mass;

    SamplingParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    std::mt19937_64 rng(1234);
    const int n = 40000;
    std::map<int, int> counts;
    for (int i = 0; i < n; ++i) counts[sample(logits, p, {}, {}, rng).token]++;
    double chi2 = 0;
    for (auto& [t, cnt] : counts) ASSERT_TRUE(expected.count(t)) << "drew filtered token " << t;
    for (auto& [t, pr] : expected) {
      const double e = pr * n;
      chi2 += (counts[t] - e) * (counts[t] - e) / e;
    }
    // Critical value at p = 0.001 (Wilson-Hilferty), df = kept tokens - 1.
    const double df = double(expected.size() - 1), zq = 3.09;
    const double crit = df * std::pow(1 - 2 / (9 * df) + zq * std::sqrt(2 / (9 * df)), 3);
    EXPECT_LT(chi2, crit) << "T=" << c.temperature << " k=" << c.top_k << " p=" << c.top_p;
  }
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(50);
  std::mt19937 gen(3);
  std::normal_distribution<float> dist;
  for (auto& x : logits) x = dist(gen);
  SamplingParams p;
  p.temperature = 1.0f;
  auto run = [&](uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(sample(logits, p, {}, out, rng).token);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, LogprobsAreRawLogSoftmaxWhateverTheSettings) {
  const std::vector<float> logits = {0.5f, 2.5f, -1.0f, 2.5f, 1.0f};
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  SamplingParams p;
  p.temperature = 0.5f;
  p.top_k = 2;
  p.repetition_penalty = 1.7f;
  p.logprobs = 3;
  std::mt19937_64 rng(5);
  const std::vector<int32_t> prompt = {1};
  const SampleResult r = sample(logits, p, prompt, {}, rng);
  EXPECT_NEAR(r.logprob, logits[size_t(r.token)] - std::log(z), 1e-6);
  ASSERT_EQ(r.top_logprobs.size(), 3u);
  const int32_t expect_order[] = {1, 3, 4};  // ties: lower id first
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.top_logprobs[size_t(i)].token, expect_order[i]);
    EXPECT_NEAR(r.top_logprobs[size_t(i)].logprob, logits[size_t(expect_order[i])] - std::log(z),
                1e-6);
  }
  p.logprobs = -1;
  EXPECT_TRUE(sample(logits, p, prompt, {}, rng).top_logprobs.empty());
}

// The plan-driven path (sample_rows, what backends run) against the per-request sampler: the
// same uniform, the same penalties (built by append_penalty_tokens) give the same token.
TEST(Sampler, SampleRowsEqualsTheRequestSamplerWithTheSameDraw) {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> logit(-4.0f, 4.0f);
  const int64_t vocab = 300;
  meta::SamplingPlan plan;
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> prompts, outputs;
  std::vector<uint64_t> seeds;
  std::vector<int32_t> scratch;
  for (int i = 0; i < 400; ++i) {
    for (int64_t t = 0; t < vocab; ++t) logits.push_back(logit(gen));
    SamplingParams p;
    p.temperature = i % 5 == 0 ? 0.0f : 0.3f + float(i % 7) * 0.2f;
    p.top_k = i % 3 == 0 ? int32_t(1 + i % 40) : 0;
    p.top_p = i % 4 == 0 ? 0.5f + float(i % 5) * 0.1f : 1.0f;
    p.min_p = i % 6 == 0 ? 0.05f : 0.0f;
    p.repetition_penalty = i % 2 ? 1.3f : 1.0f;
    p.frequency_penalty = i % 3 == 1 ? 0.4f : 0.0f;
    p.presence_penalty = i % 5 == 2 ? -0.3f : 0.0f;
    p.logprobs = i % 4 == 3 ? int32_t(i % 6) : -1;
    std::vector<int32_t> prompt, output;
    for (int j = 0; j < 20; ++j) prompt.push_back(int32_t(gen() % vocab));
    for (int j = 0; j < i % 13; ++j) output.push_back(int32_t(gen() % 40));
    seeds.push_back(uint64_t(i) * 7919);
    std::mt19937_64 rng(seeds.back());
    meta::RowSampling row;
    row.params = p;
    row.uniform = p.greedy() ? 0.0 : uniform01(rng);
    row.penalties_begin = int32_t(plan.penalties.size());
    meta::append_penalty_tokens(p, prompt, output, plan.penalties, scratch);
    row.penalties_end = int32_t(plan.penalties.size());
    plan.rows.push_back(row);
    prompts.push_back(prompt);
    outputs.push_back(output);
  }
  meta::SamplingOutput out;
  sample_rows(logits, vocab, plan, out);
  ASSERT_EQ(out.tokens.size(), plan.rows.size());
  EXPECT_EQ(out.top_n, plan.max_top_logprobs());
  for (size_t i = 0; i < plan.rows.size(); ++i) {
    std::mt19937_64 rng(seeds[i]);
    const std::span<const float> row(logits.data() + i * size_t(vocab), size_t(vocab));
    const SampleResult r = sample(row, plan.rows[i].params, prompts[i], outputs[i], rng);
    ASSERT_EQ(out.tokens[i], r.token) << "row " << i;
    EXPECT_EQ(out.logprobs[i], r.logprob) << "row " << i;
    for (size_t j = 0; j < r.top_logprobs.size(); ++j) {
      EXPECT_EQ(out.top_logprobs[i * size_t(out.top_n) + j].token, r.top_logprobs[j].token);
      EXPECT_EQ(out.top_logprobs[i * size_t(out.top_n) + j].logprob, r.top_logprobs[j].logprob);
    }
  }
}

TEST(Sampler, PenaltyTokensAreDistinctWithOutputCountsAndThePromptOnlyForRepetition) {
  const std::vector<int32_t> prompt = {5, 5, 9}, output = {9, 2, 9};
  std::vector<meta::PenaltyToken> out;
  std::vector<int32_t> scratch;
  SamplingParams p;
  meta::append_penalty_tokens(p, prompt, output, out, scratch);
  EXPECT_TRUE(out.empty());  // no penalty: nothing to send
  p.frequency_penalty = 0.5f;
  meta::append_penalty_tokens(p, prompt, output, out, scratch);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].token, 2);
  EXPECT_EQ(out[0].output_count, 1);
  EXPECT_EQ(out[1].token, 9);
  EXPECT_EQ(out[1].output_count, 2);
  out.clear();
  p.repetition_penalty = 1.2f;
  meta::append_penalty_tokens(p, prompt, output, out, scratch);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].token, 5);
  EXPECT_EQ(out[1].output_count, 0);
}

TEST(Sampler, ReturnLogitsRowsComeBackWholeAndTakeNoToken) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 3.0f, 1.0f};
  meta::SamplingPlan plan;
  plan.rows.resize(2);
  plan.rows[0].params.temperature = 0.0f;
  plan.rows[0].params.logprobs = 2;
  plan.rows[1].return_logits = true;
  meta::SamplingOutput out;
  sample_rows(logits, 3, plan, out);
  EXPECT_EQ(out.tokens, (std::vector<int32_t>{2, -1}));
  EXPECT_EQ(out.logits, (std::vector<float>{3.0f, 3.0f, 1.0f}));
  ASSERT_EQ(out.top_n, 2);
  EXPECT_EQ(out.top_logprobs[0].token, 2);
  EXPECT_EQ(out.top_logprobs[1].token, 1);
}

}  // namespace
}  // namespace xy::backend::cpu
