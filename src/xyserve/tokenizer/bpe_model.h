// tokenizer.json "model" of type BPE: vocab, merges (as ranks), unk/fuse_unk, byte_fallback
// (<0xNN> tokens), ignore_merges, continuing_subword_prefix / end_of_word_suffix. Words are
// merged with a heap over a linked list of symbols (lowest rank first, leftmost on ties, as
// Hugging Face's Word::merge_all), and results are cached per word.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "xyserve/tokenizer/json_fields.h"

namespace xy::tokenizer {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // j is the "model" object. Throws xy::ModelError naming `at` (e.g. model.merges[12]).
  BpeModel(const Json& j, const JsonPath& at);

  // Appends the ids of one pre-tokenized word. Thread-safe (the cache is sharded and locked).
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // "" when id is not in the model vocab.
  const std::string& id_to_token(int32_t id) const;
  // Max id + 1 over the model vocab.
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // (left id, right id) -> merge, in one flat open-addressing table: merge lookups are the
  // inner loop of BPE, and a node-based map spent ~45% of encode time in cache misses
  // (perf, bench_tokenizer_encode on the SentencePiece tokenizer).
  class MergeTable {
   public:
    void reserve(size_t n);
    void insert_or_assign(uint64_t key, MergeResult value);
    const MergeResult* find(uint64_t key) const {
      for (size_t i = slot(key);; i = (i + 1) & mask_) {
        if (slots_[i].key == key) return &slots_[i].value;
        if (slots_[i].key == kEmpty) return nullptr;
      }
    }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are < 2^31, so never a real key
    struct Slot {
      uint64_t key = kEmpty;
      MergeResult value{};
    };
    size_t slot(uint64_t key) const {
      return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
    }
    std::vector<Slot> slots_;
    size_t mask_ = 0;
    int shift_ = 64;
  };
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::vector<std::string> id_to_token_;
  MergeTable merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::array<int32_t, 256> byte_token_ids_{};  // <0xNN> ids, -1 when absent
  std::array<int32_t, 512> small_char_ids_{};  // vocab id of code points < 512 as one token

  // Per-word cache, sharded to keep lock contention low when many threads encode.
  static constexpr size_t kNumShards = 16;
  static constexpr size_t kMaxEntriesPerShard = 8192;
  static constexpr size_t kMaxCachedWordBytes = 128;
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
  };
  mutable std::unique_ptr<Shard[]> shards_;
};

}  // namespace xy::tokenizer
