// The paged KV block pool: reference counts and the free list, nothing else. It knows neither
// requests nor token ids; the KV cache manager decides what a block holds.
//
// Every block is either referenced (ref_count > 0) or on the free list. The free list is one
// intrusive doubly linked list in eviction order:
//   front: blocks that hold nothing worth keeping (never cached, or dropped from the cache);
//   then:  cached blocks that no request references, least recently released first.
// So pop_front() takes an empty block while there is one, and evicts the least recently used
// cached block only under pressure (vLLM v1's free block queue, with the empty blocks first).
// Every operation is O(1) and allocates nothing.
//
// Threading: engine thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace xy::cache {

class BlockPool {
 public:
  // Precondition: num_blocks >= 1. All blocks start free and empty.
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return int32_t(ref_count_.size()); }
  // Blocks on the free list: empty ones plus unreferenced cached ones. O(1).
  int32_t num_free() const { return num_free_; }
  int32_t ref_count(int32_t block) const { return ref_count_[size_t(block)]; }
  bool is_free(int32_t block) const { return ref_count_[size_t(block)] == 0; }

  // Takes the first block of the free list (the caller evicts its cache entry, if any) and
  // gives it one reference. Precondition: num_free() > 0. O(1).
  int32_t pop_front();

  // Adds a reference; a free block leaves the free list (a cache hit on an unreferenced block).
  // O(1).
  void add_ref(int32_t block);

  // Drops a reference. At zero the block goes back on the free list: at the back (most recently
  // used) when `keep_cached`, so it is evicted last, else at the front, so it is reused first.
  // Precondition: ref_count(block) > 0. O(1).
  void drop_ref(int32_t block, bool keep_cached);

  // A free block whose cache entry was dropped moves to the front, so it is reused before any
  // cached block is evicted. Precondition: is_free(block). O(1).
  void move_to_front(int32_t block);

  // The free list from front to back (for tests and invariant checks). O(num_free).
  std::vector<int32_t> free_list() const;

 private:
  void unlink(int32_t block);
  void link_after(int32_t prev, int32_t block);

  std::vector<int32_t> ref_count_;
  // Links of the free list; index num_blocks() is the sentinel. Valid only for free blocks.
  std::vector<int32_t> prev_;
  std::vector<int32_t> next_;
  int32_t num_free_ = 0;
};

}  // namespace xy::cache
