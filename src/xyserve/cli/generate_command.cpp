// `xyserve generate`: one prompt through the same engine that `serve` runs (scheduler, paged KV,
// prefix cache, speculation), its text streamed to stdout as it becomes final.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "xyserve/cli/commands.h"
#include "xyserve/cli/engine_setup.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/common/progress_bar.h"
#include "xyserve/engine/engine.h"
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
  f.add_bool("stats", false, "print token counts and speed to stderr at the end");
  add_engine_flags(f);
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

  engine::GenerationOptions options;
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
  const int64_t total = int64_t(prompt_ids.size()) + options.max_tokens;
  if (total > weights->config.max_position_embeddings)
    throw InvalidArgument(cat("generate: prompt (", prompt_ids.size(), " tokens) + --max-tokens (",
                              options.max_tokens, ") exceeds the model's context of ",
                              weights->config.max_position_embeddings, " tokens"));
  engine::EngineConfig config = engine_config_from_flags(flags, "generate", weights->config, tokenizer.get());
  config.scheduler.max_model_len = int32_t(weights->config.max_position_embeddings);
  // One request: KV for the prompt, the output and a verify's drafts, and no more.
  const int64_t block_size = kv_block_size(flags, "generate");
  BackendRequest want;
  want.blocks_wanted = int32_t((total + config.scheduler.num_speculative_tokens + block_size) / block_size);
  want.max_num_tokens = config.scheduler.max_num_batched_tokens;
  std::string device;
  auto backend = make_backend(flags, "generate", *weights, want, &device);
  weights.reset();
  engine::Engine engine(*backend, tokenizer.get(), config);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  engine::Engine::Handle handle = engine.submit(prompt_ids, options);
  engine::StreamEvent last;
  size_t num_output = 0;
  bool finished = false;
  while (!finished) {
    bool unfinished = false;
    try {
      unfinished = engine.step();
    } catch (const engine::EngineDeadError&) {
      std::fputc('\n', stdout);  // end the partial text's line; main prints the error
      throw;
    }
    // try_next() keeps answering a finished event once the finish was taken: stop there.
    while (!finished) {
      auto event = handle.stream->try_next();
      if (!event) break;
      std::fwrite(event->text.data(), 1, event->text.size(), stdout);
      std::fflush(stdout);
      num_output += event->token_ids.size();
      finished = event->finished;
      if (finished) last = std::move(*event);
    }
    XY_CHECK(finished || unfinished, "the engine went idle before the request finished");
  }
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fputc('\n', stdout);
  if (flags.get_bool("stats")) {
    std::fprintf(stderr,
                 "device %s; load %.2f s; prompt %zu tokens; generated %zu tokens in %.3f s (%.1f tokens/s); "
                 "finish: %s\n",
                 device.c_str(), load_s, prompt_ids.size(), num_output, gen_s,
                 double(num_output) / std::max(gen_s, 1e-9), std::string(sched::to_string(last.finish_reason)).c_str());
  }
  return 0;
}

}  // namespace xy::cli
