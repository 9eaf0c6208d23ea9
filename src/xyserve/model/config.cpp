// config.json: the fields every supported architecture shares are read here; each architecture's
// own fields are read by its hook (architecture.h).
#include "xyserve/model/config.h"

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"
#include "xyserve/model/json_fields.h"

namespace xy::model {
namespace {

// Far above any released model (Llama 3.1 405B: 126 layers, vocabularies of ~256k).
constexpr int64_t kMaxLayers = 65536;
constexpr int64_t kMaxDim = int64_t(1) << 30;

void parse_rope_scaling(const JsonFields& scaling, RopeConfig& rope) {
  // Older configs spell the key "type", newer ones "rope_type" (transformers accepts both).
  std::optional<std::string> type = scaling.optional_string("rope_type");
  const char* type_key = "rope_type";
  if (!type) {
    type = scaling.optional_string("type");
    type_key = "type";
  }
  if (!type) scaling.fail("rope_type", "a string (\"default\", \"linear\" or \"llama3\")");
  auto positive = [&](const char* name) {
    std::optional<double> v = scaling.optional_number(name);
    if (!v || !(*v > 0)) scaling.fail(name, "a positive number");
    return *v;
  };
  if (*type == "default") {
    rope.scaling = RopeScalingType::kNone;
  } else if (*type == "linear") {
    rope.scaling = RopeScalingType::kLinear;
    rope.factor = positive("factor");
  } else if (*type == "llama3") {
    rope.scaling = RopeScalingType::kLlama3;
    rope.factor = positive("factor");
    rope.low_freq_factor = positive("low_freq_factor");
    rope.high_freq_factor = positive("high_freq_factor");
    rope.original_max_position = scaling.require_int("original_max_position_embeddings");
    if (!(rope.high_freq_factor > rope.low_freq_factor)) {
      scaling.fail_message("high_freq_factor",
                           cat("must exceed low_freq_factor (", rope.low_freq_factor,
                               "), found ", rope.high_freq_factor));
    }
  } else {
    scaling.fail_message(type_key, cat("unsupported rope scaling \"", *type,
                                       "\" (supported: default, linear, llama3)"));
  }
}

RopeConfig parse_rope(const JsonFields& fields) {
  RopeConfig rope;
  // transformers 5 groups theta and scaling under "rope_parameters"; older configs have
  // "rope_theta" and "rope_scaling" at the top level.
  if (std::optional<JsonFields> params = fields.optional_object("rope_parameters")) {
    rope.theta = params->optional_number("rope_theta")
                     .value_or(fields.optional_number("rope_theta").value_or(rope.theta));
    if (params->has("rope_type") || params->has("type")) parse_rope_scaling(*params, rope);
  } else {
    rope.theta = fields.optional_number("rope_theta").value_or(rope.theta);
    if (std::optional<JsonFields> scaling = fields.optional_object("rope_scaling")) {
      parse_rope_scaling(*scaling, rope);
    }
  }
  if (!(rope.theta > 0)) fields.fail("rope_theta", "a positive number");
  return rope;
}

DType parse_torch_dtype(const JsonFields& fields) {
  // transformers 5 writes "dtype", earlier versions "torch_dtype".
  const char* key = fields.has("dtype") ? "dtype" : "torch_dtype";
  std::optional<std::string> name = fields.optional_string(key);
  if (!name) return DType::kBF16;
  if (*name == "bfloat16") return DType::kBF16;
  if (*name == "float16" || *name == "half") return DType::kF16;
  if (*name == "float32" || *name == "float") return DType::kF32;
  fields.fail(key, "\"bfloat16\", \"float16\" or \"float32\"");
}

std::vector<int64_t> parse_eos(const JsonFields& fields) {
  const nlohmann::json* eos = fields.get("eos_token_id");
  if (!eos) return {};
  if (eos->is_number_integer()) return {fields.require_int("eos_token_id", 0)};
  std::vector<int64_t> ids;
  if (eos->is_array()) {
    for (const nlohmann::json& id : *eos) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0) {
        fields.fail("eos_token_id", "a token id or a list of token ids");
      }
      ids.push_back(id.get<int64_t>());
    }
    return ids;
  }
  fields.fail("eos_token_id", "a token id or a list of token ids");
}

const Architecture& parse_architecture(const JsonFields& fields) {
  const nlohmann::json* names = fields.get("architectures");
  if (!names || !names->is_array() || names->empty() || !(*names)[0].is_string()) {
    fields.fail("architectures", "a non-empty list of architecture names");
  }
  const std::string name = (*names)[0].get<std::string>();
  const Architecture* arch = find_architecture(name);
  if (!arch) {
    fields.fail_message("architectures", cat("unsupported architecture \"", name,
                                             "\" (supported: ", list_architecture_names(), ")"));
  }
  return *arch;
}

ModelConfig parse_config(const nlohmann::json& json, const std::string& source) {
  const JsonFields fields(json, source);
  const Architecture& arch = parse_architecture(fields);

  ModelConfig c;
  c.architecture = std::string(arch.name);
  // Sizes are bounded so that a garbage config fails here, not in a huge allocation later, and
  // so that products of two sizes (a tensor's element count) cannot overflow int64.
  c.vocab_size = fields.require_int("vocab_size", 1, kMaxDim);
  c.hidden_size = fields.require_int("hidden_size", 1, kMaxDim);
  c.intermediate_size = fields.require_int("intermediate_size", 1, kMaxDim);
  c.num_layers = fields.require_int("num_hidden_layers", 1, kMaxLayers);
  c.num_heads = fields.require_int("num_attention_heads", 1, kMaxDim);
  c.num_kv_heads =
      fields.optional_int("num_key_value_heads", 1, kMaxDim).value_or(c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0) {
    fields.fail_message("num_key_value_heads",
                        cat("num_attention_heads (", c.num_heads,
                            ") must be a multiple of num_key_value_heads, found ",
                            c.num_kv_heads));
  }
  if (std::optional<int64_t> head_dim = fields.optional_int("head_dim", 1, kMaxDim)) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      fields.fail_message("num_attention_heads",
                          cat("hidden_size (", c.hidden_size, ") must be a multiple of ",
                              "num_attention_heads when head_dim is not given, found ",
                              c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.max_position_embeddings = fields.require_int("max_position_embeddings");
  c.rms_norm_eps = fields.optional_number("rms_norm_eps").value_or(1e-6);
  if (!(c.rms_norm_eps > 0)) fields.fail("rms_norm_eps", "a positive number");
  c.rope = parse_rope(fields);
  c.tie_word_embeddings = fields.optional_bool("tie_word_embeddings").value_or(false);
  c.dtype = parse_torch_dtype(fields);
  c.bos_token_id = fields.optional_int("bos_token_id", 0).value_or(-1);
  c.eos_token_ids = parse_eos(fields);
  const std::string act = fields.optional_string("hidden_act").value_or("silu");
  if (act != "silu") fields.fail_message("hidden_act", cat("\"", act, "\" is not supported (only \"silu\")"));
  c.sliding_window.assign(size_t(c.num_layers), 0);

  arch.parse_config(fields, c);
  XY_CHECK(c.head_dim > 0 && int64_t(c.sliding_window.size()) == c.num_layers);
  if (c.head_dim % 2 != 0) {
    fields.fail_message("head_dim", cat("must be even for rotary embeddings, found ", c.head_dim));
  }
  return c;
}

}  // namespace

ModelConfig parse_config_json(std::string_view text, const std::string& source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ModelError(cat(source, ": invalid JSON: ", e.what()));
  }
  return parse_config(json, source);
}

ModelConfig load_config(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    throw ModelError(cat(dir.string(), ": model directory does not exist"));
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    throw ModelError(cat(dir.string(), ": not a directory (expected a model directory)"));
  }
  const std::filesystem::path path = dir / "config.json";
  if (!std::filesystem::exists(path, ec)) {
    throw ModelError(cat(path.string(), ": file not found (every model directory needs one)"));
  }
  return parse_config(read_json_file(path), path.string());
}

std::string_view torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "?";
}

std::string config_to_json(const ModelConfig& c) {
  const Architecture* arch = find_architecture(c.architecture);
  if (!arch) {
    throw InvalidArgument(cat("unsupported architecture \"", c.architecture,
                              "\" (supported: ", list_architecture_names(), ")"));
  }
  XY_CHECK(int64_t(c.sliding_window.size()) == c.num_layers || c.sliding_window.empty());
  nlohmann::json out;
  out["architectures"] = {std::string(arch->name)};
  out["model_type"] = std::string(arch->model_type);
  out["vocab_size"] = c.vocab_size;
  out["hidden_size"] = c.hidden_size;
  out["intermediate_size"] = c.intermediate_size;
  out["num_hidden_layers"] = c.num_layers;
  out["num_attention_heads"] = c.num_heads;
  out["num_key_value_heads"] = c.num_kv_heads;
  out["head_dim"] = c.head_dim;
  out["max_position_embeddings"] = c.max_position_embeddings;
  out["rms_norm_eps"] = c.rms_norm_eps;
  out["rope_theta"] = c.rope.theta;
  switch (c.rope.scaling) {
    case RopeScalingType::kNone: out["rope_scaling"] = nullptr; break;
    case RopeScalingType::kLinear:
      out["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope.factor}};
      break;
    case RopeScalingType::kLlama3:
      out["rope_scaling"] = {{"rope_type", "llama3"},
                             {"factor", c.rope.factor},
                             {"low_freq_factor", c.rope.low_freq_factor},
                             {"high_freq_factor", c.rope.high_freq_factor},
                             {"original_max_position_embeddings", c.rope.original_max_position}};
      break;
  }
  out["tie_word_embeddings"] = c.tie_word_embeddings;
  out["torch_dtype"] = std::string(torch_dtype_name(c.dtype));
  if (c.bos_token_id >= 0) {
    out["bos_token_id"] = c.bos_token_id;
  } else {
    out["bos_token_id"] = nullptr;
  }
  if (c.eos_token_ids.size() == 1) {
    out["eos_token_id"] = c.eos_token_ids[0];
  } else if (c.eos_token_ids.empty()) {
    out["eos_token_id"] = nullptr;
  } else {
    out["eos_token_id"] = c.eos_token_ids;
  }
  out["hidden_act"] = "silu";
  out["initializer_range"] = 0.02;
  out["attention_dropout"] = 0.0;
  out["use_cache"] = true;
  out["transformers_version"] = "4.46.0";
  arch->write_config(c, out);
  return out.dump(2) + "\n";
}

}  // namespace xy::model
