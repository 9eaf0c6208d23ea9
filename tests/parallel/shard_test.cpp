// The Megatron sharding map (parallel/shard.h), checked element by element against the whole
// model: every rank's slices are the rows or columns the map names, every local query head
// finds its own KV head on its rank, the slices of all ranks cover each weight exactly once
// (KV heads: each rank has what it needs), padding is zero, and shapes that do not split fail
// naming the config.json field.
#include <gtest/gtest.h>

#include <cstring>

#include "parallel/tp_test_models.h"
#include "xyserve/common/error.h"
#include "xyserve/parallel/shard.h"

namespace xy::parallel {
namespace {

using testing::TpModel;
using testing::tp_weights;

// Element (i, j) of a 2-D fp32 tensor.
float at(const model::WeightTensor& t, int64_t i, int64_t j) {
  EXPECT_EQ(t.dtype, DType::kF32);
  return static_cast<const float*>(t.data)[i * t.shape[1] + j];
}
float at(const model::WeightTensor& t, int64_t i) { return static_cast<const float*>(t.data)[i]; }

// Row `local` of shard tensor s equals row `global` of the whole tensor w (same width).
void expect_row(const model::WeightTensor& s, int64_t local, const model::WeightTensor& w,
                int64_t global, const std::string& what) {
  ASSERT_EQ(s.shape.size(), w.shape.size()) << what;
  const int64_t width = s.shape.size() == 2 ? s.shape[1] : 1;
  for (int64_t j = 0; j < width; ++j) {
    const float a = s.shape.size() == 2 ? at(s, local, j) : at(s, local);
    const float b = w.shape.size() == 2 ? at(w, global, j) : at(w, global);
    ASSERT_EQ(a, b) << what << " local row " << local << " global row " << global << " col " << j;
  }
}

void expect_same_tensor(const model::WeightTensor& s, const model::WeightTensor& w) {
  ASSERT_EQ(s.shape, w.shape) << w.name;
  EXPECT_EQ(std::memcmp(s.data, w.data, w.num_bytes), 0) << w.name;
}

void check_shards(const TpModel& m, int32_t size) {
  SCOPED_TRACE(m.name() + " size " + std::to_string(size));
  const model::ModelWeights& w = tp_weights(m);
  const model::ModelConfig& c = w.config;
  const int64_t hd = c.head_dim, h = c.hidden_size, group = c.num_heads / c.num_kv_heads;
  std::vector<int64_t> q_rows_seen(size_t(c.num_heads * hd), 0), inter_seen(size_t(c.intermediate_size), 0);
  std::vector<int64_t> vocab_seen(size_t(c.vocab_size), 0);
  for (int32_t r = 0; r < size; ++r) {
    const ShardedWeights s = shard_weights(w, r, size);
    const ShardInfo& info = s.info;
    const model::ModelConfig& sc = s.weights.config;
    EXPECT_EQ(info.rank, r);
    EXPECT_EQ(info.vocab_size, c.vocab_size);
    EXPECT_EQ(sc.num_heads * size, c.num_heads);
    EXPECT_EQ(sc.intermediate_size * size, c.intermediate_size);
    EXPECT_EQ(sc.num_kv_heads, c.num_kv_heads >= size ? c.num_kv_heads / size : 1);
    EXPECT_EQ(sc.vocab_size, (c.vocab_size + size - 1) / size);
    EXPECT_EQ(sc.hidden_size, h);
    EXPECT_EQ(sc.head_dim, hd);
    ASSERT_EQ(s.weights.layers.size(), w.layers.size());
    const int64_t local_group = sc.num_heads / sc.num_kv_heads;

    // Vocabulary rows: the rank's range, zero past the vocabulary.
    for (int64_t i = 0; i < sc.vocab_size; ++i) {
      const int64_t g = info.vocab_begin + i;
      for (const auto& [st, wt] : {std::pair{&s.weights.embed_tokens, &w.embed_tokens},
                                   std::pair{&s.weights.lm_head, &w.lm_head}}) {
        if (g < c.vocab_size) {
          expect_row(*st, i, *wt, g, "vocabulary");
        } else {
          for (int64_t j = 0; j < h; ++j) ASSERT_EQ(at(*st, i, j), 0.0f) << "padding row " << i;
        }
      }
      if (g < c.vocab_size) ++vocab_seen[size_t(g)];
    }
    EXPECT_EQ(s.weights.lm_head.data == s.weights.embed_tokens.data, m.tied);
    expect_same_tensor(s.weights.final_norm, w.final_norm);

    for (size_t li = 0; li < w.layers.size(); ++li) {
      const model::LayerWeights& wl = w.layers[li];
      const model::LayerWeights& sl = s.weights.layers[li];
      expect_same_tensor(sl.input_norm, wl.input_norm);
      expect_same_tensor(sl.post_attention_norm, wl.post_attention_norm);
      if (c.qk_norm) {
        expect_same_tensor(sl.q_norm, wl.q_norm);
        expect_same_tensor(sl.k_norm, wl.k_norm);
      }
      ASSERT_EQ(sl.q_proj.shape, (std::vector<int64_t>{sc.num_heads * hd, h}));
      ASSERT_EQ(sl.k_proj.shape, (std::vector<int64_t>{sc.num_kv_heads * hd, h}));
      ASSERT_EQ(sl.o_proj.shape, (std::vector<int64_t>{h, sc.num_heads * hd}));
      for (int64_t j = 0; j < sc.num_heads; ++j) {
        const int64_t head = info.first_head + j;  // global query head
        // Local query head j reads local KV head j / local_group, which must hold the global
        // KV head of `head`.
        const int64_t local_kv = j / local_group, global_kv = head / group;
        for (int64_t d = 0; d < hd; ++d) {
          expect_row(sl.q_proj, j * hd + d, wl.q_proj, head * hd + d, "q_proj");
          expect_row(sl.k_proj, local_kv * hd + d, wl.k_proj, global_kv * hd + d, "k_proj");
          expect_row(sl.v_proj, local_kv * hd + d, wl.v_proj, global_kv * hd + d, "v_proj");
          if (c.qkv_bias) {
            expect_row(sl.q_bias, j * hd + d, wl.q_bias, head * hd + d, "q_bias");
            expect_row(sl.k_bias, local_kv * hd + d, wl.k_bias, global_kv * hd + d, "k_bias");
            expect_row(sl.v_bias, local_kv * hd + d, wl.v_bias, global_kv * hd + d, "v_bias");
          }
          for (int64_t i = 0; i < h; ++i)
            ASSERT_EQ(at(sl.o_proj, i, j * hd + d), at(wl.o_proj, i, head * hd + d)) << "o_proj";
          if (li == 0) ++q_rows_seen[size_t(head * hd + d)];
        }
      }
      if (!c.qkv_bias) {
        EXPECT_FALSE(sl.q_bias.present());
      }
      for (int64_t j = 0; j < sc.intermediate_size; ++j) {
        const int64_t g = info.first_intermediate + j;
        expect_row(sl.gate_proj, j, wl.gate_proj, g, "gate_proj");
        expect_row(sl.up_proj, j, wl.up_proj, g, "up_proj");
        for (int64_t i = 0; i < h; ++i) ASSERT_EQ(at(sl.down_proj, i, j), at(wl.down_proj, i, g)) << "down_proj";
        if (li == 0) ++inter_seen[size_t(g)];
      }
    }
  }
  // Query heads, MLP columns and vocabulary rows: each on exactly one rank.
  for (int64_t n : q_rows_seen) ASSERT_EQ(n, 1);
  for (int64_t n : inter_seen) ASSERT_EQ(n, 1);
  for (int64_t n : vocab_seen) ASSERT_EQ(n, 1);
}

TEST(ShardTest, ShardsFollowTheMapAndCoverTheModel) {
  for (const int32_t size : {1, 2, 4}) {
    check_shards({"llama", 4, 2}, size);  // size 4: each KV head on two ranks
    check_shards({"qwen2", 4, 2}, size);  // biases
    check_shards({"qwen3", 4, 2}, size);  // q/k norms
    check_shards({"llama", 4, 1}, size);  // MQA: one KV head on every rank
    check_shards({"llama", 4, 4}, size);  // MHA
    check_shards({"llama", 4, 2, /*tied=*/true}, size);
  }
  check_shards({"llama", 8, 2}, 4);  // two query heads per rank sharing a replicated KV head
  check_shards({"llama", 8, 4}, 2);  // two KV heads per rank
}

// `what` must appear in the message of the InvalidArgument that fn throws.
template <class Fn>
void expect_invalid(Fn&& fn, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one naming " << what;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(ShardTest, ShapesThatDoNotSplitNameTheirField) {
  model::ModelConfig c = TpModel{"llama", 4, 2}.config();
  expect_invalid([&] { check_tensor_parallel(c, 3); }, "num_attention_heads (4)");
  expect_invalid([&] { check_tensor_parallel(c, 0); }, "at least 1");
  expect_invalid([&] { check_tensor_parallel(c, 8); }, "num_attention_heads");
  model::ModelConfig kv = c;
  kv.num_heads = 12;
  kv.num_kv_heads = 6;  // 4 ranks: 6 KV heads neither split 4 ways nor replicate evenly
  expect_invalid([&] { check_tensor_parallel(kv, 4); }, "num_key_value_heads (6)");
  kv.num_kv_heads = 3;  // 4 ranks: a KV head would serve 4/3 ranks
  expect_invalid([&] { check_tensor_parallel(kv, 4); }, "num_key_value_heads (3)");
  model::ModelConfig inter = c;
  inter.intermediate_size = 130;
  expect_invalid([&] { check_tensor_parallel(inter, 4); }, "intermediate_size (130)");
  EXPECT_NO_THROW(check_tensor_parallel(inter, 2));
  expect_invalid([&] { shard_weights(tp_weights({"llama", 4, 2}), 0, 3); }, "num_attention_heads");
}

TEST(ShardTest, AWeightOfTheWrongShapeIsNamed) {
  model::ModelWeights w = tp_weights({"llama", 4, 2});  // a copy of the views
  w.layers[1].down_proj.shape = {64, 64};
  try {
    shard_weights(w, 0, 2);
    ADD_FAILURE() << "no error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace xy::parallel
