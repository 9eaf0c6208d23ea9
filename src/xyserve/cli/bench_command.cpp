// `xyserve bench offline`: runs the engine directly on synthetic (or file) prompts and reports
// throughput, steps, tokens per step, prefix hit rate, draft acceptance, TTFT and TPOT.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numbers>
#include <random>

#include <nlohmann/json.hpp>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/cli/commands.h"
#include "xyserve/cli/engine_setup.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/weights.h"

namespace xy::cli {
namespace {

FlagSet bench_flags() {
  FlagSet f("bench offline",
            "Runs the engine on N prompts at once and reports throughput and latency.\n\n"
            "--length-mix sharegpt is a synthetic stand-in for the ShareGPT workload of vLLM's serving\n"
            "benchmark (ShareGPT_V3_unfiltered_cleaned_split.json), not the dataset, which is not on the\n"
            "benchmark machines: prompt and output lengths are drawn independently, each from a log-normal\n"
            "truncated to [4, 1024] whose mean is fitted to published runs with a Llama-3.1 tokenizer (223\n"
            "prompt and 200 output tokens); the spread is our assumption, not a fit. Requests longer than\n"
            "the model's max_position_embeddings are cut to it. Token ids are random, as with fixed lengths.");
  f.add("model", "DIR", "", "model directory");
  f.add("num-prompts", "N", "64", "number of requests");
  f.add("length-mix", "fixed|sharegpt", "fixed",
        "fixed: --input-len and --output-len; sharegpt: ShareGPT-like lengths (see above; ignores both)");
  f.add("input-len", "N|A:B", "128", "prompt tokens (fixed, or uniform in [A, B])");
  f.add("output-len", "N|A:B", "64", "output tokens (fixed, or uniform in [A, B])");
  f.add("prefix-share", "P", "0", "fraction of each prompt taken from a prefix all prompts share");
  f.add("dataset", "FILE", "", "JSON list of {\"prompt_ids\": [...], \"output_len\": N} instead of random prompts");
  add_engine_flags(f);
  f.add("seed", "N", "0", "seed for prompts and lengths");
  f.add("json", "FILE", "", "also write the results as JSON here");
  f.add_bool("dry-run", false, "draw the requests, report their lengths and stop (no backend, no engine)");
  return f;
}

// The ShareGPT length mix. vLLM's serving benchmark (benchmark_serving / `vllm bench serve`) takes
// the first human turn of each ShareGPT_V3_unfiltered_cleaned_split conversation as the prompt and
// the token count of the first reply as the output length, and drops pairs with either length < 4,
// a prompt > 1024 or a total > 2048 (vllm/benchmarks/datasets.py, is_valid_sequence); SGLang's
// bench_serving samples the same way but drops only lengths < 2. Published runs (tokens/request):
//   github.com/vllm-project/vllm PR 18566, Llama-3.1-8B-Instruct tokenizer, 1,000 requests:
//                                          229,711 in / 203,068 out -> 229.7 / 203.1
//   github.com/vllm-project/vllm PR 7062, tokenizer not stated, 1,000 requests:
//                                          213,987 / 199,771        -> 214.0 / 199.8
//   github.com/sgl-project/sglang issue 2805, Llama-3.1-8B-Instruct, ignore_eos, 1,648 requests:
//                                          369,103 / 326,408        -> 224.0 / 198.1
// They agree within their sampling error (a standard deviation of ~200 tokens gives about +-7 on
// the mean of 1,000 requests); we fit their averages, 223 and 200. (vLLM counts the tokens the
// model generated, which stops at EOS unless told not to, so its output means are lower bounds;
// with ignore_eos SGLang's is the replies' length.) We found no published median or spread for
// this sampling, so the sigmas are assumptions, the prompt the more skewed (mostly short
// questions, a tail of pasted documents and code); with them the medians come out at 146
// (prompt) and 137 (output), the 90th percentiles at 542 and 455. Like vLLM we drop draws outside
// the bounds (redraw) instead of clipping them, so there is no spike at 1024; outputs are bounded
// at 1024 as well, which keeps every pair within vLLM's 2048 total (vLLM would also keep an output
// past 1024 after a short prompt: about 2% of them). `--dry-run` prints the mix of a seed.
struct TruncatedLogNormal {
  double target_mean = 0;  // mean after truncation
  double sigma = 0;
  int64_t lo = 0, hi = 0;
};
constexpr TruncatedLogNormal kShareGptInput{223.0, 1.2, 4, 1024};
constexpr TruncatedLogNormal kShareGptOutput{200.0, 1.0, 4, 1024};

double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }

// E[X | lo <= X <= hi] for X = exp(mu + sigma Z), Z ~ N(0, 1): the log-normal's partial
// expectation over [lo, hi] divided by the probability of landing there.
double truncated_log_normal_mean(double mu, double sigma, double lo, double hi) {
  const double a = (std::log(lo) - mu) / sigma, b = (std::log(hi) - mu) / sigma;
  return std::exp(mu + sigma * sigma / 2) * (normal_cdf(b - sigma) - normal_cdf(a - sigma)) /
         (normal_cdf(b) - normal_cdf(a));
}

// The mu whose truncated mean is d.target_mean (that mean rises with mu; bisection).
double fit_mu(const TruncatedLogNormal& d) {
  XY_CHECK(d.target_mean > double(d.lo) && d.target_mean < double(d.hi));
  double lo_mu = std::log(double(d.lo)) - 4 * d.sigma, hi_mu = std::log(double(d.hi)) + 4 * d.sigma;
  for (int i = 0; i < 100; ++i) {
    const double mid = (lo_mu + hi_mu) / 2;
    (truncated_log_normal_mean(mid, d.sigma, double(d.lo), double(d.hi)) < d.target_mean ? lo_mu : hi_mu) = mid;
  }
  return (lo_mu + hi_mu) / 2;
}

// A standard normal from two 53-bit uniforms (Box-Muller), so a seed gives the same lengths with
// any standard library (std::normal_distribution's algorithm is unspecified).
double standard_normal(std::mt19937_64& rng) {
  const double u1 = double((rng() >> 11) + 1) * 0x1.0p-53;  // (0, 1]: log(u1) is finite
  const double u2 = double(rng() >> 11) * 0x1.0p-53;
  return std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2);
}

// One length; draws outside [lo, hi] are redrawn (2-7% of them for the mixes above).
int64_t draw_length(const TruncatedLogNormal& d, double mu, std::mt19937_64& rng) {
  while (true) {
    const double x = std::exp(mu + d.sigma * standard_normal(rng));
    if (x < double(d.lo) - 0.5 || x >= double(d.hi) + 0.5) continue;
    return std::llround(x);
  }
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

// The requests of a run: prompt token ids and output lengths.
struct Requests {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> output_lens;
  int64_t num_cut_to_context = 0;  // sharegpt requests shortened to max_position_embeddings
};

Requests dataset_requests(const FlagSet& flags) {
  const std::string path = flags.get("dataset");
  if (flags.get("length-mix") != "fixed")
    throw InvalidArgument("bench: --dataset brings its own lengths; drop --length-mix " + flags.get("length-mix"));
  std::ifstream in(path);
  if (!in) throw Error(cat("bench: cannot read --dataset ", path));
  const nlohmann::json data = nlohmann::json::parse(in, nullptr, false);
  if (!data.is_array()) throw InvalidArgument(cat("bench: ", path, " is not a JSON list"));
  Requests r;
  for (const auto& item : data) {
    if (!item.contains("prompt_ids") || !item.contains("output_len"))
      throw InvalidArgument(cat("bench: ", path, ": each item needs prompt_ids and output_len"));
    r.prompts.push_back(item["prompt_ids"].get<std::vector<int32_t>>());
    r.output_lens.push_back(item["output_len"].get<int32_t>());
  }
  return r;
}

// Random token ids, lengths from --length-mix, seeded by --seed.
Requests random_requests(const FlagSet& flags, const std::string& model_dir, const model::ModelConfig& model) {
  const int64_t num_prompts = flags.get_int("num-prompts");
  if (num_prompts < 1) throw InvalidArgument("bench: --num-prompts must be >= 1");
  const double share = flags.get_double("prefix-share");
  if (share < 0 || share > 1) throw InvalidArgument("bench: --prefix-share must be in [0, 1]");
  std::mt19937_64 rng(uint64_t(flags.get_int("seed")));
  Requests r;
  // sharegpt draws every (input, output) length first; fixed draws them inside the loop below, in
  // the order it always has, so a seed keeps giving the requests it gave before sharegpt existed.
  std::vector<std::pair<int64_t, int64_t>> lengths;
  int64_t in_lo = 0, in_hi = 0, out_lo = 0, out_hi = 0;
  if (flags.get("length-mix") == "sharegpt") {
    const double mu_in = fit_mu(kShareGptInput), mu_out = fit_mu(kShareGptOutput);
    const int64_t context = model.max_position_embeddings;
    if (context < 2) throw InvalidArgument(cat("bench: ", model_dir, ": max_position_embeddings ", context, " < 2"));
    for (int64_t i = 0; i < num_prompts; ++i) {
      int64_t in_len = draw_length(kShareGptInput, mu_in, rng);
      int64_t out_len = draw_length(kShareGptOutput, mu_out, rng);
      if (in_len + out_len > context) {
        in_len = std::min(in_len, context - 1);
        out_len = std::min(out_len, context - in_len);
        ++r.num_cut_to_context;
      }
      lengths.emplace_back(in_len, out_len);
      in_hi = std::max(in_hi, in_len);
    }
    if (r.num_cut_to_context > 0)
      std::fprintf(stderr,
                   "bench: --length-mix sharegpt: %lld of %lld requests cut to the model's context of %lld "
                   "tokens (max_position_embeddings in %s/config.json)\n",
                   (long long)r.num_cut_to_context, (long long)num_prompts, (long long)context, model_dir.c_str());
  } else {
    std::tie(in_lo, in_hi) = parse_range("input-len", flags.get("input-len"));
    std::tie(out_lo, out_hi) = parse_range("output-len", flags.get("output-len"));
    if (in_lo < 1 || in_hi < in_lo || out_lo < 1 || out_hi < out_lo)
      throw InvalidArgument("bench: lengths must be >= 1 with A <= B");
  }
  const uint64_t vocab = uint64_t(model.vocab_size);
  std::vector<int32_t> shared(static_cast<size_t>(in_hi), 0);
  for (auto& t : shared) t = int32_t(rng() % vocab);
  for (int64_t i = 0; i < num_prompts; ++i) {
    const int64_t len = lengths.empty() ? in_lo + int64_t(rng() % uint64_t(in_hi - in_lo + 1)) : lengths[i].first;
    const int64_t num_shared = int64_t(share * double(len));
    std::vector<int32_t> p(shared.begin(), shared.begin() + num_shared);
    while (int64_t(p.size()) < len) p.push_back(int32_t(rng() % vocab));
    r.prompts.push_back(std::move(p));
    r.output_lens.push_back(int32_t(lengths.empty() ? out_lo + int64_t(rng() % uint64_t(out_hi - out_lo + 1))
                                                    : lengths[i].second));
  }
  return r;
}

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
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
  p.max = v.back();
  return p;
}

// Prompt and output lengths of a run: requested ones under --dry-run, served ones otherwise (the
// same, as every request ignores EOS, unless a request failed).
struct LengthStats {
  Percentiles input, output;
  int64_t max_total = 0;  // longest request, prompt + output
};

LengthStats length_stats(const std::vector<double>& input_lens, const std::vector<double>& output_lens) {
  LengthStats s{percentiles(input_lens), percentiles(output_lens), 0};
  for (size_t i = 0; i < input_lens.size(); ++i)
    s.max_total = std::max(s.max_total, int64_t(input_lens[i] + output_lens[i]));
  return s;
}

void add_lengths(nlohmann::json& j, const LengthStats& s) {
  j["mean_input_len"] = s.input.mean;
  j["mean_output_len"] = s.output.mean;
  for (const auto& [name, p] : {std::pair{"input_len", s.input}, std::pair{"output_len", s.output}})
    j[name] = {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}};
  j["max_total_len"] = s.max_total;
}

void print_lengths(const LengthStats& s) {
  std::printf("%-24s %12.1f / %.1f\n", "mean input / output len", s.input.mean, s.output.mean);
  std::printf("%-24s %12.0f / %.0f\n", "p50 input / output len", s.input.p50, s.output.p50);
  std::printf("%-24s %12.0f / %.0f\n", "max input / output len", s.input.max, s.output.max);
}

// The JSON as the last line of stdout, and into --json when given.
void write_json(const FlagSet& flags, const nlohmann::json& j) {
  std::printf("%s\n", j.dump().c_str());
  if (!flags.get("json").empty()) {
    std::ofstream out(flags.get("json"));
    if (!out) throw Error(cat("bench: cannot write --json ", flags.get("json")));
    out << j.dump(2) << "\n";
  }
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

  const std::string length_mix = flags.get("length-mix");
  if (length_mix != "fixed" && length_mix != "sharegpt")
    throw InvalidArgument(cat("bench: --length-mix ", length_mix, " is not fixed|sharegpt"));
  const Requests requests = flags.get("dataset").empty() ? random_requests(flags, model_dir, weights->config)
                                                         : dataset_requests(flags);
  const auto& prompts = requests.prompts;
  const auto& output_lens = requests.output_lens;

  nlohmann::json j;
  j["num_requests"] = prompts.size();
  j["length_mix"] = flags.get("dataset").empty() ? length_mix : "dataset";
  if (length_mix == "sharegpt") {
    j["target_mean_input_len"] = kShareGptInput.target_mean;
    j["target_mean_output_len"] = kShareGptOutput.target_mean;
    j["num_cut_to_context"] = requests.num_cut_to_context;
  }
  if (flags.get_bool("dry-run")) {
    std::vector<double> input_lens, requested_output_lens(output_lens.begin(), output_lens.end());
    for (const auto& p : prompts) input_lens.push_back(double(p.size()));
    const LengthStats lengths = length_stats(input_lens, requested_output_lens);
    add_lengths(j, lengths);
    j["dry_run"] = true;
    std::printf("%-24s %12zu\n", "requests", prompts.size());
    std::printf("%-24s %12s\n", "length mix", j["length_mix"].get<std::string>().c_str());
    print_lengths(lengths);
    write_json(flags, j);
    return 0;
  }

  // Engine.
  engine::EngineConfig config = engine_config_from_flags(flags, "bench", weights->config, nullptr);
  // Without --num-kv-blocks: enough for every request at once, so nothing is preempted.
  BackendRequest want;
  const int64_t block_size = kv_block_size(flags, "bench");
  for (size_t i = 0; i < prompts.size(); ++i)
    want.blocks_wanted += int32_t(
        (int64_t(prompts[i].size()) + output_lens[i] + config.scheduler.num_speculative_tokens + block_size - 1) /
        block_size);
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

  std::vector<double> ttft, tpot, input_lens, served_output_lens;
  int64_t input_tokens = 0, output_tokens = 0;
  for (auto& h : handles) {
    engine::StreamEvent e;
    do e = h.stream->next(); while (!e.finished);
    if (!e.metrics) continue;
    ttft.push_back(e.metrics->ttft_s);
    if (e.metrics->num_output_tokens > 1) tpot.push_back(e.metrics->tpot_s);
    input_tokens += e.metrics->num_prompt_tokens;
    output_tokens += e.metrics->num_output_tokens;
    input_lens.push_back(e.metrics->num_prompt_tokens);
    served_output_lens.push_back(e.metrics->num_output_tokens);
  }
  const engine::EngineStats st = engine.stats();
  const Percentiles t1 = percentiles(ttft), t2 = percentiles(tpot);
  const LengthStats lengths = length_stats(input_lens, served_output_lens);
  j["device"] = device;
  add_lengths(j, lengths);
  j["elapsed_s"] = elapsed;
  j["input_tokens"] = input_tokens;
  j["output_tokens"] = output_tokens;
  j["output_tokens_per_s"] = double(output_tokens) / elapsed;
  j["total_tokens_per_s"] = double(input_tokens + output_tokens) / elapsed;
  j["steps"] = st.scheduler.num_steps;
  j["mean_tokens_per_step"] = st.scheduler.num_steps ? double(st.scheduler.num_scheduled_tokens) / double(st.scheduler.num_steps) : 0.0;
  j["preemptions"] = st.scheduler.num_preemptions;
  // Host cost per step (engine thread wall time) and the device's idle share: what the engine
  // spends between the device's steps (DESIGN.md: the GPU should never wait for the host).
  const double steps = double(std::max<int64_t>(st.scheduler.num_steps, 1));
  const engine::StepHostTime& ht = st.host_time;
  j["host_ms_per_step"] = {{"schedule", ht.schedule_s / steps * 1e3}, {"prepare_sampling", ht.prepare_s / steps * 1e3},
                           {"backend", ht.backend_s / steps * 1e3}, {"finish", ht.finish_s / steps * 1e3}};
  if (st.device_busy_s) {
    j["device_busy_ms_per_step"] = *st.device_busy_s / steps * 1e3;
    j["device_idle_fraction"] = ht.total_s() > 0 ? 1.0 - *st.device_busy_s / ht.total_s() : 0.0;
  }
  j["prefix_hit_rate"] = st.kv.num_query_tokens ? double(st.kv.num_hit_tokens) / double(st.kv.num_query_tokens) : 0.0;
  j["draft_tokens"] = st.scheduler.num_draft_tokens;
  j["draft_acceptance_rate"] = st.scheduler.num_draft_tokens ? double(st.scheduler.num_accepted_tokens) / double(st.scheduler.num_draft_tokens) : 0.0;
  for (const auto& [name, p] : {std::pair{"ttft_s", t1}, std::pair{"tpot_s", t2}})
    j[name] = {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}};

  std::printf("%-24s %12s\n", "device", device.c_str());
  std::printf("%-24s %12zu\n", "requests", prompts.size());
  std::printf("%-24s %12.3f\n", "elapsed (s)", elapsed);
  std::printf("%-24s %12s\n", "length mix", j["length_mix"].get<std::string>().c_str());
  std::printf("%-24s %12lld / %lld\n", "input / output tokens", (long long)input_tokens, (long long)output_tokens);
  print_lengths(lengths);
  std::printf("%-24s %12.1f\n", "output tokens/s", double(output_tokens) / elapsed);
  std::printf("%-24s %12.1f\n", "total tokens/s", double(input_tokens + output_tokens) / elapsed);
  std::printf("%-24s %12lld\n", "steps", (long long)st.scheduler.num_steps);
  std::printf("%-24s %12.1f\n", "mean tokens/step", j["mean_tokens_per_step"].get<double>());
  std::printf("%-24s %12lld\n", "preemptions", (long long)st.scheduler.num_preemptions);
  std::printf("%-24s %8.3f schedule  %8.3f sampling plan  %8.3f backend  %8.3f finish\n", "host ms/step",
              ht.schedule_s / steps * 1e3, ht.prepare_s / steps * 1e3, ht.backend_s / steps * 1e3,
              ht.finish_s / steps * 1e3);
  if (st.device_busy_s)
    std::printf("%-24s %8.3f busy ms/step, idle %.1f%% of the engine's step time\n", "device",
                *st.device_busy_s / steps * 1e3, 100.0 * j["device_idle_fraction"].get<double>());
  std::printf("%-24s %12.3f\n", "prefix hit rate", j["prefix_hit_rate"].get<double>());
  std::printf("%-24s %12.3f\n", "draft acceptance", j["draft_acceptance_rate"].get<double>());
  std::printf("%-24s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50", "p90", "p99");
  for (const auto& [name, p] : {std::pair{"TTFT", t1}, std::pair{"TPOT", t2}})
    std::printf("%-24s %10.2f %10.2f %10.2f %10.2f\n", name, p.mean * 1e3, p.p50 * 1e3, p.p90 * 1e3, p.p99 * 1e3);
  write_json(flags, j);
  return 0;
}

}  // namespace xy::cli
