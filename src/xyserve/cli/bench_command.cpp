// `xyserve bench offline`: runs the engine directly on synthetic (or file) prompts and reports
// throughput, steps, tokens per step, prefix hit rate, draft acceptance, TTFT and TPOT.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/cli/commands.h"
#include "xyserve/cli/engine_setup.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/error.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/weights.h"

namespace xy::cli {
namespace {

FlagSet bench_flags() {
  FlagSet f("bench offline", "Runs the engine on N prompts at once and reports throughput and latency.");
  f.add("model", "DIR", "", "model directory");
  f.add("num-prompts", "N", "64", "number of requests");
  f.add("input-len", "N|A:B", "128", "prompt tokens (fixed, or uniform in [A, B])");
  f.add("output-len", "N|A:B", "64", "output tokens (fixed, or uniform in [A, B])");
  f.add("prefix-share", "P", "0", "fraction of each prompt taken from a prefix all prompts share");
  f.add("dataset", "FILE", "", "JSON list of {\"prompt_ids\": [...], \"output_len\": N} instead of random prompts");
  add_engine_flags(f);
  f.add("seed", "N", "0", "seed for prompts and lengths");
  f.add("json", "FILE", "", "also write the results as JSON here");
  return f;
}

std::pair<int64_t, int64_t> parse_range(const std::string& flag, const std::string& v) {
  try {
    const size_t colon = v.find(':');
    if (colon == std::string::npos) return {std::stoll(v), std::stoll(v)};
    return {std::stoll(v.substr(0, colon)), std::stoll(v.substr(colon + 1))};
  } catch (const std::exception&) {
    throw InvalidArgument(cat("bench: --", flag, " expects N or A:B, got '", v, "'"));
  }
}

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  for (double x : v) p.mean += x;
  p.mean /= double(v.size());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))]; };
  p.p50 = at(0.5);
  p.p90 = at(0.9);
  p.p99 = at(0.99);
  return p;
}

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "serve") return run_bench_serve({args.begin() + 1, args.end()});
  if (args.empty() || args[0] != "offline")
    throw InvalidArgument(
        "bench: usage: xyserve bench offline --model DIR [flags] | xyserve bench serve --base-url URL [flags]"
        " (add --help for the flags)");
  FlagSet flags = bench_flags();
  flags.parse({args.begin() + 1, args.end()});
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  const std::string model_dir = flags.require("model");
  auto weights = model::load_model(model_dir);
  const int64_t vocab = weights->config.vocab_size;
  std::mt19937_64 rng(uint64_t(flags.get_int("seed")));

  // Requests.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> output_lens;
  if (!flags.get("dataset").empty()) {
    std::ifstream in(flags.get("dataset"));
    if (!in) throw Error(cat("bench: cannot read --dataset ", flags.get("dataset")));
    const nlohmann::json data = nlohmann::json::parse(in, nullptr, false);
    if (!data.is_array()) throw InvalidArgument(cat("bench: ", flags.get("dataset"), " is not a JSON list"));
    for (const auto& item : data) {
      if (!item.contains("prompt_ids") || !item.contains("output_len"))
        throw InvalidArgument(cat("bench: ", flags.get("dataset"), ": each item needs prompt_ids and output_len"));
      prompts.push_back(item["prompt_ids"].get<std::vector<int32_t>>());
      output_lens.push_back(item["output_len"].get<int32_t>());
    }
  } else {
    const auto [in_lo, in_hi] = parse_range("input-len", flags.get("input-len"));
    const auto [out_lo, out_hi] = parse_range("output-len", flags.get("output-len"));
    if (in_lo < 1 || in_hi < in_lo || out_lo < 1 || out_hi < out_lo)
      throw InvalidArgument("bench: lengths must be >= 1 with A <= B");
    const double share = flags.get_double("prefix-share");
    if (share < 0 || share > 1) throw InvalidArgument("bench: --prefix-share must be in [0, 1]");
    std::vector<int32_t> shared(static_cast<size_t>(in_hi), 0);
    for (auto& t : shared) t = int32_t(rng() % uint64_t(vocab));
    for (int64_t i = 0, n = flags.get_int("num-prompts"); i < n; ++i) {
      const int64_t len = in_lo + int64_t(rng() % uint64_t(in_hi - in_lo + 1));
      const int64_t num_shared = int64_t(share * double(len));
      std::vector<int32_t> p(shared.begin(), shared.begin() + num_shared);
      while (int64_t(p.size()) < len) p.push_back(int32_t(rng() % uint64_t(vocab)));
      prompts.push_back(std::move(p));
      output_lens.push_back(int32_t(out_lo + int64_t(rng() % uint64_t(out_hi - out_lo + 1))));
    }
  }

  // Engine.
  engine::EngineConfig config = engine_config_from_flags(flags, "bench", weights->config, nullptr);
  // Without --num-kv-blocks: enough for every request at once, so nothing is preempted.
  BackendRequest want;
  for (size_t i = 0; i < prompts.size(); ++i)
    want.blocks_wanted += int32_t((int64_t(prompts[i].size()) + output_lens[i] +
                                   config.scheduler.num_speculative_tokens + flags.get_int("block-size") - 1) /
                                  flags.get_int("block-size"));
  want.max_num_tokens = config.scheduler.max_num_batched_tokens;
  std::string device;
  auto backend = make_backend(flags, "bench", *weights, want, &device);
  engine::Engine engine(*backend, nullptr, config);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<engine::Engine::Handle> handles;
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::GenerationOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = output_lens[i];
    o.ignore_eos = true;
    handles.push_back(engine.submit(prompts[i], o));
  }
  while (engine.step()) {
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<double> ttft, tpot;
  int64_t input_tokens = 0, output_tokens = 0;
  for (auto& h : handles) {
    engine::StreamEvent e;
    do e = h.stream->next(); while (!e.finished);
    if (!e.metrics) continue;
    ttft.push_back(e.metrics->ttft_s);
    if (e.metrics->num_output_tokens > 1) tpot.push_back(e.metrics->tpot_s);
    input_tokens += e.metrics->num_prompt_tokens;
    output_tokens += e.metrics->num_output_tokens;
  }
  const engine::EngineStats st = engine.stats();
  const Percentiles t1 = percentiles(ttft), t2 = percentiles(tpot);
  nlohmann::json j;
  j["device"] = device;
  j["num_requests"] = prompts.size();
  j["elapsed_s"] = elapsed;
  j["input_tokens"] = input_tokens;
  j["output_tokens"] = output_tokens;
  j["output_tokens_per_s"] = double(output_tokens) / elapsed;
  j["total_tokens_per_s"] = double(input_tokens + output_tokens) / elapsed;
  j["steps"] = st.scheduler.num_steps;
  j["mean_tokens_per_step"] = st.scheduler.num_steps ? double(st.scheduler.num_scheduled_tokens) / double(st.scheduler.num_steps) : 0.0;
  j["preemptions"] = st.scheduler.num_preemptions;
  j["prefix_hit_rate"] = st.kv.num_query_tokens ? double(st.kv.num_hit_tokens) / double(st.kv.num_query_tokens) : 0.0;
  j["draft_tokens"] = st.scheduler.num_draft_tokens;
  j["draft_acceptance_rate"] = st.scheduler.num_draft_tokens ? double(st.scheduler.num_accepted_tokens) / double(st.scheduler.num_draft_tokens) : 0.0;
  for (const auto& [name, p] : {std::pair{"ttft_s", t1}, std::pair{"tpot_s", t2}})
    j[name] = {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}};

  std::printf("%-24s %12s\n", "device", device.c_str());
  std::printf("%-24s %12zu\n", "requests", prompts.size());
  std::printf("%-24s %12.3f\n", "elapsed (s)", elapsed);
  std::printf("%-24s %12lld / %lld\n", "input / output tokens", (long long)input_tokens, (long long)output_tokens);
  std::printf("%-24s %12.1f\n", "output tokens/s", double(output_tokens) / elapsed);
  std::printf("%-24s %12.1f\n", "total tokens/s", double(input_tokens + output_tokens) / elapsed);
  std::printf("%-24s %12lld\n", "steps", (long long)st.scheduler.num_steps);
  std::printf("%-24s %12.1f\n", "mean tokens/step", j["mean_tokens_per_step"].get<double>());
  std::printf("%-24s %12lld\n", "preemptions", (long long)st.scheduler.num_preemptions);
  std::printf("%-24s %12.3f\n", "prefix hit rate", j["prefix_hit_rate"].get<double>());
  std::printf("%-24s %12.3f\n", "draft acceptance", j["draft_acceptance_rate"].get<double>());
  std::printf("%-24s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50", "p90", "p99");
  for (const auto& [name, p] : {std::pair{"TTFT", t1}, std::pair{"TPOT", t2}})
    std::printf("%-24s %10.2f %10.2f %10.2f %10.2f\n", name, p.mean * 1e3, p.p50 * 1e3, p.p90 * 1e3, p.p99 * 1e3);
  std::printf("%s\n", j.dump().c_str());
  if (!flags.get("json").empty()) {
    std::ofstream out(flags.get("json"));
    if (!out) throw Error(cat("bench: cannot write --json ", flags.get("json")));
    out << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace xy::cli
