// The KV cache manager: per-request block tables over the paged block pool, with automatic
// prefix caching down to the token (XY-Serve, arXiv 2412.18106; vLLM v1's KVCacheManager).
//
// The scheduler sees each request as num_computed_tokens and num_tokens; this class keeps, per
// request, the blocks that back positions [0, capacity) and how many of them are computed:
//   find_prefix / admit    a new (or re-admitted, after preemption) request takes the longest
//                          cached prefix of its tokens and skips computing it;
//   allocate_slots         grows the block table before a step writes more positions;
//   mark_computed          after the step: the newly computed blocks (full ones and the partial
//                          tail) are published in the prefix cache;
//   truncate               rolls back rejected draft tokens;
//   free                   drops the request; its cached blocks stay until evicted (LRU).
//
// Sharing and writing. A block can be read by many requests but appended to by at most one,
// its writer. A request reads the first v slots of each block in its table (v = block_size for
// blocks wholly below num_computed_tokens), and only the writer writes, and only slots >= the
// block's computed count, which no reader reads: a block's first k computed slots never change
// while anyone else may read them. A request that must write into a block it does not own (the
// tail of a token-level hit, or a shared block it rolled back into) gets a fresh block and a
// BlockCopy of its v valid slots (copy-on-write). The copies are handed to the backend by
// take_pending_copies(); their source blocks stay pinned until then.
//
// A hit never covers a whole prompt: the last prompt token is always computed, since its
// logits are needed (so at most len - 1 tokens are cached), as vLLM does.
//
// Threading: every method runs on the engine thread only; nothing here locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "xyserve/cache/block_pool.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/cache/prefix_index.h"

namespace xy::cache {

// Copy slots [0, num_tokens) of src_block into dst_block, in every layer's K and V cache.
// The backend performs the copies of one take_pending_copies() call, in any order, before the
// step that writes into dst runs. Within one call every dst is distinct and no dst is a src.
struct BlockCopy {
  int32_t src_block = 0;
  int32_t dst_block = 0;
  int32_t num_tokens = 0;
  bool operator==(const BlockCopy&) const = default;
};

struct KvCacheConfig {
  int32_t num_blocks = 0;  // num_blocks_for_budget() computes it from a memory budget
  int32_t block_size = kDefaultBlockSize;
  // Off: nothing is ever matched or published; blocks are private to their request.
  bool enable_prefix_caching = true;
  // The chained block hash; tests swap in a weak one to show collisions only cost misses.
  BlockHasher block_hasher = &hash_block;
};

// The result of find_prefix(): what admit() would reuse. Valid only until the next call that
// changes the manager (admit checks this).
struct PrefixHit {
  int32_t num_cached_tokens = 0;
  std::vector<int32_t> blocks;      // whole-block hits, then the partial-hit block if any
  std::vector<ChainLink> links;     // one per whole-block hit
  int32_t num_partial_tokens = 0;   // tokens reused from blocks.back() when > 0
  int32_t num_free_hits = 0;        // hit blocks on the free list now (admission takes them)
  uint64_t epoch = 0;
};

// Counts in tokens, as vLLM's prefix cache stats: a query is an admitted prompt's length, a hit
// is the part of it that was cached.
struct KvCacheCounters {
  int64_t num_query_tokens = 0;
  int64_t num_hit_tokens = 0;
  int64_t num_evicted_blocks = 0;  // cached blocks reused for other content
  int64_t num_copies = 0;          // copy-on-write BlockCopy records emitted
  int64_t num_copied_tokens = 0;
};

class KvCacheManager {
 public:
  // Precondition: num_blocks >= 1, block_size >= 1. Cost: O(num_blocks).
  explicit KvCacheManager(const KvCacheConfig& config);

  // The longest cached prefix of token_ids[0, len - 1), down to the token. No side effects.
  // Cost: O(len) hashing plus one map lookup per block, and the partial match of one block
  // (PrefixIndex::find_partial).
  PrefixHit find_prefix(std::span<const int32_t> token_ids) const;

  // How many blocks admit(hit, num_tokens_total) would take from the free list. O(1).
  int32_t num_blocks_to_admit(const PrefixHit& hit, int32_t num_tokens_total) const;

  // Admits a new request with the blocks of `hit` (num_computed_tokens = hit.num_cached_tokens)
  // and slots up to num_tokens_total (>= the hit), as allocate_slots. Returns false, with no
  // side effect, when the pool cannot supply the blocks even after evicting every unreferenced
  // cached block. Preconditions: request_id not live; `hit` from find_prefix(token_ids) with no
  // change to the manager since. Counts the query and hit tokens on success. Cost: O(blocks).
  bool admit(int64_t request_id, std::span<const int32_t> token_ids, const PrefixHit& hit,
             int32_t num_tokens_total);

  // find_prefix + admit with no slots past the hit. Returns the number of cached tokens, or -1
  // (no side effect) if the hit blocks cannot be taken.
  int32_t match_and_admit(int64_t request_id, std::span<const int32_t> token_ids);

  // Makes positions [0, num_tokens_total) backed by blocks, and every block that positions
  // [num_computed_tokens, num_tokens_total) fall in writable by this request (copy-on-write of
  // a shared boundary block). Returns false with no side effect when the free list (empty plus
  // evictable blocks) is too short. Cost: O(new blocks), O(1) per evicted block.
  bool allocate_slots(int64_t request_id, int32_t num_tokens_total);

  // Records that positions [0, num_computed_tokens) hold KV of token_ids[0, num_computed_tokens)
  // and publishes the newly computed full blocks and the partial tail block. Preconditions:
  // num_computed_tokens between the current count and the allocated slots; token_ids agrees
  // with the tokens marked before. Cost: O(new tokens).
  void mark_computed(int64_t request_id, std::span<const int32_t> token_ids,
                     int32_t num_computed_tokens);

  // Keeps positions [0, num_tokens): releases the blocks past them, lowers num_computed_tokens
  // to at most num_tokens, and unpublishes the rolled-back tokens this request wrote (a block
  // that other requests read keeps its content; this request copies it before writing again).
  // Precondition: num_tokens <= allocated slots. Cost: O(released blocks + pending copies).
  void truncate(int64_t request_id, int32_t num_tokens);

  // Drops the request; its published blocks stay cached, the request's last blocks first in
  // line for eviction. Cost: O(blocks + pending copies).
  void free(int64_t request_id);

  // The copies that must run before the next step; unpins their sources. O(copies).
  std::vector<BlockCopy> take_pending_copies();

  // Drops every published block from the prefix cache (blocks in use stay with their
  // requests). O(num_blocks).
  void reset_prefix_cache();

  bool has_request(int64_t request_id) const { return requests_.count(request_id) != 0; }
  // Block ids backing positions [0, allocated slots): position p is in slot p % block_size of
  // block_table[p / block_size]. Valid until the next change to this request.
  std::span<const int32_t> block_table(int64_t request_id) const;
  int32_t num_computed_tokens(int64_t request_id) const;

  int32_t num_blocks() const { return pool_.num_blocks(); }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching_enabled() const { return caching_; }
  // Empty blocks plus unreferenced cached blocks: what allocation can take. O(1).
  int32_t num_free_blocks() const { return pool_.num_free(); }
  // Published blocks, referenced or not. O(1).
  int32_t num_cached_blocks() const { return index_.num_published(); }
  // Fraction of blocks referenced by requests (vLLM's kv_cache_usage). O(1).
  double usage() const { return 1.0 - double(pool_.num_free()) / double(pool_.num_blocks()); }
  const KvCacheCounters& counters() const { return counters_; }

  // Introspection for tests and debugging.
  int32_t block_ref_count(int32_t block) const { return pool_.ref_count(block); }
  bool is_cached(int32_t block) const { return index_.is_published(block); }
  std::vector<int32_t> free_list() const { return pool_.free_list(); }
  // Aborts (XY_CHECK) on any broken internal invariant. O(num_blocks + table entries).
  void check_invariants() const;

 private:
  static constexpr int64_t kNoWriter = -1;

  struct Request {
    int64_t id = 0;
    int32_t num_computed = 0;
    std::vector<int32_t> blocks;
    std::vector<ChainLink> chain;  // link of each computed full block (prefix caching only)
  };

  Request& get(int64_t request_id);
  const Request& get(int64_t request_id) const;
  int32_t blocks_for(int32_t num_tokens) const {
    return (num_tokens + block_size_ - 1) / block_size_;
  }
  // Whether the boundary block of `q` (index num_computed / block_size, partly computed) must
  // be copied before `q` writes into it; sets `adopt` when it can become q's without a copy.
  bool boundary_needs_copy(const Request& q, bool* adopt) const;
  int32_t take_free_block(int64_t writer);
  void copy_on_write(Request& q, int32_t index);
  void release(const Request& q, int32_t block);
  void drop_ref(int32_t block);
  void forget(int32_t block);
  void cancel_copies_into(int32_t block);
  void publish_computed(Request& q, std::span<const int32_t> token_ids);

  int32_t block_size_;
  bool caching_;
  BlockPool pool_;
  PrefixIndex index_;
  std::vector<int64_t> writer_;  // [num_blocks] the request that may append, or kNoWriter
  std::vector<int32_t> filled_;  // [num_blocks] slots whose KV is computed and fixed
  std::unordered_map<int64_t, Request> requests_;
  std::vector<BlockCopy> pending_copies_;
  KvCacheCounters counters_;
  uint64_t epoch_ = 1;  // bumped by every change, so a stale PrefixHit is caught
};

}  // namespace xy::cache
