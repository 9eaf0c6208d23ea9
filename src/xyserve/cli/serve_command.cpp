// `xyserve serve`: loads a model, starts the engine thread and the OpenAI-compatible HTTP
// server on a few I/O threads, and runs until SIGTERM or SIGINT, which stop accepting, let
// in-flight requests finish, and exit 0. Flag names are vLLM's.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/cli/commands.h"
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
  f.add("max-num-batched-tokens", "N", "2048", "token budget of one step");
  f.add("max-num-seqs", "N", "256", "most requests in one step");
  f.add("block-size", "N", "16", "tokens per KV cache block");
  f.add("num-kv-blocks", "N", "", "KV cache blocks (default: from --kv-cache-memory)");
  f.add("kv-cache-memory", "BYTES", "1073741824", "KV cache budget in bytes, when --num-kv-blocks is not given");
  f.add_bool("enable-prefix-caching", true, "reuse the KV of shared prompt prefixes", /*negatable=*/true);
  f.add("scheduling-policy", "decode-first|prefill-first", "decode-first", "what a step serves first");
  f.add("speculative-method", "none|ngram", "none", "speculative decoding drafter");
  f.add("num-speculative-tokens", "N", "0", "draft tokens per verify step");
  f.add("max-num-choices", "N", "16", "most choices (`n`) per request");
  f.add("max-request-body-bytes", "N", "33554432", "larger request bodies get 413");
  f.add("io-threads", "N", "2", "threads running the HTTP I/O");
  f.add("threads", "N", "0", "CPU backend threads; 0 uses every core");
  f.add("device", "auto|cpu", "auto", "where to run (the CUDA backend is not wired in yet)");
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
  const std::string device = flags.get("device");
  if (device != "auto" && device != "cpu")
    throw InvalidArgument(cat("serve: --device ", device, " is not available (auto|cpu)"));
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

  engine::EngineConfig ec;
  ec.scheduler.max_num_batched_tokens = positive_int(flags, "max-num-batched-tokens");
  ec.scheduler.max_num_seqs = positive_int(flags, "max-num-seqs");
  ec.scheduler.max_model_len = int32_t(max_model_len);
  const std::string policy = flags.get("scheduling-policy");
  if (policy == "decode-first") ec.scheduler.policy = sched::SchedulingPolicy::kDecodeFirst;
  else if (policy == "prefill-first") ec.scheduler.policy = sched::SchedulingPolicy::kPrefillFirst;
  else throw InvalidArgument(cat("serve: --scheduling-policy ", policy, " (decode-first|prefill-first)"));
  const std::string spec = flags.get("speculative-method");
  if (spec == "ngram") ec.speculative_method = engine::SpeculativeMethod::kNgram;
  else if (spec != "none") throw InvalidArgument(cat("serve: --speculative-method ", spec, " (none|ngram)"));
  ec.scheduler.num_speculative_tokens = int32_t(flags.get_int("num-speculative-tokens"));
  ec.enable_prefix_caching = flags.get_bool("enable-prefix-caching");
  for (int64_t id : mc.eos_token_ids) ec.eos_token_ids.push_back(int32_t(id));
  for (int32_t id : tokenizer->eos_token_ids())
    if (std::find(ec.eos_token_ids.begin(), ec.eos_token_ids.end(), id) == ec.eos_token_ids.end())
      ec.eos_token_ids.push_back(id);

  backend::cpu::CpuBackendOptions bo;
  bo.block_size = positive_int(flags, "block-size");
  bo.num_threads = int32_t(flags.get_int("threads"));
  if (auto n = flags.get_optional_int("num-kv-blocks")) {
    if (*n < 1 || *n > INT32_MAX) throw InvalidArgument(cat("serve: --num-kv-blocks must be >= 1; found ", *n));
    bo.num_kv_blocks = int32_t(*n);
  } else {
    cache::KvCacheShape shape;
    shape.num_layers = mc.num_layers;
    shape.num_kv_heads = mc.num_kv_heads;
    shape.head_dim = mc.head_dim;
    shape.block_size = bo.block_size;
    shape.dtype = DType::kF32;  // the CPU backend keeps KV in fp32
    const int32_t budget_blocks = cache::num_blocks_for_budget(shape, flags.get_int("kv-cache-memory"));
    // No more than every running request at full length could use.
    const int64_t useful = int64_t(ec.scheduler.max_num_seqs) * ((max_model_len + bo.block_size - 1) / bo.block_size);
    bo.num_kv_blocks = int32_t(std::min<int64_t>(budget_blocks, useful));
  }
  backend::cpu::CpuBackend backend(*weights, bo);
  weights.reset();  // the backend holds its own fp32 copy
  engine::Engine engine(backend, tokenizer.get(), ec);

  server::ApiConfig api;
  api.served_model_names = split_names(flags.get("served-model-name"));
  if (api.served_model_names.empty()) api.served_model_names.push_back(model_dir);
  api.model_root = model_dir;
  api.api_key = flags.get("api-key");
  api.max_model_len = max_model_len;
  api.num_kv_blocks = bo.num_kv_blocks;
  api.limits.max_n = positive_int(flags, "max-num-choices");
  api.limits.vocab_size = backend.vocab_size();
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

  engine.start();
  http.start();
  std::fprintf(stderr, "xyserve: model %s, %d KV blocks of %d tokens, max_model_len %lld\n", model_dir.c_str(),
               bo.num_kv_blocks, bo.block_size, static_cast<long long>(max_model_len));
  std::fprintf(stderr, "listening on %s:%u\n", ho.host.c_str(), unsigned(http.port()));
  std::fflush(stderr);

  // SIGTERM / SIGINT: stop accepting, let in-flight responses complete, then stop.
  boost::asio::signal_set signals(ioc, SIGINT, SIGTERM);
  boost::asio::steady_timer poll(ioc);
  std::function<void()> wait_drained = [&] {
    if (http.num_sessions() == 0 && app.num_active() == 0) {
      ioc.stop();
      return;
    }
    poll.expires_after(std::chrono::milliseconds(20));
    poll.async_wait([&](const boost::system::error_code&) { wait_drained(); });
  };
  signals.async_wait([&](const boost::system::error_code& err, int signo) {
    if (err) return;
    std::fprintf(stderr, "xyserve: signal %d: draining %lld in-flight requests\n", signo,
                 static_cast<long long>(app.num_active()));
    app.set_draining();
    http.begin_drain();
    wait_drained();
  });

  const int32_t num_io = std::max<int32_t>(1, int32_t(flags.get_int("io-threads")));
  std::vector<std::thread> io_threads;
  for (int32_t i = 1; i < num_io; ++i) io_threads.emplace_back([&ioc] { ioc.run(); });
  ioc.run();
  for (auto& t : io_threads) t.join();
  engine.stop();
  std::fprintf(stderr, "xyserve: stopped\n");
  return 0;
}

}  // namespace xy::cli
