#include "xyserve/tokenizer/bpe_model.h"

#include <algorithm>

#include "xyserve/common/check.h"
#include "xyserve/tokenizer/utf8.h"

namespace xy::tokenizer {
namespace {

const std::string kEmpty;

std::string byte_token(uint8_t b) {
  static const char* kHex = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

}  // namespace

void BpeModel::MergeTable::reserve(size_t n) {
  size_t capacity = 16;
  int bits = 4;
  while (capacity < 2 * n) {  // load factor <= 1/2 keeps linear probes short
    capacity *= 2;
    ++bits;
  }
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64 - bits;
}

void BpeModel::MergeTable::insert_or_assign(uint64_t key, MergeResult value) {
  XY_CHECK(key != kEmpty && !slots_.empty());
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    if (slots_[i].key == key || slots_[i].key == kEmpty) {
      slots_[i] = {key, value};
      return;
    }
  }
}

BpeModel::BpeModel(const Json& j, const JsonPath& at) : shards_(new Shard[kNumShards]) {
  const std::string type = optional_string(j, at, "type", "BPE");
  if (type != "BPE") {
    at.field("type").fail(cat("unsupported model type \"", type, "\" (supported: BPE)"));
  }
  if (auto it = j.find("dropout"); it != j.end() && !it->is_null() && it->get<double>() > 0.0) {
    at.field("dropout").fail("BPE dropout is a training feature and is not supported");
  }
  const Json& vocab = require(j, at, "vocab");
  if (!vocab.is_object()) at.field("vocab").fail(cat("expected an object, found ", json_kind(vocab)));
  vocab_.reserve(vocab.size());
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX) {
      at.field("vocab").field(it.key()).fail("expected a non-negative 32-bit integer id");
    }
    const int32_t id = it.value().get<int32_t>();
    vocab_.emplace(it.key(), id);
    max_id = std::max<int64_t>(max_id, id);
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : vocab_) id_to_token_[static_cast<size_t>(id)] = token;

  const std::string unk = optional_string(j, at, "unk_token", "");
  if (!unk.empty()) {
    auto it = vocab_.find(unk);
    if (it == vocab_.end()) at.field("unk_token").fail(cat("\"", unk, "\" is not in model.vocab"));
    unk_id_ = it->second;
  }
  fuse_unk_ = optional_bool(j, at, "fuse_unk", false);
  byte_fallback_ = optional_bool(j, at, "byte_fallback", false);
  ignore_merges_ = optional_bool(j, at, "ignore_merges", false);
  continuing_subword_prefix_ = optional_string(j, at, "continuing_subword_prefix", "");
  end_of_word_suffix_ = optional_string(j, at, "end_of_word_suffix", "");

  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(byte_token(static_cast<uint8_t>(b)));
    byte_token_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  for (char32_t cp = 0; cp < small_char_ids_.size(); ++cp) {
    std::string s;
    utf8::append(s, cp);
    auto it = vocab_.find(s);
    small_char_ids_[cp] = it == vocab_.end() ? -1 : it->second;
  }

  // Merges: "a b" strings (older files) or ["a", "b"] pairs; the rank is the position.
  const Json& merges = require_array(j, at, "merges");
  merges_.reserve(merges.size());
  const JsonPath merges_at = at.field("merges");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        merges_at.index(rank).fail(cat("expected \"left right\", found \"", s, "\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      merges_at.index(rank).fail("expected a \"left right\" string or a [left, right] pair");
    }
    std::string merged = left;
    if (!continuing_subword_prefix_.empty() && right.rfind(continuing_subword_prefix_, 0) == 0) {
      merged += right.substr(continuing_subword_prefix_.size());
    } else {
      merged += right;
    }
    auto l = vocab_.find(left), r = vocab_.find(right), n = vocab_.find(merged);
    if (l == vocab_.end() || r == vocab_.end() || n == vocab_.end()) {
      merges_at.index(rank).fail(cat("merge \"", left, "\" + \"", right, "\": token \"",
                                     l == vocab_.end() ? left : r == vocab_.end() ? right : merged,
                                     "\" is not in model.vocab"));
    }
    // A repeated pair keeps its last rank, as Hugging Face's map construction does.
    merges_.insert_or_assign(pair_key(l->second, r->second), {static_cast<int32_t>(rank), n->second});
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return kEmpty;
  return id_to_token_[static_cast<size_t>(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  // Llama 3 (ignore_merges): a word that is itself a token is emitted whole.
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  Shard* shard = nullptr;
  if (cacheable) {
    shard = &shards_[std::hash<std::string_view>{}(word) % kNumShards];
    std::lock_guard<std::mutex> lock(shard->mutex);
    if (auto it = shard->map.find(word); it != shard->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard->mutex);
    // A full shard stops admitting words rather than evicting: the hot words of a
    // workload come first, and this keeps the lock short.
    if (shard->map.size() < kMaxEntriesPerShard) {
      shard->map.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const {  // priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap_storage;
  thread_local std::string piece;
  symbols.clear();
  auto add = [&](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };

  // 1. One symbol per character (or per byte with byte_fallback, or unk), as
  //    Hugging Face's BPE::merge_word builds them.
  int32_t pending_unk = -1;  // an unk symbol not yet added (fuse_unk extends it)
  size_t i = 0;
  while (i < word.size()) {
    const size_t begin = i;
    char32_t cp = 0;
    const size_t len = utf8::valid_sequence_length(word, i);
    if (len == 0) {
      ++i;  // cannot happen on repaired input; keeps us safe on bytes anyway
    } else {
      cp = utf8::next(word, i);
    }
    const bool is_first = begin == 0, is_last = i == word.size();
    std::string_view ch = word.substr(begin, i - begin);
    int32_t id = -1;
    if ((is_first || continuing_subword_prefix_.empty()) &&
        (!is_last || end_of_word_suffix_.empty()) && len > 0 && cp < small_char_ids_.size()) {
      id = small_char_ids_[cp];
    } else {
      piece.clear();
      if (!is_first) piece += continuing_subword_prefix_;
      piece += ch;
      if (is_last) piece += end_of_word_suffix_;
      if (auto it = vocab_.find(std::string_view(piece)); it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      if (pending_unk >= 0) {
        add(pending_unk);
        pending_unk = -1;
      }
      add(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all &= byte_token_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        // Hugging Face does not flush a pending unk here; we keep its order exactly.
        for (char c : ch) add(byte_token_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);

  // 2. Merge the lowest-ranked adjacent pair, leftmost first, until none applies.
  std::vector<Candidate>& heap = heap_storage;
  heap.clear();
  auto push_pair = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const MergeResult* m = merges_.find(pair_key(symbols[pos].id, symbols[next].id));
    if (m == nullptr) return;
    heap.push_back({m->rank, pos, m->new_id});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(symbols.size()); ++p) push_pair(p);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const MergeResult* m = merges_.find(pair_key(left.id, right.id));
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

}  // namespace xy::tokenizer
