// Rejection sampling keeps the target distribution exact: with fixed target and draft
// distributions, the empirical distribution of emitted tokens matches the target (chi-square,
// fixed seed), for chains, trees and drafts with their own probabilities.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "xyserve/sched/rejection_sampler.h"

namespace xy::sched {
namespace {

constexpr int32_t kVocab = 8;
// Chi-square critical value for 7 degrees of freedom at p = 0.001.
constexpr double kChi2Critical7 = 24.32;

std::vector<double> random_distribution(std::mt19937_64& rng, bool sparse) {
  std::vector<double> p(kVocab);
  double sum = 0;
  for (int32_t i = 0; i < kVocab; ++i) {
    p[size_t(i)] = (sparse && i % 3 == 1) ? 0.0 : 0.05 + uniform01(rng);
    sum += p[size_t(i)];
  }
  for (auto& x : p) x /= sum;
  return p;
}

// Chi-square of observed counts against expected probabilities (cells with p = 0 must be empty).
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  int64_t n = 0;
  for (auto c : counts) n += c;
  double chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double e = p[i] * double(n);
    chi2 += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
  }
  return chi2;
}

// The token emitted at depth `depth` of the output (0: the first), given the previous
// emitted tokens followed the given path, must follow the target of that path's row.
struct Emission {
  std::vector<int32_t> tokens;  // accepted drafts' tokens then next_token
};

Emission emit(const DraftProposal& d, const VerifyOutcome& v) {
  Emission e;
  for (int32_t n : v.accepted) e.tokens.push_back(d.tokens[size_t(n)]);
  e.tokens.push_back(v.next_token);
  return e;
}

TEST(RejectionSamplerTest, ChainEmitsTheTargetDistribution) {
  std::mt19937_64 rng(1);
  const DraftProposal draft{{3, 5, 1}, {}};
  std::vector<std::vector<double>> p;
  for (int i = 0; i < 4; ++i) p.push_back(random_distribution(rng, i == 1));
  p[0][3] = 0.6;  // make the first draft likely, so deeper rows are reached often
  double s = 0;
  for (double x : p[0]) s += x;
  for (double& x : p[0]) x /= s;
  const int64_t n = 200000;
  std::vector<int64_t> first(kVocab, 0), second(kVocab, 0);
  int64_t accepted_first = 0;
  for (int64_t i = 0; i < n; ++i) {
    const VerifyOutcome v = verify_point_mass(draft, [&](int32_t row) -> std::span<const double> { return p[size_t(row)]; }, rng);
    const Emission e = emit(draft, v);
    ++first[size_t(e.tokens[0])];
    if (e.tokens[0] == 3) {  // the second token follows row 1's target
      ++accepted_first;
      ++second[size_t(e.tokens[1])];
    }
  }
  EXPECT_LT(chi_square(first, p[0]), kChi2Critical7);
  ASSERT_GT(accepted_first, 10000);
  EXPECT_LT(chi_square(second, p[1]), kChi2Critical7);
}

TEST(RejectionSamplerTest, TreeEmitsTheTargetDistribution) {
  std::mt19937_64 rng(2);
  // Root children: 2, 4, 6 (drafts 0, 1, 2); under draft 1 (token 4): 7, 0 (drafts 3, 4).
  const DraftProposal draft{{2, 4, 6, 7, 0}, {-1, -1, -1, 1, 1}};
  std::vector<std::vector<double>> p;
  for (int i = 0; i < 6; ++i) p.push_back(random_distribution(rng, i == 2));
  const int64_t n = 200000;
  std::vector<int64_t> first(kVocab, 0), after4(kVocab, 0);
  for (int64_t i = 0; i < n; ++i) {
    const VerifyOutcome v = verify_point_mass(draft, [&](int32_t row) -> std::span<const double> { return p[size_t(row)]; }, rng);
    const Emission e = emit(draft, v);
    ++first[size_t(e.tokens[0])];
    if (e.tokens[0] == 4) ++after4[size_t(e.tokens[1])];  // drawn at row 2 (draft 1's)
  }
  EXPECT_LT(chi_square(first, p[0]), kChi2Critical7);
  EXPECT_LT(chi_square(after4, p[2]), kChi2Critical7);
}

TEST(RejectionSamplerTest, DraftWithItsOwnDistributionEmitsTheTarget) {
  std::mt19937_64 rng(3);
  std::vector<std::vector<double>> p, q;
  for (int i = 0; i < 3; ++i) p.push_back(random_distribution(rng, false));
  for (int i = 0; i < 2; ++i) q.push_back(random_distribution(rng, false));
  const int64_t n = 200000;
  std::vector<int64_t> first(kVocab, 0);
  for (int64_t i = 0; i < n; ++i) {
    // The draft samples its tokens from q, as a draft model would.
    std::vector<int32_t> tokens = {draw_from(q[0], 1.0, rng), draw_from(q[1], 1.0, rng)};
    const VerifyOutcome v = verify_chain_with_draft_probs(
        tokens, [&](int32_t k) -> std::span<const double> { return q[size_t(k)]; },
        [&](int32_t row) -> std::span<const double> { return p[size_t(row)]; }, rng);
    const int32_t t = v.accepted.empty() ? v.next_token : tokens[0];
    ++first[size_t(t)];
  }
  EXPECT_LT(chi_square(first, p[0]), kChi2Critical7);
}

TEST(RejectionSamplerTest, GreedyAcceptsExactlyTheArgmaxPath) {
  const DraftProposal draft{{2, 4, 6, 7, 0}, {-1, -1, -1, 1, 1}};
  // argmax per row: root -> 4 (draft 1), row 2 -> 0 (draft 4), row 5 -> 3 (not drafted).
  const std::vector<int32_t> argmax = {4, 1, 0, 1, 1, 3};
  const VerifyOutcome v = verify_greedy(draft, [&](int32_t row) { return argmax[size_t(row)]; });
  EXPECT_EQ(v.accepted, (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(v.next_token, 3);
  EXPECT_EQ(v.next_row, 5);
}

TEST(RejectionSamplerTest, PointMassTargetAlwaysAcceptsAMatchingDraft) {
  std::mt19937_64 rng(4);
  std::vector<std::vector<double>> p(3, std::vector<double>(kVocab, 0.0));
  p[0][5] = 1;
  p[1][6] = 1;
  p[2][2] = 1;
  const DraftProposal draft{{5, 6}, {}};
  for (int i = 0; i < 1000; ++i) {
    const VerifyOutcome v = verify_point_mass(draft, [&](int32_t row) -> std::span<const double> { return p[size_t(row)]; }, rng);
    ASSERT_EQ(v.accepted, (std::vector<int32_t>{0, 1}));
    ASSERT_EQ(v.next_token, 2);
  }
}

}  // namespace
}  // namespace xy::sched
