// The OpenAI server over an engine that dies (a CUDA error, a lost node): the requests in
// flight get the error (a non-streaming one as a 500 OpenAI error body, a streaming one as an
// error event in the same shape, then [DONE]), later requests get 503, /health answers 503,
// and /metrics counts the failed requests as failures, not successes. The server runs in this process, on a free loopback port, over FailingBackend
// (tests/support), since the real binary has no way to inject a fault.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "engine/tiny_model.h"
#include "support/failing_backend.h"
#include "tokenizer/reference_data.h"
#include "xyserve/server/api_server.h"
#include "xyserve/server/http_server.h"

namespace xy::server {
namespace {

namespace http = boost::beast::http;
using boost::asio::ip::tcp;
using nlohmann::json;

const std::string kCause = "node 1 (10.0.0.2:29500) failed: connection reset by peer";
const std::string kMessage = "engine failed: " + kCause;

struct Reply {
  int status = 0;
  std::string body;
};

// One request on its own connection; reads the whole response (a stream until it ends).
Reply send_request(uint16_t port, http::verb method, const std::string& target, const std::string& body) {
  boost::asio::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();
  http::write(socket, req);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return Reply{int(res.result_int()), res.body()};
}

// The data of each SSE event, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    const std::string event = body.substr(at, end == std::string::npos ? std::string::npos : end - at);
    if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
    if (end == std::string::npos) break;
    at = end + 2;
  }
  return out;
}

void expect_engine_error(const json& j, const std::string& what) {
  ASSERT_TRUE(j.contains("error")) << what << ": " << j.dump();
  EXPECT_EQ(j["error"]["message"], kMessage) << what;
  EXPECT_EQ(j["error"]["type"], "server_error") << what;
  EXPECT_EQ(j["error"]["code"], "engine_failed") << what;
}

TEST(EngineFailureServerTest, InFlightRequestsGetTheErrorLaterOnes503AndHealthTurnsUnhealthy) {
  const auto tok = tokenizer::Tokenizer::load(tokenizer::testing::tokenizer_dir("qwen2_5"));
  auto inner = xy::testing::tiny_backend("llama");
  // Two steps run (two tokens each), the third fails.
  xy::testing::FailingBackend backend(*inner, xy::testing::FailingBackend::at_call(2),
                                      std::make_exception_ptr(std::runtime_error(kCause)));
  engine::Engine engine(backend, tok.get(), {});

  ApiConfig api;
  api.served_model_names = {"tiny"};
  api.model_root = "tiny";
  api.max_model_len = 1024;
  api.num_kv_blocks = backend.num_kv_blocks();
  api.limits.vocab_size = backend.vocab_size();
  OpenAiServer app(engine, *tok, std::nullopt, api);

  // The engine starts once both generation requests were submitted (handle() submits before
  // it returns), so both are in flight when its third step fails, whatever the timing.
  std::atomic<int> num_generations{0};
  boost::asio::io_context ioc;
  HttpServerOptions options;
  options.port = 0;
  HttpServer http_server(ioc, options, [&](std::shared_ptr<Exchange> exchange) {
    const bool generation = exchange->request().target == "/v1/completions";
    app.handle(exchange);
    if (generation && ++num_generations == 2) engine.start();
  });
  http_server.start();
  std::thread io([&ioc] { ioc.run(); });  // one I/O thread: the handler above runs on it alone
  // Stops everything however the test ends (a failed parse throws out of the test body).
  bool stopped = false;
  auto stop = [&] {
    if (std::exchange(stopped, true)) return;
    ioc.stop();
    io.join();
    engine.stop();
  };
  struct AtExit {
    std::function<void()> run;
    ~AtExit() { run(); }
  } at_exit{stop};
  const uint16_t port = http_server.port();

  const json prompt = {{"model", "tiny"}, {"prompt", {1, 2, 3, 4, 5}}, {"max_tokens", 50}, {"temperature", 0}};
  json streaming = prompt;
  streaming["stream"] = true;
  auto plain_reply = std::async(std::launch::async, [&] {
    return send_request(port, http::verb::post, "/v1/completions", prompt.dump());
  });
  auto stream_reply = std::async(std::launch::async, [&] {
    return send_request(port, http::verb::post, "/v1/completions", streaming.dump());
  });

  const Reply plain = plain_reply.get();
  EXPECT_EQ(plain.status, 500) << plain.body;
  expect_engine_error(json::parse(plain.body), "non-streaming response");

  const Reply stream = stream_reply.get();
  EXPECT_EQ(stream.status, 200) << "the stream had begun";
  const std::vector<std::string> events = sse_data(stream.body);
  ASSERT_GE(events.size(), 2u) << stream.body;
  EXPECT_EQ(events.back(), "[DONE]");
  expect_engine_error(json::parse(events[events.size() - 2]), "the stream's error event");
  for (size_t i = 0; i + 2 < events.size(); ++i) {  // text chunks of the two tokens, none finished
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion") << events[i];
    EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null()) << events[i];
  }

  const Reply later = send_request(port, http::verb::post, "/v1/completions", prompt.dump());
  EXPECT_EQ(later.status, 503) << later.body;
  {
    const json j = json::parse(later.body);
    EXPECT_EQ(j["error"]["message"], kMessage);
    EXPECT_EQ(j["error"]["type"], "server_error");
  }
  const Reply health = send_request(port, http::verb::get, "/health", "");
  EXPECT_EQ(health.status, 503);
  EXPECT_NE(health.body.find(kMessage), std::string::npos) << health.body;

  // Both in-flight requests failed (the 503 never reached the engine); none succeeded, so no
  // tokens are counted either.
  const Reply metrics = send_request(port, http::verb::get, "/metrics", "");
  EXPECT_EQ(metrics.status, 200);
  for (const char* line : {"xyserve:request_failure_total{model_name=\"tiny\",finished_reason=\"error\"} 2\n",
                           "xyserve:request_success_total{model_name=\"tiny\",finished_reason=\"stop\"} 0\n",
                           "xyserve:request_success_total{model_name=\"tiny\",finished_reason=\"length\"} 0\n",
                           "xyserve:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"} 0\n",
                           "xyserve:prompt_tokens_total{model_name=\"tiny\"} 0\n",
                           "xyserve:generation_tokens_total{model_name=\"tiny\"} 0\n"})
    EXPECT_NE(metrics.body.find(line), std::string::npos) << line << "in\n" << metrics.body;

  stop();
  EXPECT_EQ(backend.num_calls(), 3) << "the backend ran after the failed step";
}

}  // namespace
}  // namespace xy::server
