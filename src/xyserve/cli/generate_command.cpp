#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "xyserve/backend/cpu/cpu_backend.h"
#ifdef XY_HAVE_CUDA
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/device.h"
#endif
#include "xyserve/cli/commands.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/error.h"
#include "xyserve/common/progress_bar.h"
#include "xyserve/engine/generator.h"
#include "xyserve/model/weights.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::cli {
namespace {

FlagSet generate_flags() {
  FlagSet f("generate", "Loads a Hugging Face model directory and streams the continuation of a prompt.");
  f.add("model", "DIR", "", "model directory (config.json, *.safetensors, tokenizer.json)");
  f.add("prompt", "TEXT", "", "the prompt");
  f.add("max-tokens", "N", "128", "most tokens to generate");
  f.add("temperature", "T", "1.0", "sampling temperature; 0 is greedy");
  f.add("top-p", "P", "1.0", "nucleus sampling: keep the smallest set of tokens with mass >= P");
  f.add("top-k", "K", "0", "keep the K most likely tokens; 0 keeps all");
  f.add("min-p", "P", "0.0", "drop tokens less likely than P times the most likely");
  f.add("repetition-penalty", "R", "1.0", "penalise tokens already in the prompt or output (> 1)");
  f.add("frequency-penalty", "F", "0.0", "penalise output tokens by their count");
  f.add("presence-penalty", "F", "0.0", "penalise output tokens that appeared at all");
  f.add("seed", "N", "", "random seed: the same seed gives the same output");
  f.add_bool("ignore-eos", false, "keep generating past the end-of-sequence token");
  f.add("device", "auto|cuda|cpu", "auto",
        "where to run: auto is cuda when a GPU is present and xyserve was built with the CUDA backend");
  f.add("threads", "N", "0", "CPU threads; 0 uses every core");
  f.add("block-size", "N", "16", "tokens per KV cache block");
  f.add_bool("stats", false, "print token counts and speed to stderr at the end");
  return f;
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  FlagSet flags = generate_flags();
  flags.parse(args);
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  const std::string model_dir = flags.require("model");
  const std::string prompt = flags.require("prompt");
  const std::string device = flags.get("device");
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw InvalidArgument(cat("generate: --device ", device, " is not one of auto|cuda|cpu"));
  bool use_cuda = false;
#ifdef XY_HAVE_CUDA
  const bool have_gpu = xy::cuda::device_count() > 0;
  if (device == "cuda" && !have_gpu) throw InvalidArgument("generate: --device cuda: no CUDA device found");
  use_cuda = device == "cuda" || (device == "auto" && have_gpu);
#else
  if (device == "cuda")
    throw InvalidArgument("generate: --device cuda: this xyserve was built without the CUDA backend (no nvcc)");
#endif

  engine::GenerateOptions options;
  options.max_tokens = int32_t(flags.get_int("max-tokens"));
  options.sampling.temperature = float(flags.get_double("temperature"));
  options.sampling.top_p = float(flags.get_double("top-p"));
  options.sampling.top_k = int32_t(flags.get_int("top-k"));
  options.sampling.min_p = float(flags.get_double("min-p"));
  options.sampling.repetition_penalty = float(flags.get_double("repetition-penalty"));
  options.sampling.frequency_penalty = float(flags.get_double("frequency-penalty"));
  options.sampling.presence_penalty = float(flags.get_double("presence-penalty"));
  if (auto seed = flags.get_optional_int("seed")) options.sampling.seed = uint64_t(*seed);
  options.ignore_eos = flags.get_bool("ignore-eos");
  if (options.max_tokens <= 0) throw InvalidArgument("generate: --max-tokens must be at least 1");
  if (options.sampling.temperature < 0) throw InvalidArgument("generate: --temperature must be >= 0");
  if (!(options.sampling.top_p > 0 && options.sampling.top_p <= 1))
    throw InvalidArgument("generate: --top-p must be in (0, 1]");

  const auto t_load = std::chrono::steady_clock::now();
  auto tokenizer = tokenizer::Tokenizer::load(model_dir);
  ProgressBar progress("loading weights");
  model::LoadOptions load_options;
  load_options.on_progress = progress.callback();
  load_options.prefault = true;  // read the pages now, so the bar shows the real load
  auto weights = model::load_model(model_dir, load_options);
  progress.finish();

  const std::vector<int32_t> prompt_ids = tokenizer->encode(prompt);
  backend::cpu::CpuBackendOptions backend_options;
  backend_options.block_size = int32_t(flags.get_int("block-size"));
  if (backend_options.block_size <= 0) throw InvalidArgument("generate: --block-size must be positive");
  backend_options.num_threads = int32_t(flags.get_int("threads"));
  const int64_t total = int64_t(prompt_ids.size()) + options.max_tokens;
  if (total > weights->config.max_position_embeddings)
    throw InvalidArgument(cat("generate: prompt (", prompt_ids.size(), " tokens) + --max-tokens (",
                              options.max_tokens, ") exceeds the model's context of ",
                              weights->config.max_position_embeddings, " tokens"));
  backend_options.num_kv_blocks = int32_t((total + backend_options.block_size - 1) / backend_options.block_size);
  std::unique_ptr<backend::Backend> backend_owner;
  if (use_cuda) {
#ifdef XY_HAVE_CUDA
    backend::cuda::CudaBackendOptions cuda_options;
    cuda_options.block_size = backend_options.block_size;
    cuda_options.num_kv_blocks = backend_options.num_kv_blocks;  // one request: exactly what it needs
    cuda_options.max_num_tokens = int32_t(std::max<int64_t>(total, 16));
    cuda_options.max_logits_rows = 16;
    backend_owner = std::make_unique<backend::cuda::CudaBackend>(*weights, cuda_options);
#endif
  } else {
    backend_owner = std::make_unique<backend::cpu::CpuBackend>(*weights, backend_options);
  }
  backend::Backend& backend = *backend_owner;
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  std::vector<int32_t> eos;
  for (int64_t id : weights->config.eos_token_ids) eos.push_back(int32_t(id));
  for (int32_t id : tokenizer->eos_token_ids())
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  engine::Generator generator(backend, *tokenizer, eos);

  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  const engine::GenerateResult result = generator.generate(prompt_ids, options, [](const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fputc('\n', stdout);
  if (flags.get_bool("stats")) {
    std::fprintf(stderr, "device %s; load %.2f s; prompt %zu tokens; generated %zu tokens in %.3f s (%.1f tokens/s); finish: %s\n",
                 use_cuda ? "cuda" : "cpu", load_s, prompt_ids.size(), result.output_ids.size(), gen_s,
                 double(result.output_ids.size()) / std::max(gen_s, 1e-9),
                 result.finish_reason == engine::FinishReason::kStop ? "stop" : "length");
  }
  return 0;
}

}  // namespace xy::cli
