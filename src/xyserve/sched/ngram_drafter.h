// Prompt-lookup drafting (n-gram speculation): find the context's last n tokens earlier in the
// context, for n from max_n down to min_n, and propose the tokens that followed them. Costs
// O(len x max_n) per proposal and no model.
//
// Chain mode: the continuation of the first match found (longest n, most recent occurrence).
// Tree mode: the continuations of several matches merged into a trie of at most max_tokens
// nodes (Lookahead-style token trees, XY-Serve's choice over chains); siblings are tried in
// insertion order (longer n and more recent matches first) by the verifier.
#pragma once

#include <cstdint>

#include "xyserve/sched/drafter.h"

namespace xy::sched {

struct NgramDrafterOptions {
  int32_t min_n = 1;
  int32_t max_n = 4;
  bool tree = false;
  int32_t max_matches = 8;  // tree mode: continuations merged into the trie
};

class NgramDrafter : public Drafter {
 public:
  // Precondition: 1 <= min_n <= max_n.
  explicit NgramDrafter(const NgramDrafterOptions& options);
  DraftProposal propose(std::span<const int32_t> context, int32_t max_tokens) override;

 private:
  NgramDrafterOptions options_;
};

}  // namespace xy::sched
