#include "xyserve/server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "xyserve/common/check.h"

namespace xy::server {
namespace {

// Bucket bounds as vLLM's (vllm/v1/metrics/loggers.py), so percentiles read the same.
const std::vector<double> kTtftBounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                         0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                         20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kTpotBounds = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                         0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                         7.5,  10.0,  20.0, 40.0,  80.0};
const std::vector<double> kE2eBounds = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,
                                        5.0,  10.0, 15.0, 20.0, 30.0, 40.0,  50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

// Prometheus floats: shortest round-trip form; integers without a fraction.
std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) {  // integral: no exponent
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  std::snprintf(buf, sizeof buf, "%.17g", v);
  // Prefer the shortest form that reads back exactly.
  for (int precision = 1; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof shorter, "%.*g", precision, v);
    if (std::strtod(shorter, nullptr) == v) return shorter;
  }
  return buf;
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP xyserve:";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE xyserve:";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, std::string_view name, const std::string& labels, double value) {
  out += "xyserve:";
  out += name;
  out += '{';
  out += labels;
  out += "} ";
  out += number(value);
  out += '\n';
}

void histogram(std::string& out, std::string_view name, std::string_view help,
               const std::string& labels, const Histogram& h) {
  header(out, name, "histogram", help);
  const std::vector<uint64_t> cum = h.cumulative();
  const std::string bucket = std::string(name) + "_bucket";
  for (size_t i = 0; i < h.bounds().size(); ++i)
    sample(out, bucket, labels + ",le=\"" + number(h.bounds()[i]) + "\"", double(cum[i]));
  sample(out, bucket, labels + ",le=\"+Inf\"", double(cum.back()));
  sample(out, std::string(name) + "_sum", labels, h.sum());
  sample(out, std::string(name) + "_count", labels, double(h.count()));
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  XY_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bounds must ascend");
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::observe(double value) {
  // Prometheus buckets are `le`: a value equal to a bound falls in that bound's bucket.
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[i];
  sum_ += value;
  ++count_;
}

std::vector<uint64_t> Histogram::cumulative() const {
  std::vector<uint64_t> out(counts_.size());
  uint64_t running = 0;
  for (size_t i = 0; i < counts_.size(); ++i) out[i] = running += counts_[i];
  return out;
}

std::string escape_label_value(std::string_view value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

ServerMetrics::ServerMetrics(std::string model_name)
    : model_name_(std::move(model_name)), ttft_(kTtftBounds), tpot_(kTpotBounds), e2e_(kE2eBounds) {}

void ServerMetrics::record(const FinishedRequest& r) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += r.num_prompt_tokens;
  generation_tokens_ += r.num_output_tokens;
  if (r.finished_reason == "stop") ++success_stop_;
  else if (r.finished_reason == "length") ++success_length_;
  else if (r.finished_reason == "abort") ++success_abort_;
  else XY_CHECK(false, "request_success_total has no finished_reason \"", r.finished_reason, "\"");
  // An aborted request before its first token has no TTFT; TPOT needs two tokens.
  if (r.num_output_tokens > 0) ttft_.observe(r.ttft_s);
  if (r.num_output_tokens > 1) tpot_.observe(r.tpot_s);
  e2e_.observe(r.e2e_s);
}

void ServerMetrics::record_failure(std::string_view finished_reason) {
  XY_CHECK(finished_reason == "error", "request_failure_total has no finished_reason \"",
           finished_reason, "\"");
  std::lock_guard<std::mutex> lock(mu_);
  ++failure_error_;
}

void ServerMetrics::record_http_status(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [s, n] : http_statuses_) {
    if (s == status) {
      ++n;
      return;
    }
  }
  http_statuses_.emplace_back(status, 1);
}

std::string ServerMetrics::render(const EngineGauges& g) const {
  const std::string labels = "model_name=\"" + escape_label_value(model_name_) + "\"";
  std::string out;
  out.reserve(8192);
  header(out, "num_requests_running", "gauge", "Number of requests in model execution batches.");
  sample(out, "num_requests_running", labels, double(g.num_running));
  header(out, "num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
  sample(out, "num_requests_waiting", labels, double(g.num_waiting));
  header(out, "kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
  sample(out, "kv_cache_usage_perc", labels, g.kv_cache_usage);
  header(out, "prefix_cache_queries_total", "counter", "Prefix cache queries, in tokens.");
  sample(out, "prefix_cache_queries_total", labels, double(g.prefix_cache_queries));
  header(out, "prefix_cache_hits_total", "counter", "Prefix cache hits, in tokens.");
  sample(out, "prefix_cache_hits_total", labels, double(g.prefix_cache_hits));
  header(out, "spec_decode_num_draft_tokens_total", "counter", "Draft tokens proposed and verified.");
  sample(out, "spec_decode_num_draft_tokens_total", labels, double(g.num_draft_tokens));
  header(out, "spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted.");
  sample(out, "spec_decode_num_accepted_tokens_total", labels, double(g.num_accepted_tokens));
  header(out, "num_preemptions_total", "counter", "Cumulative number of preemptions.");
  sample(out, "num_preemptions_total", labels, double(g.num_preemptions));

  std::lock_guard<std::mutex> lock(mu_);
  header(out, "prompt_tokens_total", "counter",
         "Prefill tokens processed, by the requests in request_success_total (not failed ones).");
  sample(out, "prompt_tokens_total", labels, double(prompt_tokens_));
  header(out, "generation_tokens_total", "counter",
         "Generation tokens produced, by the requests in request_success_total (not failed ones).");
  sample(out, "generation_tokens_total", labels, double(generation_tokens_));
  header(out, "request_success_total", "counter", "Requests that finished without an error, by finish reason.");
  sample(out, "request_success_total", labels + ",finished_reason=\"stop\"", double(success_stop_));
  sample(out, "request_success_total", labels + ",finished_reason=\"length\"", double(success_length_));
  sample(out, "request_success_total", labels + ",finished_reason=\"abort\"", double(success_abort_));
  // vLLM has no failure counter (its newer versions count a failed request in
  // request_success_total{finished_reason="error"}); a separate family keeps "success" true.
  header(out, "request_failure_total", "counter", "Requests that ended with an error, by reason.");
  sample(out, "request_failure_total", labels + ",finished_reason=\"error\"", double(failure_error_));
  header(out, "http_responses_total", "counter", "HTTP responses sent, by status code.");
  for (const auto& [status, n] : http_statuses_)
    sample(out, "http_responses_total", labels + ",status=\"" + std::to_string(status) + "\"", double(n));
  histogram(out, "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            labels, ttft_);
  histogram(out, "time_per_output_token_seconds", "Histogram of time per output token in seconds.",
            labels, tpot_);
  histogram(out, "e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
            labels, e2e_);
  return out;
}

}  // namespace xy::server
