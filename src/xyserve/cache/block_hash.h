// The chained hash that names a full KV block in the prefix cache: the hash of a block is a
// function of its parent's hash and its own token ids, so equal hashes mean (barring a
// collision) equal token prefixes from position 0. Used as the key of the prefix index.
//
// Collisions cannot make two requests share wrong KV: a hit is only taken after the index
// compares the block's stored token ids and the exact identity (serial) of its parent entry
// (prefix_index.h). A collision therefore costs at most a cache miss, so the hash needs to be
// well mixed, not cryptographic.
#pragma once

#include <cstdint>
#include <span>

namespace xy::cache {

// The parent hash of the first block of every sequence.
inline constexpr uint64_t kRootBlockHash = 0x6a09e667f3bcc908ull;

// splitmix64's finalizer: a bijection on 64 bits with full avalanche, so chaining it keeps
// every input bit relevant to every output bit.
constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// Cost: O(tokens.size()).
constexpr uint64_t hash_block(uint64_t parent_hash, std::span<const int32_t> tokens) {
  // The length goes in first so that a block is never confused with a shorter one whose tail
  // hashes the same.
  uint64_t h = mix64(parent_hash ^ (0x9e3779b97f4a7c15ull * (uint64_t(tokens.size()) + 1)));
  for (const int32_t t : tokens) h = mix64(h ^ (uint64_t(uint32_t(t)) + 0x9e3779b97f4a7c15ull));
  return h;
}

}  // namespace xy::cache
