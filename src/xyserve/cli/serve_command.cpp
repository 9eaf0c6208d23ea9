// `xyserve serve`: loads a model, starts the engine thread and the OpenAI-compatible HTTP
// server on a few I/O threads, and runs until SIGTERM or SIGINT, which stop accepting, let
// in-flight requests finish, and exit 0. Flag names are vLLM's.
//
// When the engine dies (a failed step: CUDA error, lost node; engine.h), the requests in flight
// are answered with the error, the server stops accepting and exits 1, so that a supervisor
// restarts it: the device's state is unknown after such an error, as vLLM's EngineDeadError
// handling assumes too.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "xyserve/cli/commands.h"
#include "xyserve/cli/engine_setup.h"
#include "xyserve/cli/flags.h"
#include "xyserve/common/error.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/weights.h"
#include "xyserve/server/http_server.h"
#include "xyserve/server/api_server.h"
#include "xyserve/tokenizer/chat/chat_template.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::cli {
namespace {

FlagSet serve_flags() {
  FlagSet f("serve", "Serves a Hugging Face model directory over the OpenAI API (HTTP, SSE).");
  f.add("model", "DIR", "", "model directory (config.json, *.safetensors, tokenizer.json)");
  f.add("host", "ADDR", "127.0.0.1", "address to bind (loopback by default)");
  f.add("port", "N", "8000", "port to bind; 0 picks a free one (printed at start-up)");
  f.add("api-key", "KEY", "", "require `Authorization: Bearer KEY` on /v1 endpoints");
  f.add("served-model-name", "NAME", "", "model name(s) in the API, comma-separated (default: --model)");
  f.add("max-model-len", "N", "", "longest prompt + output in tokens (default: the model's context)");
  f.add("max-num-choices", "N", "16", "most choices (`n`) per request");
  f.add("max-request-body-bytes", "N", "33554432", "larger request bodies get 413");
  f.add("io-threads", "N", "2", "threads running the HTTP I/O");
  add_engine_flags(f);
  return f;
}

// 2,000 concurrent clients need more descriptors than the usual soft limit of 1,024.
void raise_fd_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
}

std::vector<std::string> split_names(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(',', start), s.size());
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int32_t positive_int(const FlagSet& flags, const std::string& name) {
  const int64_t v = flags.get_int(name);
  if (v < 1 || v > INT32_MAX) throw InvalidArgument(cat("serve: --", name, " must be in [1, 2^31); found ", v));
  return int32_t(v);
}

}  // namespace

int run_serve(const std::vector<std::string>& args) {
  FlagSet flags = serve_flags();
  flags.parse(args);
  if (flags.help_requested()) {
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  const std::string model_dir = flags.require("model");
  const int64_t port = flags.get_int("port");
  if (port < 0 || port > 65535) throw InvalidArgument(cat("serve: --port must be in [0, 65535]; found ", port));

  // Everything that can fail on the model or the flags fails here, before binding.
  auto tokenizer = tokenizer::Tokenizer::load(model_dir);
  std::optional<chat::ChatTemplate> chat_template;
  if (!tokenizer->chat_template().empty()) {
    try {
      chat_template = chat::ChatTemplate::parse(tokenizer->chat_template());
    } catch (const Error& e) {
      throw ModelError(cat(model_dir, "/tokenizer_config.json: chat_template: ", e.what()));
    }
  }
  auto weights = model::load_model(model_dir);
  const model::ModelConfig& mc = weights->config;

  int64_t max_model_len = mc.max_position_embeddings;
  if (auto v = flags.get_optional_int("max-model-len")) {
    if (*v < 2 || *v > mc.max_position_embeddings)
      throw InvalidArgument(cat("serve: --max-model-len ", *v, " must be in [2, ", mc.max_position_embeddings,
                                "] (config.json max_position_embeddings)"));
    max_model_len = *v;
  }

  engine::EngineConfig ec = engine_config_from_flags(flags, "serve", mc, tokenizer.get());
  ec.scheduler.max_model_len = int32_t(max_model_len);
  BackendRequest want;
  // No more KV than every running request at full length could use.
  const int64_t block_size = kv_block_size(flags, "serve");
  want.blocks_useful = int64_t(ec.scheduler.max_num_seqs) * ((max_model_len + block_size - 1) / block_size);
  want.max_num_tokens = ec.scheduler.max_num_batched_tokens;
  // A node other than 0 of a multi-node group serves nothing itself: it runs node 0's steps.
  if (is_worker_node(flags)) return run_worker_node(flags, "serve", *weights, want);
  std::string device;
  auto backend = make_backend(flags, "serve", *weights, want, &device);
  weights.reset();  // each backend holds its own copy of the weights
  engine::Engine engine(*backend, tokenizer.get(), ec);

  server::ApiConfig api;
  api.served_model_names = split_names(flags.get("served-model-name"));
  if (api.served_model_names.empty()) api.served_model_names.push_back(model_dir);
  api.model_root = model_dir;
  api.api_key = flags.get("api-key");
  api.max_model_len = max_model_len;
  api.num_kv_blocks = backend->num_kv_blocks();
  api.limits.max_n = positive_int(flags, "max-num-choices");
  api.limits.vocab_size = backend->vocab_size();
  server::OpenAiServer app(engine, *tokenizer, std::move(chat_template), api);

  raise_fd_limit();
  boost::asio::io_context ioc;
  server::HttpServerOptions ho;
  ho.host = flags.get("host");
  ho.port = uint16_t(port);
  ho.max_body_bytes = uint64_t(flags.get_int("max-request-body-bytes"));
  server::HttpServer http(
      ioc, ho, [&app](std::shared_ptr<server::Exchange> ex) { app.handle(ex); },
      [&app](int status) { app.record_http_status(status); });

  // Runs on the engine thread: the stop itself happens on the I/O threads.
  std::function<void(const std::string&)> on_engine_failure;
  engine.set_failure_listener([&ioc, &on_engine_failure](const std::string& message) {
    boost::asio::post(ioc, [&on_engine_failure, message] { on_engine_failure(message); });
  });
  engine.start();
  // The engine thread posts to ioc (its failure listener): it must end before ioc does, also when
  // something below throws. Declared after ioc, so destroyed first; stop() is idempotent.
  struct EngineStopper {
    engine::Engine& engine;
    ~EngineStopper() { engine.stop(); }
  } stop_engine_first{engine};
  http.start();
  std::fprintf(stderr, "xyserve: model %s on %s, %d KV blocks of %d tokens, max_model_len %lld\n",
               model_dir.c_str(), device.c_str(), backend->num_kv_blocks(), backend->block_size(),
               static_cast<long long>(max_model_len));
  std::fprintf(stderr, "listening on %s:%u\n", ho.host.c_str(), unsigned(http.port()));
  std::fflush(stderr);

  // Both ways to stop come here, and the first one wins: stop accepting, let in-flight
  // responses complete (or give up after `grace`), then stop the I/O threads.
  boost::asio::steady_timer poll(ioc);
  std::atomic<bool> stopping{false};
  std::chrono::steady_clock::time_point give_up;  // written before wait_drained first runs
  std::function<void()> wait_drained = [&] {
    if ((http.num_sessions() == 0 && app.num_active() == 0) || std::chrono::steady_clock::now() >= give_up) {
      ioc.stop();
      return;
    }
    poll.expires_after(std::chrono::milliseconds(20));
    poll.async_wait([&](const boost::system::error_code&) { wait_drained(); });
  };
  auto begin_stop = [&](std::optional<std::chrono::steady_clock::duration> grace) {
    if (stopping.exchange(true)) return;
    give_up = grace ? std::chrono::steady_clock::now() + *grace : std::chrono::steady_clock::time_point::max();
    app.set_draining();
    http.begin_drain();
    wait_drained();
  };
  // SIGTERM / SIGINT: in-flight requests run to their end, however long that takes.
  boost::asio::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& err, int signo) {
    if (err) return;
    std::fprintf(stderr, "xyserve: signal %d: draining %lld in-flight requests\n", signo,
                 static_cast<long long>(app.num_active()));
    begin_stop(std::nullopt);
  });
  // A dead engine: its requests already finished with the error, so what is left is writing
  // those responses, which takes milliseconds unless a client stopped reading.
  constexpr auto kFailureGrace = std::chrono::seconds(10);
  on_engine_failure = [&](const std::string& message) {
    std::fprintf(stderr, "xyserve: engine failed: %s; answering %lld in-flight requests with the error, then exiting 1\n",
                 message.c_str(), static_cast<long long>(app.num_active()));
    std::fflush(stderr);
    begin_stop(kFailureGrace);
  };

  const int32_t num_io = std::max<int32_t>(1, int32_t(flags.get_int("io-threads")));
  std::vector<std::thread> io_threads;
  for (int32_t i = 1; i < num_io; ++i) io_threads.emplace_back([&ioc] { ioc.run(); });
  ioc.run();
  for (auto& t : io_threads) t.join();
  engine.stop();
  if (std::optional<std::string> failure = engine.failure()) {
    std::fprintf(stderr, "error: %s\n", failure->c_str());
    return 1;
  }
  std::fprintf(stderr, "xyserve: stopped\n");
  return 0;
}

}  // namespace xy::cli
