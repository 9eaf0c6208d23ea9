#include "xyserve/cache/prefix_index.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::cache {

PrefixIndex::PrefixIndex(int32_t num_blocks, int32_t block_size, BlockHasher hasher)
    : block_size_(block_size),
      hasher_(hasher),
      entries_(size_t(num_blocks)),
      tokens_(size_t(num_blocks) * size_t(block_size), 0) {
  XY_CHECK(num_blocks >= 1 && block_size >= 1, "num_blocks ", num_blocks, " block_size ",
           block_size);
}

std::span<const int32_t> PrefixIndex::tokens(int32_t block) const {
  return {token_row(block), size_t(entries_[size_t(block)].num_tokens)};
}

ChainLink PrefixIndex::link(int32_t block) const {
  const Entry& e = entries_[size_t(block)];
  XY_CHECK(e.serial != 0 && e.full, "link of block ", block, " which is not a published full block");
  return {e.hash, e.serial};
}

uint64_t PrefixIndex::group_key(uint64_t parent_serial, int32_t first_token) {
  return mix64(mix64(parent_serial) ^ uint64_t(uint32_t(first_token)));
}

int32_t PrefixIndex::find_full(const ChainLink& parent, std::span<const int32_t> tokens) const {
  XY_CHECK(int32_t(tokens.size()) == block_size_, "find_full needs one block of tokens, got ",
           tokens.size());
  const auto it = full_.find(hasher_(parent.hash, tokens));
  if (it == full_.end()) return -1;
  const Entry& e = entries_[size_t(it->second)];
  // The hash only proposes; identity of the parent and equality of the tokens decide.
  if (e.parent_serial != parent.serial) return -1;
  if (!std::equal(tokens.begin(), tokens.end(), token_row(it->second))) return -1;
  return it->second;
}

PrefixIndex::PartialMatch PrefixIndex::find_partial(const ChainLink& parent,
                                                    std::span<const int32_t> tokens) const {
  PartialMatch best;
  // A query of block_size tokens that matched whole would have been a find_full hit.
  tokens = tokens.first(std::min<size_t>(tokens.size(), size_t(block_size_ - 1)));
  if (tokens.empty()) return best;
  const auto it = groups_.find(group_key(parent.serial, tokens[0]));
  if (it == groups_.end()) return best;
  for (const int32_t b : it->second) {
    const Entry& e = entries_[size_t(b)];
    if (e.parent_serial != parent.serial) continue;
    const int32_t* row = token_row(b);
    const int32_t limit = std::min(e.num_tokens, int32_t(tokens.size()));
    int32_t n = 0;
    while (n < limit && row[n] == tokens[size_t(n)]) ++n;
    if (n > best.num_tokens) best = {b, n};
  }
  return best;
}

PrefixIndex::Published PrefixIndex::publish(int32_t block, const ChainLink& parent,
                                            std::span<const int32_t> tokens) {
  const int32_t n = int32_t(tokens.size());
  XY_CHECK(n >= 1 && n <= block_size_, "publish of ", n, " tokens into block ", block);
  Entry& e = entries_[size_t(block)];
  Published out;
  if (e.serial != 0) {
    // Extending: earlier slots never change once published (only shrink() may cut them).
    XY_CHECK(!e.full, "publish into full block ", block);
    XY_CHECK(e.parent_serial == parent.serial, "block ", block, " extended under another parent");
    XY_CHECK(n >= e.num_tokens, "block ", block, " extended from ", e.num_tokens, " to ", n);
    XY_CHECK(std::equal(token_row(block), token_row(block) + e.num_tokens, tokens.begin()),
             "block ", block, " extended with different leading tokens");
  }
  if (n == block_size_) {
    const uint64_t key = hasher_(parent.hash, tokens);
    const auto it = full_.find(key);
    if (it != full_.end()) {
      const int32_t other = it->second;
      const Entry& o = entries_[size_t(other)];
      if (o.parent_serial == parent.serial &&
          std::equal(tokens.begin(), tokens.end(), token_row(other))) {
        // Another request computed the same block first; keep that one canonical.
        if (e.serial != 0) unpublish(block);
        out.link = {o.hash, o.serial};
        return out;
      }
      out.displaced = other;
      unpublish(other);
    }
    e.full = true;
    e.hash = key;
    full_.emplace(key, block);
  }
  if (e.serial == 0) {
    e.serial = next_serial_++;
    e.parent_serial = parent.serial;
    e.group = group_key(parent.serial, tokens[0]);
    auto& members = groups_[e.group];
    e.group_pos = int32_t(members.size());
    members.push_back(block);
    ++num_published_;
  }
  std::copy(tokens.begin(), tokens.end(), token_row(block));
  e.num_tokens = n;
  out.link = {e.hash, e.serial};
  return out;
}

void PrefixIndex::shrink(int32_t block, int32_t num_tokens) {
  Entry& e = entries_[size_t(block)];
  XY_CHECK(e.serial != 0, "shrink of unpublished block ", block);
  XY_CHECK(num_tokens >= 1 && num_tokens <= e.num_tokens, "shrink of block ", block, " from ",
           e.num_tokens, " to ", num_tokens);
  if (e.full && num_tokens < block_size_) {
    full_.erase(e.hash);
    e.full = false;
    e.hash = 0;
  }
  e.num_tokens = num_tokens;
  e.serial = next_serial_++;  // orphans whatever was published under the old content
}

void PrefixIndex::remove_from_group(int32_t block) {
  Entry& e = entries_[size_t(block)];
  auto it = groups_.find(e.group);
  XY_CHECK(it != groups_.end(), "block ", block, " missing from its group");
  auto& members = it->second;
  const int32_t last = members.back();
  members[size_t(e.group_pos)] = last;
  entries_[size_t(last)].group_pos = e.group_pos;
  members.pop_back();
  if (members.empty()) groups_.erase(it);
}

void PrefixIndex::unpublish(int32_t block) {
  Entry& e = entries_[size_t(block)];
  XY_CHECK(e.serial != 0, "unpublish of unpublished block ", block);
  if (e.full) full_.erase(e.hash);
  remove_from_group(block);
  e = Entry{};
  --num_published_;
}

std::vector<int32_t> PrefixIndex::clear() {
  std::vector<int32_t> dropped;
  for (int32_t b = 0; b < int32_t(entries_.size()); ++b) {
    if (entries_[size_t(b)].serial != 0) dropped.push_back(b);
    entries_[size_t(b)] = Entry{};
  }
  full_.clear();
  groups_.clear();
  num_published_ = 0;
  return dropped;
}

}  // namespace xy::cache
