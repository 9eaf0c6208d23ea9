// Routing (404/405 vs endpoints) and the Prometheus text of the metrics.
#include <random>
#include <regex>
#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "xyserve/server/metrics.h"
#include "xyserve/server/router.h"

namespace xy::server {
namespace {

TEST(Router, EveryEndpointAnswersOnlyItsMethod) {
  const struct {
    const char* method;
    const char* path;
    Endpoint endpoint;
  } kCases[] = {{"POST", "/v1/completions", Endpoint::kCompletions},
                {"POST", "/v1/chat/completions", Endpoint::kChatCompletions},
                {"GET", "/v1/models", Endpoint::kModels},
                {"GET", "/health", Endpoint::kHealth},
                {"GET", "/metrics", Endpoint::kMetrics},
                {"POST", "/tokenize", Endpoint::kTokenize},
                {"POST", "/detokenize", Endpoint::kDetokenize}};
  for (const auto& c : kCases) {
    const RouteResult ok = route(c.method, c.path);
    ASSERT_EQ(ok.status, 200) << c.path;
    EXPECT_EQ(*ok.endpoint, c.endpoint) << c.path;
    EXPECT_EQ(route(c.method, std::string(c.path) + "?a=b&c").endpoint, c.endpoint) << "query ignored";
    EXPECT_EQ(route(c.method, std::string(c.path) + "/").endpoint, c.endpoint) << "trailing slash";
    for (const char* other : {"GET", "POST", "PUT", "DELETE", "PATCH"}) {
      if (std::string(other) == c.method) continue;
      const RouteResult bad = route(other, c.path);
      EXPECT_EQ(bad.status, 405) << other << " " << c.path;
      EXPECT_EQ(bad.allow, c.method);
      EXPECT_FALSE(bad.endpoint);
    }
  }
  EXPECT_EQ(route("HEAD", "/health").status, 200);
}

TEST(Router, UnknownPathsAre404WhateverTheMethod) {
  std::mt19937 rng(7);
  const std::string alphabet = "/abcv1-_.?%";
  for (int i = 0; i < 2000; ++i) {
    std::string path = "/";
    for (int n = int(rng() % 24); n > 0; --n) path += alphabet[rng() % alphabet.size()];
    const RouteResult r = route(i % 2 ? "GET" : "POST", path);
    const std::string_view p = target_path(path);
    const bool known = p == "/v1/completions" || p == "/v1/chat/completions" || p == "/v1/models" ||
                       p == "/health" || p == "/metrics" || p == "/tokenize" || p == "/detokenize";
    if (!known) EXPECT_EQ(r.status, 404) << path;
  }
  EXPECT_EQ(route("GET", "/v1/completionsX").status, 404);
  EXPECT_EQ(route("GET", "/V1/models").status, 404) << "paths are case-sensitive";
}

TEST(Router, OnlyTheV1EndpointsNeedTheApiKey) {
  EXPECT_TRUE(needs_api_key(Endpoint::kCompletions));
  EXPECT_TRUE(needs_api_key(Endpoint::kChatCompletions));
  EXPECT_TRUE(needs_api_key(Endpoint::kModels));
  EXPECT_FALSE(needs_api_key(Endpoint::kHealth));
  EXPECT_FALSE(needs_api_key(Endpoint::kMetrics));
}

TEST(Histogram, CumulativeCountsMatchAReferenceCountOverRandomValues) {
  std::mt19937 rng(11);
  const std::vector<double> bounds = {0.01, 0.1, 0.5, 1, 2.5, 10};
  Histogram h(bounds);
  std::vector<double> values;
  std::uniform_real_distribution<double> d(0, 12);
  for (int i = 0; i < 5000; ++i) values.push_back(i % 50 == 0 ? bounds[size_t(i / 50) % bounds.size()] : d(rng));
  double sum = 0;
  for (double v : values) {
    h.observe(v);
    sum += v;
  }
  const auto cum = h.cumulative();
  ASSERT_EQ(cum.size(), bounds.size() + 1);
  for (size_t b = 0; b < bounds.size(); ++b) {
    const auto expected = std::count_if(values.begin(), values.end(), [&](double v) { return v <= bounds[b]; });
    EXPECT_EQ(cum[b], uint64_t(expected)) << "le=" << bounds[b];
  }
  EXPECT_EQ(cum.back(), values.size());
  EXPECT_NEAR(h.sum(), sum, 1e-6 * sum);
}

// Every line of the exposition is a comment (# HELP / # TYPE) or `name{labels} value`, every
// sample's family was declared with # TYPE, and histogram buckets never decrease.
TEST(ServerMetrics, RenderIsValidPrometheusTextWithVllmNames) {
  ServerMetrics m("tiny \"model\"\\x");
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    FinishedRequest f;
    f.finished_reason = i % 3 == 0 ? "stop" : i % 3 == 1 ? "length" : "abort";
    f.num_prompt_tokens = int64_t(rng() % 100);
    f.num_output_tokens = int64_t(rng() % 5);
    f.ttft_s = (rng() % 1000) / 1000.0;
    f.tpot_s = (rng() % 100) / 1000.0;
    f.e2e_s = (rng() % 5000) / 1000.0;
    m.record(f);
  }
  m.record_http_status(200);
  m.record_http_status(400);
  EngineGauges g;
  g.num_running = 3;
  g.kv_cache_usage = 0.25;
  const std::string text = m.render(g);
  const std::regex sample_re(R"(^(xyserve:[a-z0-9_]+)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\} (\S+)$)");
  std::set<std::string> typed;
  std::map<std::string, double> last_bucket;
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) {
      typed.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) continue;
    std::smatch mm;
    ASSERT_TRUE(std::regex_match(line, mm, sample_re)) << line;
    std::string family = mm[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!typed.count(family) && family.size() > strlen(suffix) && family.ends_with(suffix))
        family.resize(family.size() - strlen(suffix));
    EXPECT_TRUE(typed.count(family)) << "no # TYPE for " << line;
    if (std::string(mm[1]).ends_with("_bucket")) {
      const double v = std::stod(mm[3]);
      EXPECT_GE(v, last_bucket[family]) << line;
      last_bucket[family] = v;
    }
    ++samples;
  }
  EXPECT_GT(samples, 60);
  for (const char* name : {"xyserve:num_requests_running", "xyserve:num_requests_waiting", "xyserve:kv_cache_usage_perc",
                           "xyserve:prefix_cache_queries_total", "xyserve:prefix_cache_hits_total",
                           "xyserve:spec_decode_num_draft_tokens_total", "xyserve:spec_decode_num_accepted_tokens_total",
                           "xyserve:prompt_tokens_total", "xyserve:generation_tokens_total",
                           "xyserve:request_success_total", "xyserve:request_failure_total",
                           "xyserve:time_to_first_token_seconds_bucket", "xyserve:time_per_output_token_seconds_count",
                           "xyserve:e2e_request_latency_seconds_sum"})
    EXPECT_NE(text.find(std::string(name) + "{"), std::string::npos) << name;
  EXPECT_NE(text.find(R"(model_name="tiny \"model\"\\x")"), std::string::npos) << "label escaped";
  EXPECT_NE(text.find("xyserve:kv_cache_usage_perc{model_name=\"tiny \\\"model\\\"\\\\x\"} 0.25\n"), std::string::npos);
  // e2e is observed for every request; TTFT only with a token.
  EXPECT_NE(text.find("xyserve:e2e_request_latency_seconds_count{model_name=\"tiny \\\"model\\\"\\\\x\"} 300\n"),
            std::string::npos);
}

// A failed request (the engine died under it) is counted in request_failure_total alone: not
// as a success of any reason, not in the token totals, not in the latency histograms.
TEST(ServerMetrics, FailuresAreCountedApartFromSuccesses) {
  ServerMetrics m("tiny");
  std::mt19937 rng(5);
  int64_t num_prompt_tokens = 0, num_output_tokens = 0, num_successes = 0, num_failures = 0;
  for (int i = 0; i < 200; ++i) {
    if (rng() % 3 == 0) {
      m.record_failure("error");
      ++num_failures;
      continue;
    }
    FinishedRequest f;
    f.finished_reason = "stop";
    f.num_prompt_tokens = int64_t(rng() % 100);
    f.num_output_tokens = int64_t(1 + rng() % 5);
    f.e2e_s = 0.5;
    m.record(f);
    num_prompt_tokens += f.num_prompt_tokens;
    num_output_tokens += f.num_output_tokens;
    ++num_successes;
  }
  ASSERT_GT(num_failures, 0);
  const std::string text = m.render(EngineGauges{});
  const auto expect_sample = [&](const std::string& name, const std::string& labels, int64_t value) {
    const std::string line = "xyserve:" + name + "{model_name=\"tiny\"" + labels + "} " + std::to_string(value) + "\n";
    EXPECT_NE(text.find(line), std::string::npos) << line << "in\n" << text;
  };
  expect_sample("request_failure_total", ",finished_reason=\"error\"", num_failures);
  expect_sample("request_success_total", ",finished_reason=\"stop\"", num_successes);
  expect_sample("request_success_total", ",finished_reason=\"length\"", 0);
  expect_sample("request_success_total", ",finished_reason=\"abort\"", 0);
  expect_sample("prompt_tokens_total", "", num_prompt_tokens);
  expect_sample("generation_tokens_total", "", num_output_tokens);
  expect_sample("e2e_request_latency_seconds_count", "", num_successes);
  expect_sample("time_to_first_token_seconds_count", "", num_successes);
  EXPECT_NE(text.find("# TYPE xyserve:request_failure_total counter\n"), std::string::npos);
  // "error" is no success reason: the failure counter's sample is its only one.
  size_t num_error_samples = 0;
  for (size_t at = text.find("finished_reason=\"error\""); at != std::string::npos;
       at = text.find("finished_reason=\"error\"", at + 1))
    ++num_error_samples;
  EXPECT_EQ(num_error_samples, 1u) << text;
}

}  // namespace
}  // namespace xy::server
