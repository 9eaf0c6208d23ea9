// Prometheus metrics of the server, named as vLLM names them (docs.vllm.ai, "Production
// Metrics") under an `xyserve:` prefix, so that dashboards and routers built for vLLM read
// them with one rename. Rendered in the Prometheus text exposition format 0.0.4
// (prometheus.io/docs/instrumenting/exposition_formats).
//
// Thread safety: every method is thread-safe (one mutex; observations are a few additions).
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace xy::server {

// A cumulative histogram: `le` buckets (upper bounds, ascending, +Inf implied), sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative counts, one per bound, then the +Inf bucket (== count()).
  std::vector<uint64_t> cumulative() const;
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last is (last bound, +Inf)
  double sum_ = 0;
  uint64_t count_ = 0;
};

// What the engine reports at the moment of a scrape.
struct EngineGauges {
  int64_t num_running = 0;
  int64_t num_waiting = 0;
  double kv_cache_usage = 0;  // fraction of KV blocks in use, [0, 1]
  int64_t prefix_cache_queries = 0;  // tokens looked up (counter)
  int64_t prefix_cache_hits = 0;     // of those, found (counter)
  int64_t num_draft_tokens = 0;      // counter
  int64_t num_accepted_tokens = 0;   // counter
  int64_t num_preemptions = 0;       // counter
};

// One request that finished without an error, as the metrics see it.
struct FinishedRequest {
  std::string_view finished_reason;  // "stop", "length", "abort" (never "error")
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
  double ttft_s = 0;
  double tpot_s = 0;  // 0 when fewer than 2 output tokens (not observed then)
  double e2e_s = 0;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(std::string model_name);

  void record(const FinishedRequest& request);
  // A request that ended with an error (xyserve:request_failure_total{finished_reason}); today
  // the only reason is "error", the engine died under it. Such a request has no timing and its
  // tokens are not counted: it adds to no other metric.
  void record_failure(std::string_view finished_reason);
  // HTTP responses by status, for error accounting (xyserve:http_responses_total{status}).
  void record_http_status(int status);

  // The whole exposition text.
  std::string render(const EngineGauges& gauges) const;

 private:
  const std::string model_name_;
  mutable std::mutex mu_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  int64_t success_stop_ = 0, success_length_ = 0, success_abort_ = 0;
  int64_t failure_error_ = 0;
  std::vector<std::pair<int, int64_t>> http_statuses_;  // few distinct statuses: a flat list
  Histogram ttft_, tpot_, e2e_;
};

// Escapes a label value as the text format requires (backslash, quote, newline).
std::string escape_label_value(std::string_view value);

}  // namespace xy::server
