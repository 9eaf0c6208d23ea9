#include "xyserve/sched/rejection_sampler.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::sched {
namespace {

// children[node + 1]: the draft indices whose parent is node (-1: the root), in order.
std::vector<std::vector<int32_t>> children_of(const DraftProposal& draft) {
  std::vector<std::vector<int32_t>> children(draft.tokens.size() + 1);
  for (int32_t i = 0; i < int32_t(draft.tokens.size()); ++i) {
    const int32_t parent = draft.parent(i);
    XY_CHECK(parent >= -1 && parent < i, "draft ", i, " has parent ", parent);
    children[size_t(parent + 1)].push_back(i);
  }
  return children;
}

int32_t argmax_of(std::span<const double> p) {
  return int32_t(std::max_element(p.begin(), p.end()) - p.begin());
}

}  // namespace

int32_t draw_from(std::span<const double> weights, double total, std::mt19937_64& rng) {
  XY_CHECK(total > 0, "draw from an empty distribution");
  const double target = uniform01(rng) * total;
  double acc = 0;
  int32_t last_positive = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0) continue;
    acc += weights[i];
    last_positive = int32_t(i);
    if (target < acc) return int32_t(i);
  }
  // Rounding left target at or past the sum: the last token with mass.
  return last_positive;
}

VerifyOutcome verify_greedy(const DraftProposal& draft,
                            const std::function<int32_t(int32_t row)>& target_argmax) {
  const auto children = children_of(draft);
  VerifyOutcome out;
  int32_t node = -1;
  while (true) {
    const int32_t row = node + 1;
    const int32_t best = target_argmax(row);
    int32_t next = -1;
    for (const int32_t c : children[size_t(node + 1)])
      if (draft.tokens[size_t(c)] == best) next = c;
    if (next < 0) {
      out.next_token = best;
      out.next_row = row;
      return out;
    }
    out.accepted.push_back(next);
    node = next;
  }
}

VerifyOutcome verify_point_mass(const DraftProposal& draft,
                                const std::function<std::span<const double>(int32_t row)>& target,
                                std::mt19937_64& rng) {
  const auto children = children_of(draft);
  VerifyOutcome out;
  std::vector<double> residual;
  int32_t node = -1;
  while (true) {
    const int32_t row = node + 1;
    const std::span<const double> p = target(row);
    residual.assign(p.begin(), p.end());
    double total = 1.0;
    int32_t next = -1;
    for (const int32_t c : children[size_t(node + 1)]) {
      const int32_t x = draft.tokens[size_t(c)];
      XY_CHECK(x >= 0 && size_t(x) < residual.size(), "draft token ", x, " outside the vocab");
      // Accept with probability p'(x) = residual[x] / total.
      if (uniform01(rng) * total < residual[size_t(x)]) {
        next = c;
        break;
      }
      total -= residual[size_t(x)];
      residual[size_t(x)] = 0;
    }
    if (next >= 0) {
      out.accepted.push_back(next);
      node = next;
      continue;
    }
    out.next_row = row;
    // Rounding can leave no mass only if the rejected children held all of it, which has
    // probability zero; fall back to the target's mode rather than fail.
    double sum = 0;
    for (const double w : residual) sum += w;
    out.next_token = sum > 0 ? draw_from(residual, sum, rng) : argmax_of(p);
    return out;
  }
}

VerifyOutcome verify_chain_with_draft_probs(
    std::span<const int32_t> draft_tokens,
    const std::function<std::span<const double>(int32_t i)>& draft,
    const std::function<std::span<const double>(int32_t row)>& target, std::mt19937_64& rng) {
  VerifyOutcome out;
  std::vector<double> residual;
  for (int32_t i = 0; i < int32_t(draft_tokens.size()); ++i) {
    const std::span<const double> p = target(i);
    const std::span<const double> q = draft(i);
    XY_CHECK(p.size() == q.size(), "draft and target vocab sizes differ: ", q.size(), " vs ", p.size());
    const size_t x = size_t(draft_tokens[size_t(i)]);
    // Accept with probability min(1, p(x) / q(x)); q(x) > 0 since the draft proposed x.
    if (uniform01(rng) * q[x] < p[x]) {
      out.accepted.push_back(i);
      continue;
    }
    residual.resize(p.size());
    double sum = 0;
    for (size_t t = 0; t < p.size(); ++t) sum += residual[t] = std::max(0.0, p[t] - q[t]);
    out.next_row = i;
    out.next_token = sum > 0 ? draw_from(residual, sum, rng) : argmax_of(p);
    return out;
  }
  const int32_t row = int32_t(draft_tokens.size());
  const std::span<const double> p = target(row);
  out.next_row = row;
  double sum = 0;
  for (const double w : p) sum += w;
  out.next_token = draw_from(p, sum, rng);
  return out;
}

}  // namespace xy::sched
