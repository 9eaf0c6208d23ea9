#include "xyserve/model/tensor_layout.h"

#include "xyserve/common/error.h"

namespace xy::model {

std::vector<TensorSpec> hf_decoder_tensors(const ModelConfig& c) {
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  std::vector<TensorSpec> specs;
  auto model_tensor = [&](std::string name, std::vector<int64_t> shape, TensorInit init,
                          WeightTensor ModelWeights::*slot) {
    TensorSpec s;
    s.name = std::move(name);
    s.shape = std::move(shape);
    s.init = init;
    s.model_slot = slot;
    specs.push_back(std::move(s));
  };
  model_tensor("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, TensorInit::kLinear,
               &ModelWeights::embed_tokens);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string prefix = cat("model.layers.", l, ".");
    auto layer_tensor = [&](const char* suffix, std::vector<int64_t> shape, TensorInit init,
                            WeightTensor LayerWeights::*slot) {
      TensorSpec s;
      s.name = prefix + suffix;
      s.shape = std::move(shape);
      s.init = init;
      s.layer = l;
      s.layer_slot = slot;
      specs.push_back(std::move(s));
    };
    using TI = TensorInit;
    using LW = LayerWeights;
    layer_tensor("input_layernorm.weight", {c.hidden_size}, TI::kNorm, &LW::input_norm);
    layer_tensor("self_attn.q_proj.weight", {q_out, c.hidden_size}, TI::kLinear, &LW::q_proj);
    layer_tensor("self_attn.k_proj.weight", {kv_out, c.hidden_size}, TI::kLinear, &LW::k_proj);
    layer_tensor("self_attn.v_proj.weight", {kv_out, c.hidden_size}, TI::kLinear, &LW::v_proj);
    if (c.qkv_bias) {
      layer_tensor("self_attn.q_proj.bias", {q_out}, TI::kBias, &LW::q_bias);
      layer_tensor("self_attn.k_proj.bias", {kv_out}, TI::kBias, &LW::k_bias);
      layer_tensor("self_attn.v_proj.bias", {kv_out}, TI::kBias, &LW::v_bias);
    }
    if (c.qk_norm) {
      layer_tensor("self_attn.q_norm.weight", {c.head_dim}, TI::kNorm, &LW::q_norm);
      layer_tensor("self_attn.k_norm.weight", {c.head_dim}, TI::kNorm, &LW::k_norm);
    }
    layer_tensor("self_attn.o_proj.weight", {c.hidden_size, q_out}, TI::kLinear, &LW::o_proj);
    layer_tensor("post_attention_layernorm.weight", {c.hidden_size}, TI::kNorm,
                 &LW::post_attention_norm);
    layer_tensor("mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}, TI::kLinear,
                 &LW::gate_proj);
    layer_tensor("mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}, TI::kLinear,
                 &LW::up_proj);
    layer_tensor("mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}, TI::kLinear,
                 &LW::down_proj);
  }
  model_tensor("model.norm.weight", {c.hidden_size}, TensorInit::kNorm, &ModelWeights::final_norm);
  if (!c.tie_word_embeddings) {
    model_tensor("lm_head.weight", {c.vocab_size, c.hidden_size}, TensorInit::kLinear,
                 &ModelWeights::lm_head);
  }
  return specs;
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

}  // namespace xy::model
