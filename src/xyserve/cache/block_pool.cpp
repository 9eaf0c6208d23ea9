#include "xyserve/cache/block_pool.h"

#include "xyserve/common/check.h"

namespace xy::cache {

BlockPool::BlockPool(int32_t num_blocks)
    : ref_count_(size_t(num_blocks), 0),
      prev_(size_t(num_blocks) + 1),
      next_(size_t(num_blocks) + 1) {
  XY_CHECK(num_blocks >= 1, "num_blocks ", num_blocks);
  const int32_t sentinel = num_blocks;
  prev_[size_t(sentinel)] = next_[size_t(sentinel)] = sentinel;
  // Block 0 first: a fresh engine hands out ids in order, which keeps plans easy to read.
  for (int32_t b = 0; b < num_blocks; ++b) link_after(prev_[size_t(sentinel)], b);
  num_free_ = num_blocks;
}

void BlockPool::unlink(int32_t block) {
  const size_t b = size_t(block);
  next_[size_t(prev_[b])] = next_[b];
  prev_[size_t(next_[b])] = prev_[b];
  --num_free_;
}

void BlockPool::link_after(int32_t prev, int32_t block) {
  const size_t b = size_t(block);
  const int32_t next = next_[size_t(prev)];
  prev_[b] = prev;
  next_[b] = next;
  next_[size_t(prev)] = block;
  prev_[size_t(next)] = block;
  ++num_free_;
}

int32_t BlockPool::pop_front() {
  XY_CHECK(num_free_ > 0, "pop_front on an exhausted pool");
  const int32_t block = next_[size_t(num_blocks())];
  unlink(block);
  ref_count_[size_t(block)] = 1;
  return block;
}

void BlockPool::add_ref(int32_t block) {
  XY_CHECK(block >= 0 && block < num_blocks(), "block ", block);
  if (ref_count_[size_t(block)]++ == 0) unlink(block);
}

void BlockPool::drop_ref(int32_t block, bool keep_cached) {
  XY_CHECK(block >= 0 && block < num_blocks(), "block ", block);
  XY_CHECK(ref_count_[size_t(block)] > 0, "drop_ref on free block ", block);
  if (--ref_count_[size_t(block)] > 0) return;
  const int32_t sentinel = num_blocks();
  link_after(keep_cached ? prev_[size_t(sentinel)] : sentinel, block);
}

void BlockPool::move_to_front(int32_t block) {
  XY_CHECK(is_free(block), "move_to_front of referenced block ", block);
  unlink(block);
  link_after(num_blocks(), block);
}

std::vector<int32_t> BlockPool::free_list() const {
  std::vector<int32_t> out;
  out.reserve(size_t(num_free_));
  for (int32_t b = next_[size_t(num_blocks())]; b != num_blocks(); b = next_[size_t(b)])
    out.push_back(b);
  return out;
}

}  // namespace xy::cache
