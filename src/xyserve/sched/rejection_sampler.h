// Verifying draft tokens against the target model, as pure functions over probability vectors.
//
// Rows of a verify: row 0 is the request's last real token, row 1 + i is draft token i (chain or
// tree, DraftProposal). The target's distribution at a row is the next-token distribution after
// the path that leads to it (penalties, temperature, top-k/p, min-p applied: what the plain
// sampler would draw from).
//
// Greedy: walk from the root, at each row take the target's argmax; if a child carries it,
// accept that child and go on; else emit the argmax and stop. The output is exactly what
// greedy decoding without drafts emits.
//
// Sampling with a deterministic draft (n-gram; q is a point mass on the draft token): at a row
// with target p and children x_1..x_m tried in order, accept x_j with probability
// p'(x_j), where p' is p with the mass of x_1..x_{j-1} removed and renormalised; if all are
// rejected, draw the next token from the final p'. Why exact: P(emit x_1) = p(x_1);
// P(emit x_2) = (1 - p(x_1)) * p(x_2) / (1 - p(x_1)) = p(x_2); and for any y that is not a
// child, P(emit y) = (1 - sum_j p(x_j)) * p(y) / (1 - sum_j p(x_j)) = p(y). So the token
// emitted at each row is distributed as p, and by induction along the path every emitted
// sequence has the target's probability. For one child (a chain) this is the standard
// min(1, p/q) test with q = 1 at the draft token, and max(0, p - q) normalised is p without
// that token. This is the multi-draft scheme of SpecInfer / "recursive rejection sampling"
// specialised to point-mass drafts.
//
// Sampling with a draft that has its own distribution q (a draft model, chain only): accept x_i
// with probability min(1, p(x_i) / q(x_i)); on rejection draw from max(0, p - q) normalised
// (Leviathan et al. 2023, Chen et al. 2023); all accepted: a bonus token from the last row.
//
// Uniform draws use only rng() bits (53 of them), so results are the same on any platform.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "xyserve/meta/sampling_plan.h"
#include "xyserve/sched/drafter.h"

namespace xy::sched {

struct VerifyOutcome {
  std::vector<int32_t> accepted;  // draft indices on the accepted path, root to leaf
  int32_t next_token = -1;        // the token drawn after the path (correction or bonus)
  int32_t next_row = 0;           // the row whose distribution gave next_token
};

using meta::uniform01;

// Draws from a (not necessarily normalised, non-negative) vector with `total` = its sum.
// Precondition: total > 0.
int32_t draw_from(std::span<const double> weights, double total, std::mt19937_64& rng);

// Greedy verification. target_argmax(row) is the target's argmax at that row.
VerifyOutcome verify_greedy(const DraftProposal& draft,
                            const std::function<int32_t(int32_t row)>& target_argmax);

// Rejection sampling for point-mass drafts (chain or tree). target(row) is the target's
// distribution at that row over the vocabulary (sums to 1). Only rows on the walked path are
// asked for.
VerifyOutcome verify_point_mass(const DraftProposal& draft,
                                const std::function<std::span<const double>(int32_t row)>& target,
                                std::mt19937_64& rng);

// Rejection sampling for a chain draft with draft distributions: draft(i) is q for draft token
// i, target(row) is p at row (row i verifies draft token i; row num_drafts gives the bonus).
VerifyOutcome verify_chain_with_draft_probs(
    std::span<const int32_t> draft_tokens,
    const std::function<std::span<const double>(int32_t i)>& draft,
    const std::function<std::span<const double>(int32_t row)>& target, std::mt19937_64& rng);

}  // namespace xy::sched
