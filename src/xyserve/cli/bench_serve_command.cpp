// `xyserve bench serve`: a serving benchmark against any OpenAI-compatible server (only standard
// /v1/completions fields; ignore_eos only when asked). Requests arrive as a Poisson process at
// --request-rate (or all at once for inf), at most --max-concurrency in flight, each streamed
// over SSE with Boost.Beast; TTFT, TPOT, ITL and end-to-end latency percentiles and throughput
// go to a table on stdout and, with --json, to a file. Metric definitions follow vLLM's
// benchmark_serving (TPOT = (e2e - TTFT) / (output tokens - 1); ITL = gaps between chunks).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "xyserve/cli/commands.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/error.h"

namespace xy::cli {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct BenchRequest {
  std::string prompt;
  int32_t max_tokens = 16;
};

struct BenchResult {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  std::vector<double> itl;
  int64_t output_tokens = 0;
};

FlagSet bench_flags() {
  FlagSet f("bench serve", "Benchmarks an OpenAI-compatible server with streamed /v1/completions.");
  f.add("base-url", "URL", "http://127.0.0.1:8000", "server address (http only)");
  f.add("model", "NAME", "", "model name to send (default: the first of /v1/models)");
  f.add("dataset", "random|FILE", "random", "random prompts, or a ShareGPT-style JSON file");
  f.add("num-prompts", "N", "100", "requests to send");
  f.add("request-rate", "R|inf", "inf", "Poisson arrival rate in requests/s; inf sends all at once");
  f.add("max-concurrency", "C", "64", "most requests in flight");
  f.add("random-input-len", "N", "128", "random dataset: prompt length in words");
  f.add("random-output-len", "N", "32", "random dataset (and ShareGPT cap): max_tokens");
  f.add_bool("ignore-eos", false, "send ignore_eos (a vLLM extension) so each request generates max_tokens");
  f.add("seed", "N", "0", "seed of the dataset and arrivals");
  f.add("json", "FILE", "", "write the results as JSON");
  return f;
}

struct Url {
  std::string host, port, prefix;
};

Url parse_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) throw InvalidArgument(cat("bench serve: --base-url must start with http://; found ", url));
  std::string rest = url.substr(scheme.size());
  Url u;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    u.prefix = rest.substr(slash);
    rest.resize(slash);
  }
  while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  const size_t colon = rest.rfind(':');
  u.host = colon == std::string::npos ? rest : rest.substr(0, colon);
  u.port = colon == std::string::npos ? "80" : rest.substr(colon + 1);
  return u;
}

std::vector<BenchRequest> make_dataset(const FlagSet& flags, std::mt19937_64& rng) {
  const int64_t n = flags.get_int("num-prompts");
  const int32_t out_len = int32_t(flags.get_int("random-output-len"));
  std::vector<BenchRequest> out;
  const std::string dataset = flags.get("dataset");
  if (dataset == "random") {
    static const char* kWords[] = {"alpha", "river", "stone", "cloud", "seven", "green", "light", "paper",
                                   "music", "table", "north", "quiet", "market", "silver", "garden", "window"};
    const int64_t in_len = flags.get_int("random-input-len");
    for (int64_t i = 0; i < n; ++i) {
      BenchRequest r;
      for (int64_t w = 0; w < in_len; ++w) r.prompt += std::string(w ? " " : "") + kWords[rng() % 16];
      r.max_tokens = out_len;
      out.push_back(std::move(r));
    }
    return out;
  }
  // ShareGPT: [{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}].
  std::ifstream in(dataset);
  if (!in) throw InvalidArgument(cat("bench serve: cannot read --dataset ", dataset));
  Json j;
  try {
    j = Json::parse(in);
  } catch (const std::exception& e) {
    throw InvalidArgument(cat("bench serve: ", dataset, ": not JSON: ", e.what()));
  }
  if (!j.is_array()) throw InvalidArgument(cat("bench serve: ", dataset, ": expected a list of conversations"));
  for (const Json& conv : j) {
    const Json* turns = conv.contains("conversations") ? &conv["conversations"] : nullptr;
    if (!turns || !turns->is_array() || turns->empty() || !(*turns)[0].contains("value") || !(*turns)[0]["value"].is_string())
      continue;
    BenchRequest r;
    r.prompt = (*turns)[0]["value"].get<std::string>();
    r.max_tokens = out_len;
    if (turns->size() > 1 && (*turns)[1].contains("value") && (*turns)[1]["value"].is_string()) {
      // Output length ~ the reference answer's, about 4 characters per token, capped.
      r.max_tokens = int32_t(std::clamp<size_t>((*turns)[1]["value"].get<std::string>().size() / 4, 4, size_t(out_len)));
    }
    if (!r.prompt.empty()) out.push_back(std::move(r));
  }
  if (out.empty()) throw InvalidArgument(cat("bench serve: ", dataset, ": no conversation with a first turn"));
  std::shuffle(out.begin(), out.end(), rng);
  std::vector<BenchRequest> picked;
  for (int64_t i = 0; i < n; ++i) picked.push_back(out[size_t(i) % out.size()]);
  return picked;
}

std::string first_model(const Url& u) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  net::ip::tcp::resolver resolver(ioc);
  stream.connect(resolver.resolve(u.host, u.port));
  http::request<http::empty_body> req(http::verb::get, u.prefix + "/v1/models", 11);
  req.set(http::field::host, u.host);
  http::write(stream, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(stream, buf, res);
  const Json j = Json::parse(res.body());
  return j.at("data").at(0).at("id").get<std::string>();
}

// One streamed completion; timings from the send.
BenchResult run_one(const Url& u, const std::string& model, const BenchRequest& r, bool ignore_eos) {
  BenchResult out;
  try {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    net::ip::tcp::resolver resolver(ioc);
    stream.connect(resolver.resolve(u.host, u.port));
    Json body = {{"model", model}, {"prompt", r.prompt}, {"max_tokens", r.max_tokens}, {"stream", true},
                 {"temperature", 0.0}};
    if (ignore_eos) body["ignore_eos"] = true;
    http::request<http::string_body> req(http::verb::post, u.prefix + "/v1/completions", 11);
    req.set(http::field::host, u.host);
    req.set(http::field::content_type, "application/json");
    req.body() = body.dump();
    req.prepare_payload();
    const auto t0 = Clock::now();
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);
    http::read_header(stream, buf, parser);
    if (parser.get().result_int() != 200) {
      out.error = cat("HTTP ", parser.get().result_int());
      return out;
    }
    std::string pending;
    char chunk[8192];
    auto last = t0;
    bool done = false;
    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof chunk;
      beast::error_code ec;
      http::read_some(stream, buf, parser, ec);  // whatever arrived: one SSE event is timed on arrival
      if (ec && ec != http::error::need_buffer) throw beast::system_error(ec);
      pending.append(chunk, sizeof chunk - parser.get().body().size);
      size_t at;
      while ((at = pending.find("\n\n")) != std::string::npos) {
        const std::string event = pending.substr(0, at);
        pending.erase(0, at + 2);
        if (event.rfind("data: ", 0) != 0) continue;
        const std::string data = event.substr(6);
        if (data == "[DONE]") {
          done = true;
          continue;
        }
        const Json j = Json::parse(data);
        if (!j.contains("choices") || j["choices"].empty()) continue;
        const Json& text = j["choices"][0]["text"];
        if (!text.is_string() || text.get<std::string>().empty()) continue;
        const auto now = Clock::now();
        if (out.output_tokens == 0) out.ttft = std::chrono::duration<double>(now - t0).count();
        else out.itl.push_back(std::chrono::duration<double>(now - last).count());
        last = now;
        ++out.output_tokens;  // one chunk per token, as servers stream (vLLM counts the same way)
      }
    }
    out.e2e = std::chrono::duration<double>(Clock::now() - t0).count();
    out.ok = done;
    if (!done) out.error = "stream ended without [DONE]";
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

struct Stats {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};

Stats stats_of(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  auto pct = [&](double p) {  // linear interpolation, as numpy.percentile
    const double at = p / 100.0 * double(v.size() - 1);
    const size_t lo = size_t(std::floor(at)), hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
  };
  s.p50 = pct(50);
  s.p90 = pct(90);
  s.p99 = pct(99);
  return s;
}

}  // namespace

// `args` are the flags after `bench serve` (cli/bench_command.cpp dispatches).
int run_bench_serve(const std::vector<std::string>& args) {
  FlagSet flags = bench_flags();
  flags.parse(args);
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  const Url url = parse_url(flags.get("base-url"));
  std::mt19937_64 rng(uint64_t(flags.get_int("seed")));
  const std::vector<BenchRequest> requests = make_dataset(flags, rng);
  const std::string rate_s = flags.get("request-rate");
  const double rate = rate_s == "inf" ? INFINITY : std::stod(rate_s);
  if (!(rate > 0)) throw InvalidArgument("bench serve: --request-rate must be > 0 or inf");
  const int64_t concurrency = flags.get_int("max-concurrency");
  if (concurrency < 1) throw InvalidArgument("bench serve: --max-concurrency must be >= 1");
  const bool ignore_eos = flags.get_bool("ignore-eos");
  const std::string model = flags.get("model").empty() ? first_model(url) : flags.get("model");

  // Poisson arrivals: exponential gaps with mean 1/rate.
  std::vector<double> arrival(requests.size(), 0.0);
  std::exponential_distribution<double> gap(std::isinf(rate) ? 1.0 : rate);
  for (size_t i = 1; i < arrival.size(); ++i) arrival[i] = arrival[i - 1] + (std::isinf(rate) ? 0.0 : gap(rng));

  std::vector<BenchResult> results(requests.size());
  std::atomic<size_t> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  const size_t num_workers = size_t(std::min<int64_t>(concurrency, int64_t(requests.size())));
  for (size_t w = 0; w < num_workers; ++w) {
    workers.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < requests.size();) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[i])));
        results[i] = run_one(url, model, requests[i], ignore_eos);
      }
    });
  }
  for (auto& t : workers) t.join();
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, tpot, itl, e2e;
  int64_t ok = 0, output_tokens = 0;
  std::string first_error;
  for (const BenchResult& r : results) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    output_tokens += r.output_tokens;
    ttft.push_back(r.ttft);
    e2e.push_back(r.e2e);
    if (r.output_tokens > 1) tpot.push_back((r.e2e - r.ttft) / double(r.output_tokens - 1));
    itl.insert(itl.end(), r.itl.begin(), r.itl.end());
  }
  const int64_t failed = int64_t(results.size()) - ok;
  std::printf("============ Serving Benchmark Result ============\n");
  std::printf("%-40s %10lld\n", "Successful requests:", static_cast<long long>(ok));
  std::printf("%-40s %10lld\n", "Failed requests:", static_cast<long long>(failed));
  if (failed) std::printf("%-40s %s\n", "First error:", first_error.c_str());
  std::printf("%-40s %10s\n", "Request rate (req/s):", rate_s.c_str());
  std::printf("%-40s %10lld\n", "Max concurrency:", static_cast<long long>(concurrency));
  std::printf("%-40s %10.2f\n", "Benchmark duration (s):", duration);
  std::printf("%-40s %10lld\n", "Total generated tokens:", static_cast<long long>(output_tokens));
  std::printf("%-40s %10.2f\n", "Request throughput (req/s):", double(ok) / duration);
  std::printf("%-40s %10.2f\n", "Output token throughput (tok/s):", double(output_tokens) / duration);
  Json j = {{"base_url", flags.get("base-url")}, {"model", model}, {"dataset", flags.get("dataset")},
            {"num_prompts", requests.size()}, {"request_rate", rate_s}, {"max_concurrency", concurrency},
            {"completed", ok}, {"failed", failed}, {"duration_s", duration}, {"total_output_tokens", output_tokens},
            {"request_throughput", double(ok) / duration}, {"output_throughput", double(output_tokens) / duration}};
  const std::pair<const char*, std::vector<double>*> kSeries[] = {{"ttft", &ttft}, {"tpot", &tpot}, {"itl", &itl}, {"e2el", &e2e}};
  for (const auto& [name, series] : kSeries) {
    const Stats s = stats_of(*series);
    std::printf("---------- %s (ms) ----------\n", name);
    std::printf("  mean %10.2f   p50 %10.2f   p90 %10.2f   p99 %10.2f\n", s.mean * 1e3, s.p50 * 1e3, s.p90 * 1e3, s.p99 * 1e3);
    j[cat("mean_", name, "_ms")] = s.mean * 1e3;
    j[cat("p50_", name, "_ms")] = s.p50 * 1e3;
    j[cat("p90_", name, "_ms")] = s.p90 * 1e3;
    j[cat("p99_", name, "_ms")] = s.p99 * 1e3;
  }
  std::printf("==================================================\n");
  if (!flags.get("json").empty()) {
    std::ofstream out(flags.get("json"));
    if (!out) throw Error(cat("bench serve: cannot write --json ", flags.get("json")));
    out << j.dump(2) << "\n";
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace xy::cli
