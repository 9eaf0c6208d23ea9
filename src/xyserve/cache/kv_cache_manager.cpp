#include "xyserve/cache/kv_cache_manager.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::cache {

KvCacheManager::KvCacheManager(const KvCacheConfig& config)
    : block_size_(config.block_size),
      caching_(config.enable_prefix_caching),
      pool_(config.num_blocks),
      index_(config.num_blocks, config.block_size, config.block_hasher),
      writer_(size_t(config.num_blocks), kNoWriter),
      filled_(size_t(config.num_blocks), 0) {}

KvCacheManager::Request& KvCacheManager::get(int64_t request_id) {
  auto it = requests_.find(request_id);
  XY_CHECK(it != requests_.end(), "unknown request ", request_id);
  return it->second;
}

const KvCacheManager::Request& KvCacheManager::get(int64_t request_id) const {
  auto it = requests_.find(request_id);
  XY_CHECK(it != requests_.end(), "unknown request ", request_id);
  return it->second;
}

std::span<const int32_t> KvCacheManager::block_table(int64_t request_id) const {
  return get(request_id).blocks;
}

int32_t KvCacheManager::num_computed_tokens(int64_t request_id) const {
  return get(request_id).num_computed;
}

// ---- matching and admission ----

PrefixHit KvCacheManager::find_prefix(std::span<const int32_t> token_ids) const {
  PrefixHit hit;
  hit.epoch = epoch_;
  if (!caching_ || token_ids.size() < 2) return hit;
  // The last token is never a hit: its logits must be computed.
  const size_t limit = token_ids.size() - 1;
  const size_t bs = size_t(block_size_);
  ChainLink parent;
  while ((hit.blocks.size() + 1) * bs <= limit) {
    const int32_t b = index_.find_full(parent, token_ids.subspan(hit.blocks.size() * bs, bs));
    if (b < 0) break;
    parent = index_.link(b);
    hit.blocks.push_back(b);
    hit.links.push_back(parent);
  }
  const size_t done = hit.blocks.size() * bs;
  const auto partial = index_.find_partial(parent, token_ids.subspan(done, limit - done));
  if (partial.block >= 0) {
    hit.blocks.push_back(partial.block);
    hit.num_partial_tokens = partial.num_tokens;
  }
  hit.num_cached_tokens = int32_t(done) + hit.num_partial_tokens;
  for (const int32_t b : hit.blocks) hit.num_free_hits += pool_.is_free(b) ? 1 : 0;
  return hit;
}

int32_t KvCacheManager::num_blocks_to_admit(const PrefixHit& hit, int32_t num_tokens_total) const {
  XY_CHECK(num_tokens_total >= hit.num_cached_tokens, "num_tokens_total ", num_tokens_total,
           " below the hit of ", hit.num_cached_tokens);
  int32_t n = hit.num_free_hits +
              std::max(0, blocks_for(num_tokens_total) - int32_t(hit.blocks.size()));
  if (hit.num_partial_tokens > 0 && num_tokens_total > hit.num_cached_tokens) {
    // The request will write into the partial block: it needs a copy unless it can adopt it.
    const int32_t b = hit.blocks.back();
    const bool adoptable = writer_[size_t(b)] == kNoWriter && filled_[size_t(b)] == hit.num_partial_tokens;
    if (!adoptable) ++n;
  }
  return n;
}

bool KvCacheManager::admit(int64_t request_id, std::span<const int32_t> token_ids,
                           const PrefixHit& hit, int32_t num_tokens_total) {
  XY_CHECK(!has_request(request_id), "request ", request_id, " admitted twice");
  XY_CHECK(hit.epoch == epoch_, "stale PrefixHit for request ", request_id,
           ": the manager changed since find_prefix");
  XY_CHECK(hit.num_cached_tokens < int32_t(token_ids.size()) || token_ids.empty(),
           "hit covers the whole prompt of request ", request_id);
  if (num_blocks_to_admit(hit, num_tokens_total) > pool_.num_free()) return false;
  ++epoch_;
  Request& q = requests_[request_id];
  q.id = request_id;
  q.num_computed = hit.num_cached_tokens;
  q.blocks = hit.blocks;
  q.chain = hit.links;
  for (const int32_t b : hit.blocks) pool_.add_ref(b);
  counters_.num_query_tokens += int64_t(token_ids.size());
  counters_.num_hit_tokens += hit.num_cached_tokens;
  const bool ok = allocate_slots(request_id, num_tokens_total);
  XY_CHECK(ok, "admission of request ", request_id, " counted its blocks wrong");
  return true;
}

int32_t KvCacheManager::match_and_admit(int64_t request_id, std::span<const int32_t> token_ids) {
  const PrefixHit hit = find_prefix(token_ids);
  if (!admit(request_id, token_ids, hit, hit.num_cached_tokens)) return -1;
  return hit.num_cached_tokens;
}

// ---- growing ----

bool KvCacheManager::boundary_needs_copy(const Request& q, bool* adopt) const {
  *adopt = false;
  const int32_t index = q.num_computed / block_size_;
  const int32_t valid = q.num_computed % block_size_;
  if (valid == 0 || index >= int32_t(q.blocks.size())) return false;
  const int32_t b = q.blocks[size_t(index)];
  if (writer_[size_t(b)] == q.id) return false;
  // Nobody appends to it and its computed slots are exactly ours: appending after them
  // changes nothing any reader sees.
  if (writer_[size_t(b)] == kNoWriter && filled_[size_t(b)] == valid) {
    *adopt = true;
    return false;
  }
  return true;
}

bool KvCacheManager::allocate_slots(int64_t request_id, int32_t num_tokens_total) {
  Request& q = get(request_id);
  XY_CHECK(num_tokens_total >= q.num_computed, "request ", request_id, ": allocate_slots(",
           num_tokens_total, ") below its ", q.num_computed, " computed tokens");
  const int32_t num_new = std::max(0, blocks_for(num_tokens_total) - int32_t(q.blocks.size()));
  bool adopt = false;
  const bool copy = num_tokens_total > q.num_computed && boundary_needs_copy(q, &adopt);
  if (num_new + (copy ? 1 : 0) > pool_.num_free()) return false;
  ++epoch_;
  const int32_t boundary = q.num_computed / block_size_;
  if (copy) copy_on_write(q, boundary);
  if (adopt && num_tokens_total > q.num_computed) writer_[size_t(q.blocks[size_t(boundary)])] = q.id;
  for (int32_t i = 0; i < num_new; ++i) q.blocks.push_back(take_free_block(q.id));
  return true;
}

int32_t KvCacheManager::take_free_block(int64_t writer) {
  const int32_t b = pool_.pop_front();
  if (index_.is_published(b)) {
    index_.unpublish(b);
    ++counters_.num_evicted_blocks;
  }
  writer_[size_t(b)] = writer;
  filled_[size_t(b)] = 0;
  return b;
}

void KvCacheManager::copy_on_write(Request& q, int32_t index) {
  const int32_t src = q.blocks[size_t(index)];
  const int32_t valid = q.num_computed - index * block_size_;
  const int32_t dst = take_free_block(q.id);
  filled_[size_t(dst)] = valid;  // true once the copy has run, before any step reads it
  pool_.add_ref(src);            // pinned until take_pending_copies()
  release(q, src);
  q.blocks[size_t(index)] = dst;
  pending_copies_.push_back({src, dst, valid});
  ++counters_.num_copies;
  counters_.num_copied_tokens += valid;
}

std::vector<BlockCopy> KvCacheManager::take_pending_copies() {
  if (pending_copies_.empty()) return {};
  ++epoch_;
  std::vector<BlockCopy> out;
  out.swap(pending_copies_);
  for (const BlockCopy& c : out) drop_ref(c.src_block);
  return out;
}

void KvCacheManager::cancel_copies_into(int32_t block) {
  for (size_t i = 0; i < pending_copies_.size();) {
    if (pending_copies_[i].dst_block == block) {
      drop_ref(pending_copies_[i].src_block);
      pending_copies_.erase(pending_copies_.begin() + std::ptrdiff_t(i));
    } else {
      ++i;
    }
  }
}

// ---- releasing ----

void KvCacheManager::release(const Request& q, int32_t block) {
  if (writer_[size_t(block)] == q.id) writer_[size_t(block)] = kNoWriter;
  drop_ref(block);
}

void KvCacheManager::drop_ref(int32_t block) {
  const bool cached = index_.is_published(block);
  pool_.drop_ref(block, cached);
  if (pool_.is_free(block)) {
    XY_CHECK(writer_[size_t(block)] == kNoWriter, "free block ", block, " still has a writer");
    if (!cached) filled_[size_t(block)] = 0;
  }
}

void KvCacheManager::forget(int32_t block) {
  if (index_.is_published(block)) index_.unpublish(block);
  if (pool_.is_free(block)) {
    pool_.move_to_front(block);
    filled_[size_t(block)] = 0;
  }
}

void KvCacheManager::free(int64_t request_id) {
  Request& q = get(request_id);
  ++epoch_;
  // Last block first: the back of the LRU order gets the prefix's first blocks last, so a
  // request's tail is evicted before its head (which more requests share).
  for (auto it = q.blocks.rbegin(); it != q.blocks.rend(); ++it) {
    cancel_copies_into(*it);
    release(q, *it);
  }
  requests_.erase(request_id);
}

void KvCacheManager::truncate(int64_t request_id, int32_t num_tokens) {
  Request& q = get(request_id);
  const int32_t capacity = int32_t(q.blocks.size()) * block_size_;
  XY_CHECK(num_tokens >= 0 && num_tokens <= capacity, "request ", request_id, ": truncate(",
           num_tokens, ") outside its ", capacity, " slots");
  ++epoch_;
  const int32_t keep = blocks_for(num_tokens);
  while (int32_t(q.blocks.size()) > keep) {
    const int32_t b = q.blocks.back();
    q.blocks.pop_back();
    cancel_copies_into(b);
    // Rolled-back tokens that only this request wrote leave the cache with the block.
    if (writer_[size_t(b)] == q.id && pool_.ref_count(b) == 1 && index_.is_published(b))
      index_.unpublish(b);
    release(q, b);
  }
  q.num_computed = std::min(q.num_computed, num_tokens);
  q.chain.resize(std::min(q.chain.size(), size_t(q.num_computed / block_size_)));
  const int32_t valid = q.num_computed % block_size_;
  if (valid == 0) return;
  const int32_t b = q.blocks[size_t(q.num_computed / block_size_)];
  if (filled_[size_t(b)] <= valid) return;
  if (writer_[size_t(b)] == q.id && pool_.ref_count(b) == 1) {
    // Only we hold it: cut it back to what stays computed, in the index too.
    filled_[size_t(b)] = valid;
    if (index_.is_published(b)) index_.shrink(b, valid);
  } else if (writer_[size_t(b)] == q.id) {
    // Others read the slots we rolled back; they keep them, and we copy before writing.
    writer_[size_t(b)] = kNoWriter;
  }
}

void KvCacheManager::reset_prefix_cache() {
  ++epoch_;
  for (const int32_t b : index_.clear()) {
    if (pool_.is_free(b)) {
      pool_.move_to_front(b);
      filled_[size_t(b)] = 0;
    }
  }
  // Links of live requests now name nothing; what they publish later is unreachable until
  // evicted, which is harmless.
}

// ---- computing ----

void KvCacheManager::mark_computed(int64_t request_id, std::span<const int32_t> token_ids,
                                   int32_t num_computed_tokens) {
  Request& q = get(request_id);
  const int32_t capacity = int32_t(q.blocks.size()) * block_size_;
  XY_CHECK(num_computed_tokens >= q.num_computed && num_computed_tokens <= capacity,
           "request ", request_id, ": mark_computed(", num_computed_tokens, ") outside [",
           q.num_computed, ", ", capacity, "]");
  XY_CHECK(int32_t(token_ids.size()) >= num_computed_tokens, "request ", request_id, ": ",
           token_ids.size(), " token ids for ", num_computed_tokens, " computed tokens");
  if (num_computed_tokens == q.num_computed) return;
  ++epoch_;
  const int32_t first = q.num_computed / block_size_;
  const int32_t last = (num_computed_tokens - 1) / block_size_;
  for (int32_t j = first; j <= last; ++j) {
    const int32_t b = q.blocks[size_t(j)];
    XY_CHECK(writer_[size_t(b)] == q.id, "request ", request_id, " computed into block ", b,
             " (index ", j, ") that it may not write: allocate_slots first");
    filled_[size_t(b)] = std::min(block_size_, num_computed_tokens - j * block_size_);
  }
  q.num_computed = num_computed_tokens;
  if (caching_) publish_computed(q, token_ids);
}

void KvCacheManager::publish_computed(Request& q, std::span<const int32_t> token_ids) {
  const size_t bs = size_t(block_size_);
  const size_t num_full = size_t(q.num_computed / block_size_);
  while (q.chain.size() < num_full) {
    const size_t j = q.chain.size();
    const int32_t b = q.blocks[j];
    XY_CHECK(writer_[size_t(b)] == q.id, "request ", q.id, ": unchained block ", b,
             " is not its own");
    const ChainLink parent = j == 0 ? ChainLink{} : q.chain[j - 1];
    const auto published = index_.publish(b, parent, token_ids.subspan(j * bs, bs));
    if (published.displaced >= 0) forget(published.displaced);
    q.chain.push_back(published.link);
  }
  const int32_t tail = q.num_computed % block_size_;
  if (tail == 0) return;
  const int32_t b = q.blocks[num_full];
  if (writer_[size_t(b)] != q.id) return;  // a hit block: published already
  const ChainLink parent = num_full == 0 ? ChainLink{} : q.chain[num_full - 1];
  index_.publish(b, parent, token_ids.subspan(num_full * bs, size_t(tail)));
}

// ---- checking ----

void KvCacheManager::check_invariants() const {
  const int32_t n = num_blocks();
  std::vector<int32_t> refs(size_t(n), 0);
  std::vector<int32_t> writers(size_t(n), 0);
  for (const auto& [id, q] : requests_) {
    XY_CHECK(int32_t(q.blocks.size()) * block_size_ >= q.num_computed, "request ", id);
    if (caching_) XY_CHECK(q.chain.size() <= size_t(q.num_computed / block_size_), "request ", id);
    for (size_t j = 0; j < q.blocks.size(); ++j) {
      const int32_t b = q.blocks[j];
      ++refs[size_t(b)];
      const int32_t valid = std::clamp(q.num_computed - int32_t(j) * block_size_, 0, block_size_);
      if (writer_[size_t(b)] == id) {
        ++writers[size_t(b)];
        XY_CHECK(filled_[size_t(b)] == valid, "writer ", id, " block ", b, " filled ",
                 filled_[size_t(b)], " valid ", valid);
      } else {
        XY_CHECK(valid > 0, "request ", id, " holds uncomputed block ", b, " it cannot write");
        XY_CHECK(filled_[size_t(b)] >= valid, "reader ", id, " block ", b);
      }
    }
  }
  for (const BlockCopy& c : pending_copies_) ++refs[size_t(c.src_block)];
  int32_t num_free = 0;
  for (int32_t b = 0; b < n; ++b) {
    XY_CHECK(refs[size_t(b)] == pool_.ref_count(b), "block ", b, " ref count ",
             pool_.ref_count(b), " but held ", refs[size_t(b)], " times");
    XY_CHECK(writers[size_t(b)] <= 1, "block ", b, " has ", writers[size_t(b)], " writers");
    if (writer_[size_t(b)] != kNoWriter)
      XY_CHECK(writers[size_t(b)] == 1, "block ", b, " writer ", writer_[size_t(b)], " gone");
    if (pool_.is_free(b)) ++num_free;
    if (index_.is_published(b))
      XY_CHECK(int32_t(index_.tokens(b).size()) <= filled_[size_t(b)], "block ", b);
    if (pool_.is_free(b) && !index_.is_published(b))
      XY_CHECK(filled_[size_t(b)] == 0, "empty free block ", b, " has filled slots");
  }
  XY_CHECK(num_free == pool_.num_free(), "free count");
  // Empty free blocks come before every cached one, so eviction happens only under pressure.
  bool seen_cached = false;
  for (const int32_t b : pool_.free_list()) {
    if (index_.is_published(b)) seen_cached = true;
    else XY_CHECK(!seen_cached, "empty block ", b, " behind a cached block in the free list");
  }
  if (!caching_) XY_CHECK(index_.num_published() == 0, "published blocks with caching off");
}

}  // namespace xy::cache
