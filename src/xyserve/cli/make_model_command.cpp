#include <cstdio>
#include <filesystem>

#include "xyserve/cli/commands.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::cli {
namespace fs = std::filesystem;

namespace {

FlagSet make_model_flags() {
  FlagSet f("make-model",
            "Writes a random-weight checkpoint in Hugging Face layout (config.json, safetensors,\n"
            "tokenizer files) for tests and benchmarks. The vocabulary size follows the tokenizer.");
  f.add("arch", "llama|qwen2|qwen3|mistral", "llama", "architecture");
  f.add("preset", "NAME", "tiny", "shape preset: tiny, small, llama3-8b, qwen3-8b, ... (see the error for the full list)");
  f.add("tokenizer", "FILE", "", "tokenizer.json to ship with the model (tokenizer_config.json beside it is copied too)");
  f.add("out", "DIR", "", "output directory");
  f.add("seed", "N", "0", "seed of the random weights");
  f.add("dtype", "bf16|f16|f32", "bf16", "stored dtype");
  f.add("vocab-size", "N", "", "override the vocabulary size (default: the tokenizer's)");
  return f;
}

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::kBF16;
  if (s == "f16" || s == "fp16") return DType::kF16;
  if (s == "f32" || s == "fp32") return DType::kF32;
  throw InvalidArgument(cat("make-model: --dtype '", s, "' is not one of bf16, f16, f32"));
}

}  // namespace

int run_make_model(const std::vector<std::string>& args) {
  FlagSet flags = make_model_flags();
  flags.parse(args);
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  const fs::path out = flags.require("out");
  const fs::path tokenizer_json = flags.require("tokenizer");
  if (!fs::is_regular_file(tokenizer_json))
    throw InvalidArgument(cat("make-model: --tokenizer ", tokenizer_json, ": no such file"));
  const DType dtype = parse_dtype(flags.get("dtype"));

  fs::create_directories(out);
  fs::copy_file(tokenizer_json, out / "tokenizer.json", fs::copy_options::overwrite_existing);
  const fs::path tokenizer_config = tokenizer_json.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(tokenizer_config))
    fs::copy_file(tokenizer_config, out / "tokenizer_config.json", fs::copy_options::overwrite_existing);

  int64_t vocab_size = 0;
  if (auto v = flags.get_optional_int("vocab-size")) {
    vocab_size = *v;
  } else {
    vocab_size = tokenizer::Tokenizer::load(out)->vocab_size();
  }
  model::ModelConfig config = model::preset_config(flags.get("arch"), flags.get("preset"), vocab_size);
  model::write_random_checkpoint(config, out, uint64_t(flags.get_int("seed")), dtype);
  std::printf("wrote %s: %s, %lld layers, hidden %lld, vocab %lld\n", out.c_str(),
              config.architecture.c_str(), (long long)config.num_layers, (long long)config.hidden_size,
              (long long)config.vocab_size);
  return 0;
}

}  // namespace xy::cli
