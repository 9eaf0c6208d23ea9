#include "xyserve/sched/ngram_drafter.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::sched {

NgramDrafter::NgramDrafter(const NgramDrafterOptions& options) : options_(options) {
  XY_CHECK(options.min_n >= 1 && options.min_n <= options.max_n, "ngram sizes ", options.min_n,
           "..", options.max_n);
}

namespace {

// A trie with one branch is a chain; the plain causal mask runs it with no tree mask.
DraftProposal as_chain_if_linear(DraftProposal p) {
  for (size_t i = 0; i < p.parents.size(); ++i)
    if (p.parents[i] != int32_t(i) - 1) return p;
  p.parents.clear();
  return p;
}

}  // namespace

DraftProposal NgramDrafter::propose(std::span<const int32_t> context, int32_t max_tokens) {
  DraftProposal out;
  const int32_t len = int32_t(context.size());
  if (max_tokens <= 0) return out;
  // Trie children of each node (index -1 = root), as (token, node) in insertion order.
  std::vector<std::vector<std::pair<int32_t, int32_t>>> children;
  std::vector<std::pair<int32_t, int32_t>> root_children;
  auto child_list = [&](int32_t node) -> std::vector<std::pair<int32_t, int32_t>>& {
    return node < 0 ? root_children : children[size_t(node)];
  };
  int32_t num_matches = 0;
  for (int32_t n = std::min(options_.max_n, len - 1); n >= options_.min_n; --n) {
    const std::span<const int32_t> suffix = context.subspan(size_t(len - n));
    // Occurrences that end before the suffix and have at least one following token, most
    // recent first.
    for (int32_t start = len - n - 1; start >= 0; --start) {
      if (!std::equal(suffix.begin(), suffix.end(), context.begin() + start)) continue;
      const int32_t follow = start + n;  // first continuation token (< len)
      const int32_t count = std::min(max_tokens, len - follow);
      if (!options_.tree) {
        out.tokens.assign(context.begin() + follow, context.begin() + follow + count);
        return out;
      }
      // Merge the continuation into the trie.
      int32_t node = -1;
      for (int32_t i = 0; i < count; ++i) {
        const int32_t token = context[size_t(follow + i)];
        auto& list = child_list(node);
        auto it = std::find_if(list.begin(), list.end(), [&](auto& c) { return c.first == token; });
        if (it != list.end()) {
          node = it->second;
          continue;
        }
        if (int32_t(out.tokens.size()) >= max_tokens) break;
        const int32_t created = int32_t(out.tokens.size());
        out.tokens.push_back(token);
        out.parents.push_back(node);
        children.emplace_back();
        child_list(node).emplace_back(token, created);
        node = created;
      }
      if (++num_matches >= options_.max_matches || int32_t(out.tokens.size()) >= max_tokens)
        return as_chain_if_linear(std::move(out));
    }
  }
  return as_chain_if_linear(std::move(out));
}

}  // namespace xy::sched
