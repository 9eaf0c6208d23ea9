// What a StepPlan asks of the KV cache beyond plain rows: draft-tree verify rows, copy-on-write
// block copies and slot moves. Each is checked bitwise against the same tokens run as a plain
// chain on another backend (with other block ids).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace xy::backend::cpu {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kBlockSize = 4;

struct Rows {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
};

// A one-request plan; every new row gets logits.
meta::StepPlan one_request(int32_t computed, const Rows& rows, std::vector<int32_t> blocks,
                           std::vector<int32_t> tree_parents = {}) {
  meta::StepPlan plan;
  plan.block_size = kBlockSize;
  plan.token_ids = rows.tokens;
  plan.positions = rows.positions;
  meta::ScheduledRequest r;
  r.num_computed_tokens = computed;
  r.num_new_tokens = int32_t(rows.tokens.size());
  r.num_logits_rows = r.num_new_tokens;
  r.block_table = std::move(blocks);
  r.tree_parents = std::move(tree_parents);
  plan.requests.push_back(r);
  return plan;
}

Rows chain(const std::vector<int32_t>& tokens, int32_t first_position) {
  Rows r{tokens, {}};
  for (size_t i = 0; i < tokens.size(); ++i) r.positions.push_back(first_position + int32_t(i));
  return r;
}

class KvPlanOps : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test: ctest runs tests in parallel processes.
    const fs::path dir = fs::path(XY_BINARY_DIR) / "backend_test_models" /
                         (std::string("kv_plan_ops_") +
                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
    auto config = model::preset_config("mistral", "tiny");
    config.sliding_window.assign(size_t(config.num_layers), 6);  // trees cross the window
    model::write_random_checkpoint(config, dir, 21);
    weights_ = model::load_model(dir);
    std::mt19937 rng(4);
    for (int i = 0; i < 40; ++i) pool_.push_back(int32_t(rng() % 256));
  }

  std::unique_ptr<CpuBackend> make_backend() const {
    CpuBackendOptions options;
    options.block_size = kBlockSize;
    options.num_kv_blocks = 24;
    options.num_threads = 2;
    return std::make_unique<CpuBackend>(*weights_, options);
  }

  // Logits of `tokens` fed one step per token after `prefix` in one step, on a fresh backend.
  std::vector<std::vector<float>> chain_logits(const std::vector<int32_t>& prefix,
                                               const std::vector<int32_t>& tokens,
                                               const std::vector<int32_t>& blocks) const {
    auto backend = make_backend();
    std::vector<float> logits;
    backend->forward(one_request(0, chain(prefix, 0), blocks), logits);
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int32_t computed = int32_t(prefix.size() + i);
      backend->forward(one_request(computed, chain({tokens[i]}, computed), blocks), logits);
      out.push_back(logits);
    }
    return out;
  }

  int64_t vocab() const { return weights_->config.vocab_size; }

  std::unique_ptr<model::ModelWeights> weights_;
  std::vector<int32_t> pool_;  // random tokens
};

TEST_F(KvPlanOps, DraftTreeRowsEqualTheirPathDecodedAsAChain) {
  const std::vector<int32_t> prefix(pool_.begin(), pool_.begin() + 11);
  // Tree rows:       0   1  2  3  4  5
  const std::vector<int32_t> parents = {-1, 0, 0, 2, 1, 3};
  const std::vector<int32_t> depth = {0, 1, 1, 2, 2, 3};
  const std::vector<int32_t> tokens(pool_.begin() + 20, pool_.begin() + 26);
  const int32_t computed = int32_t(prefix.size());
  Rows rows{tokens, {}};
  for (int32_t d : depth) rows.positions.push_back(computed + d);

  auto backend = make_backend();
  const std::vector<int32_t> blocks = {5, 17, 2, 9, 11};
  std::vector<float> logits, tree_logits;
  backend->forward(one_request(0, chain(prefix, 0), blocks), logits);
  backend->forward(one_request(computed, rows, blocks, parents), tree_logits);

  // Each leaf's root-to-leaf path, decoded as a chain on another backend.
  for (const std::vector<int32_t>& path : {std::vector<int32_t>{0, 2, 3, 5}, {0, 1, 4}}) {
    std::vector<int32_t> path_tokens;
    for (int32_t r : path) path_tokens.push_back(tokens[size_t(r)]);
    const auto ref = chain_logits(prefix, path_tokens, {3, 8, 20, 1, 14});
    for (size_t d = 0; d < path.size(); ++d) {
      ASSERT_EQ(0, std::memcmp(tree_logits.data() + size_t(path[d]) * size_t(vocab()),
                               ref[d].data(), size_t(vocab()) * sizeof(float)))
          << "tree row " << path[d] << " at depth " << d;
    }
  }

  // Accept the path 0 -> 2 -> 3: move slots computed+2 and computed+3 down to +1 and +2, then
  // decode the next token as a chain continues; it must match the chain that never branched.
  meta::StepPlan next = one_request(computed + 3, chain({pool_[30]}, computed + 3), blocks);
  auto slot = [&](int32_t s) { return std::pair{blocks[size_t(s / kBlockSize)], s % kBlockSize}; };
  for (int32_t from : {2, 3}) {
    const auto [src_block, src_slot] = slot(computed + from);
    const auto [dst_block, dst_slot] = slot(computed + from - 1);
    next.kv_moves.push_back({src_block, src_slot, dst_block, dst_slot});
  }
  backend->forward(next, logits);
  const auto ref =
      chain_logits(prefix, {tokens[0], tokens[2], tokens[3], pool_[30]}, {4, 0, 13, 22, 7});
  ASSERT_EQ(0, std::memcmp(logits.data(), ref[3].data(), size_t(vocab()) * sizeof(float)))
      << "decode after compacting the accepted path";
}

TEST_F(KvPlanOps, CopyOnWriteBlockCopyEqualsComputingTheSharedPrefix) {
  // Request A computes 10 tokens in blocks {6, 1, 12} (block 12 half full). Request B shares
  // those 10 tokens: it reuses blocks 6 and 1, copies the 2 used slots of block 12 into its own
  // block 3, and computes 5 more tokens there.
  const std::vector<int32_t> shared(pool_.begin(), pool_.begin() + 10);
  const std::vector<int32_t> tail(pool_.begin() + 10, pool_.begin() + 15);
  auto backend = make_backend();
  std::vector<float> logits;
  backend->forward(one_request(0, chain(shared, 0), {6, 1, 12}), logits);
  meta::StepPlan step = one_request(10, chain(tail, 10), {6, 1, 3, 19});
  step.kv_copies.push_back({12, 3, 2});
  std::vector<float> got;
  backend->forward(step, got);

  // Reference: B's 15 tokens in one step on a fresh backend; compare its last 5 rows.
  std::vector<int32_t> all = shared;
  all.insert(all.end(), tail.begin(), tail.end());
  auto fresh = make_backend();
  std::vector<float> ref;
  fresh->forward(one_request(0, chain(all, 0), {0, 2, 4, 8}), ref);
  ASSERT_EQ(got.size(), 5 * size_t(vocab()));
  EXPECT_EQ(0,
            std::memcmp(got.data(), ref.data() + 10 * size_t(vocab()), got.size() * sizeof(float)));

  // A's own partial block was not touched: its next decode equals A's chain.
  backend->forward(one_request(10, chain({pool_[35]}, 10), {6, 1, 12}), logits);
  std::vector<int32_t> a_all = shared;
  a_all.push_back(pool_[35]);
  fresh = make_backend();
  fresh->forward(one_request(0, chain(a_all, 0), {9, 10, 11}), ref);
  EXPECT_EQ(0, std::memcmp(logits.data(), ref.data() + 10 * size_t(vocab()),
                           size_t(vocab()) * sizeof(float)));
}

}  // namespace
}  // namespace xy::backend::cpu
