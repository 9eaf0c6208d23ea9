// Speculative drafters propose tokens that the target model verifies in the next step, as extra
// rows of the request (DESIGN.md "Schedule": a verify is 1 + k rows). An interface so that a
// draft model can come later beside the n-gram drafter.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace xy::sched {

// Deterministic draft tokens (a point-mass draft distribution, which rejection sampling relies
// on; a drafter with its own probabilities would carry them here too).
struct DraftProposal {
  std::vector<int32_t> tokens;
  // Empty: a chain (tokens[i] follows tokens[i - 1]). Else a tree: parents[i] is the index of
  // token i's parent, -1 for a child of the context's last token; parents come before children,
  // and siblings carry distinct tokens.
  std::vector<int32_t> parents;

  bool empty() const { return tokens.empty(); }
  int32_t parent(int32_t i) const { return parents.empty() ? i - 1 : parents[size_t(i)]; }
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // Proposes at most max_tokens draft tokens to follow `context` (prompt + output so far).
  // Runs on the engine thread.
  virtual DraftProposal propose(std::span<const int32_t> context, int32_t max_tokens) = 0;
};

}  // namespace xy::sched
