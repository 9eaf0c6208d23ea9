// The prefix cache's index: which blocks hold the KV of which token prefix, down to the token.
//
// A published block holds the KV of `num_tokens` (1..block_size) tokens that follow a parent
// prefix. The parent is named by a ChainLink: the parent block's chained hash (block_hash.h)
// and its serial, a number given to every publication and never reused. Two maps find blocks:
//   full_:   chained hash of a full block -> block, for whole-block hits (one lookup per block);
//   groups_: (parent serial, first token) -> blocks, full and partial, for the token-level
//            match of the first block that is not a whole-block hit.
// A hit is exact, not probabilistic: it is taken only when the stored token ids equal the
// request's and the block's parent serial equals the serial of the block matched before it.
// Serials make this exact even though block ids are reused: a block that is evicted, or whose
// content is cut back (shrink), gets a new serial or none, so the blocks published as its
// children no longer match under it; they stay in the maps, unreachable, until evicted.
//
// The index stores no reference counts; it never decides what to evict (BlockPool, manager).
// Threading: engine thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "xyserve/cache/block_hash.h"

namespace xy::cache {

// Names a prefix that ends at a block boundary: the empty prefix is {kRootBlockHash, 0}.
struct ChainLink {
  uint64_t hash = kRootBlockHash;
  uint64_t serial = 0;
};

// The chained hash of a full block. Injectable so that tests can run with a deliberately weak
// hash and show that collisions cost misses, never wrong KV.
using BlockHasher = uint64_t (*)(uint64_t parent_hash, std::span<const int32_t> tokens);

class PrefixIndex {
 public:
  PrefixIndex(int32_t num_blocks, int32_t block_size, BlockHasher hasher = &hash_block);

  int32_t block_size() const { return block_size_; }
  bool is_published(int32_t block) const { return entries_[size_t(block)].serial != 0; }
  bool is_full(int32_t block) const { return entries_[size_t(block)].full; }
  // Tokens held by a published block (its first num_tokens slots).
  std::span<const int32_t> tokens(int32_t block) const;
  // The link that names the prefix ending with this full block. Precondition: is_full(block).
  ChainLink link(int32_t block) const;
  int32_t num_published() const { return num_published_; }

  // The published full block that holds `tokens` (block_size of them) after `parent`, or -1.
  // Cost: one hash of block_size tokens, one map lookup, one compare.
  int32_t find_full(const ChainLink& parent, std::span<const int32_t> tokens) const;

  struct PartialMatch {
    int32_t block = -1;
    int32_t num_tokens = 0;  // the longest common prefix of the block's tokens and the query
  };
  // The published block after `parent` (full or partial) sharing the longest prefix with
  // `tokens` (at most block_size - 1 are compared). Cost: O(siblings with the same first token
  // * block_size).
  PartialMatch find_partial(const ChainLink& parent, std::span<const int32_t> tokens) const;

  struct Published {
    // The link of the canonical full block for this prefix: the block itself, or the duplicate
    // already published (then `block` is left unpublished). Meaningful only for full blocks.
    ChainLink link;
    // A block dropped from the index because its slot in full_ was stale (its parent gone) or
    // a true hash collision; -1 if none. The caller moves it to the front of the free list.
    int32_t displaced = -1;
  };
  // Publishes `block` as holding `tokens` (1..block_size) after `parent`, or extends its
  // published content (same parent, same first tokens, at least as many). Cost: O(block_size).
  Published publish(int32_t block, const ChainLink& parent, std::span<const int32_t> tokens);

  // Cuts a published block back to its first `num_tokens` (>= 1) tokens, because the slots
  // past them will be rewritten (rolled-back draft tokens). It gets a new serial so the blocks
  // published under its old content no longer match. Cost: O(1) amortized.
  void shrink(int32_t block, int32_t num_tokens);

  // Drops a block from the index. Precondition: is_published(block). O(1) amortized.
  void unpublish(int32_t block);

  // Drops every block; returns the blocks that were published. O(num_blocks).
  std::vector<int32_t> clear();

 private:
  struct Entry {
    uint64_t serial = 0;  // 0: not published
    uint64_t parent_serial = 0;
    uint64_t hash = 0;  // full blocks: the chained hash, their key in full_
    uint64_t group = 0;  // key in groups_
    int32_t group_pos = 0;
    int32_t num_tokens = 0;
    bool full = false;
  };

  int32_t* token_row(int32_t block) { return &tokens_[size_t(block) * size_t(block_size_)]; }
  const int32_t* token_row(int32_t block) const {
    return &tokens_[size_t(block) * size_t(block_size_)];
  }
  static uint64_t group_key(uint64_t parent_serial, int32_t first_token);
  void remove_from_group(int32_t block);

  int32_t block_size_;
  BlockHasher hasher_;
  std::vector<Entry> entries_;
  std::vector<int32_t> tokens_;  // [num_blocks, block_size]
  std::unordered_map<uint64_t, int32_t> full_;
  std::unordered_map<uint64_t, std::vector<int32_t>> groups_;
  uint64_t next_serial_ = 1;
  int32_t num_published_ = 0;
};

}  // namespace xy::cache
