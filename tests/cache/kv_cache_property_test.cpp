// Randomized property test of the KV cache manager against a shadow model of the device.
//
// The shadow holds, for every block slot, the token whose KV the "device" last wrote there. It
// runs what the engine would: admissions with prefixes shared at random lengths (block-aligned
// or not), prefill chunks, decodes, verifies of k draft tokens with random acceptance (marking
// either only the accepted tokens or all of them and truncating back), random truncation,
// preemption and re-admission, frees, cache resets, all under pool pressure, with prefix
// caching on and off. It performs the returned block copies and the writes of each step in the
// shadow, and checks after every operation:
//   - no request writes a slot that another live request reads, and no slot is written twice
//     in one step (which request may write which slots);
//   - every computed position of every live request holds, in the shadow, the KV of that
//     request's token there (so a cache hit or copy never hands out wrong KV);
//   - ref counts are exact and no block is leaked: free + referenced = total;
//   - the manager's own invariants (one writer per block, free-list order, ...);
// and at the end that freeing everything and clearing the cache gives back the whole pool.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "xyserve/cache/kv_cache_manager.h"

namespace xy::cache {
namespace {

struct ShadowRequest {
  std::vector<int32_t> tokens;  // known tokens: prompt, outputs, drafts being verified
  int32_t num_computed = 0;
};

class Simulation {
 public:
  Simulation(uint32_t seed, int32_t num_blocks, int32_t block_size, bool caching,
             BlockHasher hasher)
      : rng_(seed),
        bs_(block_size),
        nb_(num_blocks),
        m_(KvCacheConfig{num_blocks, block_size, caching, hasher}),
        slots_(size_t(num_blocks) * size_t(block_size), -1) {
    // A small vocabulary makes accidental partial matches common.
    vocab_ = pick(0, 1) ? 3 : 50;
  }

  void run(int32_t num_ops) {
    for (int32_t op = 0; op < num_ops && !HasFailure(); ++op) {
      const int32_t r = pick(0, 99);
      if (r < 25) admit_new();
      else if (r < 65) step();
      else if (r < 75) free_one(/*requeue=*/false);
      else if (r < 82) free_one(/*requeue=*/true);  // preemption
      else if (r < 90) readmit();
      else if (r < 97) truncate_one();
      else m_.reset_prefix_cache();
      check_all();
    }
    for (auto& [id, q] : live_) m_.free(id);
    live_.clear();
    m_.reset_prefix_cache();
    EXPECT_EQ(m_.num_free_blocks(), nb_) << "pool not whole again after freeing everything";
    EXPECT_EQ(m_.num_cached_blocks(), 0);
    for (int32_t b = 0; b < nb_; ++b) EXPECT_EQ(m_.block_ref_count(b), 0) << "block " << b;
    m_.check_invariants();
  }

  const KvCacheCounters& counters() const { return m_.counters(); }

 private:
  int32_t pick(int32_t lo, int32_t hi) { return std::uniform_int_distribution<int32_t>(lo, hi)(rng_); }
  int32_t token() { return pick(0, vocab_ - 1); }
  int32_t& slot(int32_t block, int32_t s) { return slots_[size_t(block) * size_t(bs_) + size_t(s)]; }
  static bool HasFailure() { return ::testing::Test::HasFailure(); }

  std::vector<int32_t> make_prompt() {
    std::vector<int32_t> out;
    if (!corpus_.empty() && pick(0, 3) != 0) {
      const auto& src = corpus_[size_t(pick(0, int32_t(corpus_.size()) - 1))];
      // Shared prefix: a block-aligned length half of the time, any length otherwise.
      int32_t len = pick(0, int32_t(src.size()));
      if (pick(0, 1)) len -= len % bs_;
      out.assign(src.begin(), src.begin() + len);
    }
    const int32_t extra = pick(out.empty() ? 1 : 0, 3 * bs_);
    for (int32_t i = 0; i < extra; ++i) out.push_back(token());
    if (out.empty()) out.push_back(token());
    return out;
  }

  void admit(std::vector<int32_t> tokens) {
    const int64_t id = next_id_++;
    const int32_t len = int32_t(tokens.size());
    const PrefixHit hit = m_.find_prefix(tokens);
    ASSERT_LE(hit.num_cached_tokens, std::max(0, len - 1)) << "a hit must leave the last token";
    if (!m_.prefix_caching_enabled()) {
      ASSERT_EQ(hit.num_cached_tokens, 0);
    }
    const int32_t total = pick(hit.num_cached_tokens, len);
    const int32_t free_before = m_.num_free_blocks();
    if (!m_.admit(id, tokens, hit, total)) {
      ASSERT_FALSE(m_.has_request(id));
      ASSERT_EQ(m_.num_free_blocks(), free_before) << "failed admission had a side effect";
      waiting_.push_back(std::move(tokens));
      return;
    }
    ASSERT_EQ(m_.num_computed_tokens(id), hit.num_cached_tokens);
    live_[id] = ShadowRequest{std::move(tokens), hit.num_cached_tokens};
    run_copies();
  }

  void admit_new() { admit(make_prompt()); }

  void readmit() {
    if (waiting_.empty()) return;
    const size_t i = size_t(pick(0, int32_t(waiting_.size()) - 1));
    std::vector<int32_t> tokens = std::move(waiting_[i]);
    waiting_.erase(waiting_.begin() + std::ptrdiff_t(i));
    admit(std::move(tokens));
  }

  int64_t random_live() {
    auto it = live_.begin();
    std::advance(it, pick(0, int32_t(live_.size()) - 1));
    return it->first;
  }

  void free_one(bool requeue) {
    if (live_.empty()) return;
    const int64_t id = random_live();
    auto& q = live_[id];
    corpus_.push_back(q.tokens);
    if (corpus_.size() > 32) corpus_.erase(corpus_.begin());
    if (requeue) waiting_.push_back(q.tokens);
    m_.free(id);
    live_.erase(id);
  }

  void truncate_one() {
    if (live_.empty()) return;
    const int64_t id = random_live();
    auto& q = live_[id];
    const int32_t capacity = int32_t(m_.block_table(id).size()) * bs_;
    const int32_t n = pick(std::max(0, q.num_computed - 2 * bs_), capacity);
    m_.truncate(id, n);
    q.num_computed = std::min(q.num_computed, n);
    ASSERT_EQ(m_.num_computed_tokens(id), q.num_computed);
    ASSERT_EQ(int32_t(m_.block_table(id).size()), (n + bs_ - 1) / bs_);
    // The rolled-back positions get other tokens, as rejected drafts do.
    if (int32_t(q.tokens.size()) > n) {
      q.tokens.resize(size_t(std::max(n, 1)));
      if (n == 0) q.tokens[0] = token();
      for (int32_t i = pick(0, bs_); i > 0; --i) q.tokens.push_back(token());
    }
  }

  // Copies run before the step's writes, in any order: so dsts must be distinct and never a
  // src of the same batch.
  void run_copies() {
    const std::vector<BlockCopy> copies = m_.take_pending_copies();
    std::set<int32_t> dsts, srcs;
    for (const auto& c : copies) {
      ASSERT_TRUE(dsts.insert(c.dst_block).second) << "two copies into block " << c.dst_block;
      srcs.insert(c.src_block);
      ASSERT_GE(c.num_tokens, 1);
      ASSERT_LT(c.num_tokens, bs_);
    }
    for (const auto& c : copies) ASSERT_EQ(srcs.count(c.dst_block), 0u) << "dst is also a src";
    for (const auto& c : copies)
      for (int32_t s = 0; s < c.num_tokens; ++s) slot(c.dst_block, s) = slot(c.src_block, s);
  }

  // Slots [0, v) of `block` are read by request `reader` if it holds the block at index j.
  bool read_by_other(int64_t writer, int32_t block, int32_t s) const {
    for (const auto& [id, q] : live_) {
      if (id == writer) continue;
      const auto table = m_.block_table(id);
      for (size_t j = 0; j < table.size(); ++j) {
        if (table[j] != block) continue;
        const int32_t v = std::clamp(q.num_computed - int32_t(j) * bs_, 0, bs_);
        if (s < v) return true;
      }
    }
    return false;
  }

  void step() {
    if (live_.empty()) return;
    struct Work {
      int64_t id;
      int32_t target;    // positions [num_computed, target) computed this step
      int32_t accepted;  // for a verify: positions kept; else target
      bool mark_all_then_truncate;
    };
    std::vector<Work> work;
    for (auto& [id, q] : live_) {
      if (pick(0, 2) == 0) continue;
      Work w{id, 0, 0, false};
      const size_t old_size = q.tokens.size();
      if (q.num_computed < int32_t(q.tokens.size())) {
        w.target = std::min(int32_t(q.tokens.size()), q.num_computed + pick(1, 2 * bs_));
        w.accepted = w.target;
      } else {
        // Decode (k = 0) or verify of k drafts: the sampled token plus k guesses.
        const int32_t k = pick(0, 1) ? 0 : pick(1, bs_ + 1);
        for (int32_t i = 0; i <= k; ++i) q.tokens.push_back(token());
        w.target = int32_t(q.tokens.size());
        w.accepted = w.target - pick(0, k);
        w.mark_all_then_truncate = pick(0, 1) == 1;
      }
      if (!m_.allocate_slots(id, w.target)) {
        // Out of blocks: the scheduler would preempt; here the request just waits.
        q.tokens.resize(old_size);
        continue;
      }
      work.push_back(w);
    }
    run_copies();
    if (HasFailure()) return;
    std::map<std::pair<int32_t, int32_t>, int64_t> written;
    for (const Work& w : work) {
      const auto& q = live_[w.id];
      const auto table = m_.block_table(w.id);
      for (int32_t p = q.num_computed; p < w.target; ++p) {
        const int32_t b = table[size_t(p / bs_)];
        const int32_t s = p % bs_;
        ASSERT_FALSE(read_by_other(w.id, b, s))
            << "request " << w.id << " writes block " << b << " slot " << s << " that another reads";
        ASSERT_TRUE(written.emplace(std::make_pair(b, s), w.id).second)
            << "block " << b << " slot " << s << " written twice in one step";
        slot(b, s) = q.tokens[size_t(p)];
      }
    }
    for (const Work& w : work) {
      auto& q = live_[w.id];
      if (w.mark_all_then_truncate) {
        m_.mark_computed(w.id, q.tokens, w.target);
        m_.truncate(w.id, w.accepted);
      } else {
        m_.mark_computed(w.id, q.tokens, w.accepted);
        if (w.accepted < w.target) m_.truncate(w.id, w.accepted);
      }
      q.num_computed = w.accepted;
      // Rejected drafts are replaced by the bonus token the verify sampled.
      if (int32_t(q.tokens.size()) > w.accepted && w.accepted < w.target) {
        q.tokens.resize(size_t(w.accepted));
        q.tokens.push_back(token() + vocab_);  // a token no draft used
      }
    }
  }

  void check_all() {
    if (HasFailure()) return;
    std::vector<int32_t> refs(size_t(nb_), 0);
    for (const auto& [id, q] : live_) {
      const auto table = m_.block_table(id);
      ASSERT_EQ(m_.num_computed_tokens(id), q.num_computed);
      ASSERT_GE(int32_t(table.size()) * bs_, q.num_computed);
      std::set<int32_t> distinct(table.begin(), table.end());
      ASSERT_EQ(distinct.size(), table.size()) << "request " << id << " holds a block twice";
      for (const int32_t b : table) ++refs[size_t(b)];
      for (int32_t p = 0; p < q.num_computed; ++p) {
        ASSERT_EQ(slot(table[size_t(p / bs_)], p % bs_), q.tokens[size_t(p)])
            << "request " << id << " position " << p << " reads KV of another token";
      }
    }
    int32_t referenced = 0, cached_free = 0;
    for (int32_t b = 0; b < nb_; ++b) {
      ASSERT_EQ(m_.block_ref_count(b), refs[size_t(b)]) << "block " << b;
      if (refs[size_t(b)] > 0) ++referenced;
      else if (m_.is_cached(b)) ++cached_free;
    }
    ASSERT_EQ(m_.num_free_blocks() + referenced, nb_) << "leak";
    ASSERT_LE(cached_free, m_.num_free_blocks());
    if (!m_.prefix_caching_enabled()) {
      ASSERT_EQ(m_.num_cached_blocks(), 0);
    }
    m_.check_invariants();
  }

  std::mt19937 rng_;
  int32_t bs_;
  int32_t nb_;
  int32_t vocab_ = 50;
  KvCacheManager m_;
  std::vector<int32_t> slots_;  // [num_blocks, block_size] token whose KV the device wrote
  std::map<int64_t, ShadowRequest> live_;
  std::vector<std::vector<int32_t>> corpus_;
  std::vector<std::vector<int32_t>> waiting_;
  int64_t next_id_ = 1;
};

void run_many(bool caching, BlockHasher hasher, int64_t* hits) {
  KvCacheCounters total;
  const int32_t kBlockSizes[] = {1, 2, 4, 16};
  for (uint32_t seed = 1; seed <= 48 && !::testing::Test::HasFailure(); ++seed) {
    const int32_t bs = kBlockSizes[seed % 4];
    const int32_t num_blocks = 8 + int32_t(seed * 7 % 41);
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " block_size " << bs << " blocks "
                                      << num_blocks << " caching " << caching);
    Simulation sim(seed, num_blocks, bs, caching, hasher);
    sim.run(600);
    *hits += sim.counters().num_hit_tokens;
    total.num_query_tokens += sim.counters().num_query_tokens;
    total.num_hit_tokens += sim.counters().num_hit_tokens;
    total.num_evicted_blocks += sim.counters().num_evicted_blocks;
    total.num_copies += sim.counters().num_copies;
  }
  // Shows how much of each behaviour the random runs reached.
  std::printf("caching %d, %s hash: query tokens %lld, hit tokens %lld, evicted blocks %lld, copies %lld\n",
              int(caching), hasher == &hash_block ? "strong" : "weak", (long long)total.num_query_tokens, (long long)total.num_hit_tokens,
              (long long)total.num_evicted_blocks, (long long)total.num_copies);
}

TEST(KvCacheProperty, PrefixCacheNeverSharesWrongOrWritableKvAndNeverLeaks) {
  int64_t hits = 0;
  run_many(/*caching=*/true, &hash_block, &hits);
  // The shared prefixes the simulation draws must actually be found.
  EXPECT_GT(hits, 0);
}

TEST(KvCacheProperty, WithoutPrefixCachingNothingIsSharedAndNothingLeaks) {
  int64_t hits = 0;
  run_many(/*caching=*/false, &hash_block, &hits);
  EXPECT_EQ(hits, 0);
}

}  // namespace
}  // namespace xy::cache

namespace xy::cache {
namespace {

// Every full block collides with every other: only the token and parent checks stand between a
// request and another prefix's KV.
uint64_t colliding_hash(uint64_t, std::span<const int32_t>) { return 42; }

// Blocks with equal tokens collide whatever their parents: the chain is ignored.
uint64_t parentless_hash(uint64_t, std::span<const int32_t> tokens) {
  return hash_block(kRootBlockHash, tokens);
}

TEST(KvCacheProperty, HashCollisionsNeverShareWrongKv) {
  int64_t hits = 0;
  run_many(/*caching=*/true, &colliding_hash, &hits);
  EXPECT_GT(hits, 0);  // partial matches go by tokens, and some full hits survive
  hits = 0;
  run_many(/*caching=*/true, &parentless_hash, &hits);
  EXPECT_GT(hits, 0);
}

}  // namespace
}  // namespace xy::cache
