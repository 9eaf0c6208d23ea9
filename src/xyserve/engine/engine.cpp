#include "xyserve/engine/engine.h"

#include <algorithm>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"

namespace xy::engine {
namespace {

double seconds(sched::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

RequestMetrics metrics_of(const sched::Request& r) {
  RequestMetrics m;
  m.num_prompt_tokens = r.num_prompt_tokens;
  m.num_output_tokens = r.num_output_tokens();
  m.num_preemptions = r.num_preemptions;
  m.num_draft_tokens = r.num_draft_tokens;
  m.num_accepted_tokens = r.num_accepted_tokens;
  m.e2e_s = seconds(sched::Clock::now() - r.arrival_time);
  if (m.num_output_tokens > 0) m.ttft_s = seconds(r.first_token_time - r.arrival_time);
  if (m.num_output_tokens > 1)
    m.tpot_s = seconds(r.last_token_time - r.first_token_time) / double(m.num_output_tokens - 1);
  return m;
}

}  // namespace

Engine::Engine(backend::Backend& backend, const tokenizer::Tokenizer* tokenizer, EngineConfig config)
    : backend_(backend), tokenizer_(tokenizer), config_(std::move(config)) {
  cache::KvCacheConfig kv;
  kv.block_size = backend.block_size();
  kv.num_blocks = config_.num_kv_blocks > 0 ? config_.num_kv_blocks : backend.num_kv_blocks();
  kv.enable_prefix_caching = config_.enable_prefix_caching;
  if (kv.num_blocks > backend.num_kv_blocks())
    throw InvalidArgument(cat("engine: num_kv_blocks ", kv.num_blocks, " exceeds the backend's ",
                              backend.num_kv_blocks()));
  if (config_.scheduler.max_num_batched_tokens < 1 || config_.scheduler.max_num_seqs < 1)
    throw InvalidArgument(cat("engine: max_num_batched_tokens (", config_.scheduler.max_num_batched_tokens,
                              ") and max_num_seqs (", config_.scheduler.max_num_seqs, ") must be >= 1"));
  max_request_blocks_ = kv.num_blocks;
  if (config_.speculative_method == SpeculativeMethod::kNgram) {
    if (config_.scheduler.num_speculative_tokens < 1)
      throw InvalidArgument("engine: ngram speculation needs num_speculative_tokens >= 1");
    drafter_ = std::make_unique<sched::NgramDrafter>(config_.ngram);
  } else {
    config_.scheduler.num_speculative_tokens = 0;
  }
  scheduler_ = std::make_unique<sched::Scheduler>(config_.scheduler, kv, drafter_.get());
}

Engine::~Engine() { stop(); }

Engine::Handle Engine::submit(std::vector<int32_t> prompt_ids, const GenerationOptions& options) {
  if (prompt_ids.empty()) throw InvalidArgument("submit: the prompt is empty");
  if (options.max_tokens < 1) throw InvalidArgument(cat("submit: max_tokens ", options.max_tokens, " < 1"));
  for (const int32_t id : prompt_ids)
    if (id < 0 || id >= backend_.vocab_size())
      throw InvalidArgument(cat("submit: prompt token ", id, " outside the vocabulary [0, ",
                                backend_.vocab_size(), ")"));
  const bool has_stop_strings = std::any_of(options.stop.begin(), options.stop.end(),
                                            [](const std::string& s) { return !s.empty(); });
  if (has_stop_strings && !tokenizer_) throw InvalidArgument("submit: stop strings need a tokenizer");
  // The whole sequence, with a verify's drafts past its end, must fit in the cache at once.
  const int64_t bs = backend_.block_size();
  const int64_t longest = int64_t(prompt_ids.size()) + options.max_tokens +
                          config_.scheduler.num_speculative_tokens;
  if ((longest + bs - 1) / bs > max_request_blocks_)
    throw InvalidArgument(cat("submit: prompt (", prompt_ids.size(), " tokens) + max_tokens (",
                              options.max_tokens, ") needs ", (longest + bs - 1) / bs,
                              " KV blocks; the cache has ", max_request_blocks_));

  auto r = std::make_unique<sched::Request>();
  r->token_ids = std::move(prompt_ids);
  r->sampling = options.sampling;
  r->stop.max_tokens = options.max_tokens;
  r->stop.min_tokens = options.min_tokens;
  r->stop.ignore_eos = options.ignore_eos;
  r->stop.eos_token_ids = config_.eos_token_ids;
  r->stop.stop_token_ids = options.stop_token_ids;
  r->arrival_time = sched::Clock::now();
  Handle h;
  {
    // Under the lock that fail() takes to empty the inbox: a request is either queued before
    // the engine died (and gets the error event) or refused here.
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) throw EngineDeadError(*failure_);
    r->id = h.id = next_id_++;
    h.stream = std::make_shared<RequestStream>(h.id);
    inbox_.push_back({std::move(r), options.stop, options.skip_special_tokens, h.stream});
  }
  cv_.notify_all();
  return h;
}

void Engine::cancel(int64_t request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) return;  // every request has finished already
    cancels_.push_back(request_id);
  }
  cv_.notify_all();
}

void Engine::take_inbox() {
  std::vector<Submission> inbox;
  std::vector<int64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (Submission& s : inbox) {
    Live live;
    live.stream = s.stream;
    const auto& p = s.request->sampling;
    live.rng.seed(p.seed ? *p.seed : std::random_device{}());
    live.logprobs = p.logprobs;
    if (tokenizer_) {
      live.detok = std::make_unique<tokenizer::IncrementalDetokenizer>(
          *tokenizer_, s.skip_special_tokens, s.request->token_ids);
    }
    live.stops = StopStringMatcher(s.stop);
    const int64_t id = s.request->id;
    live_.emplace(id, std::move(live));
    scheduler_->add_request(std::move(s.request));
  }
  for (const int64_t id : cancels) scheduler_->finish_request(id, sched::FinishReason::kAbort);
}

void Engine::emit(const sched::RequestUpdate& u, const VerifiedTokens* verified) {
  auto it = live_.find(u.request_id);
  XY_CHECK(it != live_.end(), "update for unknown request ", u.request_id);
  Live& live = it->second;
  if (live.stops.stopped()) return;
  StreamEvent e;
  for (size_t i = 0; i < u.new_tokens.size(); ++i) {
    const int32_t t = u.new_tokens[i];
    e.token_ids.push_back(t);
    if (verified && i < verified->logprobs.size()) {
      e.logprobs.push_back(verified->logprobs[i]);
      e.top_logprobs.push_back(verified->top_logprobs[i]);
    }
    // EOS and stop token ids end the output without text, as vLLM and OpenAI do.
    const bool stop_token = i + 1 == u.new_tokens.size() && u.finish_reason == sched::FinishReason::kStop;
    if (live.detok && !stop_token) e.text += live.stops.push(live.detok->push(t));
    if (live.stops.stopped()) {
      scheduler_->finish_request(u.request_id, sched::FinishReason::kStop);
      break;
    }
  }
  if (!e.token_ids.empty() || !e.text.empty()) live.stream->push(std::move(e));
}

void Engine::finish_streams() {
  for (auto& r : scheduler_->take_finished()) {
    auto it = live_.find(r->id);
    XY_CHECK(it != live_.end(), "finished unknown request ", r->id);
    Live& live = it->second;
    StreamEvent e;
    if (!live.stops.stopped()) {
      if (live.detok) e.text += live.stops.push(live.detok->flush());
      e.text += live.stops.flush();
    }
    e.finished = true;
    e.finish_reason = live.stops.stopped() ? sched::FinishReason::kStop : r->finish_reason;
    if (live.stops.stopped()) e.stop_string = live.stops.matched();
    e.metrics = metrics_of(*r);
    live.stream->push(std::move(e));
    live_.erase(it);
  }
}

bool Engine::step() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) throw EngineDeadError(*failure_);
  }
  // Anything a step throws leaves the scheduler, the backend or both half-updated: the engine
  // cannot go on, so the step's error becomes every request's.
  try {
    return run_step();
  } catch (const std::exception& e) {
    fail(e.what());
  } catch (...) {
    fail("unknown error");
  }
  throw EngineDeadError(*failure());
}

void Engine::fail(std::string cause) {
  if (cause.empty()) cause = "unknown error";  // an empty StreamEvent::error means no error
  std::vector<Submission> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = cause;
    queued.swap(inbox_);
    cancels_.clear();
  }
  auto finish_with_error = [&](RequestStream& stream) {
    if (stream.finished()) return;  // its finishing event went out before the failure
    StreamEvent e;
    e.finished = true;
    e.finish_reason = sched::FinishReason::kError;
    e.error = cause;
    stream.push(std::move(e));
  };
  for (auto& [id, live] : live_) finish_with_error(*live.stream);
  for (Submission& s : queued) finish_with_error(*s.stream);
  live_.clear();
  if (failure_listener_) failure_listener_(cause);
}

bool Engine::run_step() {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  take_inbox();
  finish_streams();  // cancelled requests
  const meta::StepPlan plan = scheduler_->schedule();
  const auto t1 = Clock::now();
  auto t2 = t1, t3 = t1;
  if (!plan.requests.empty() || !plan.kv_moves.empty() || !plan.kv_copies.empty()) {
    const int64_t vocab = backend_.vocab_size();
    sampling_.rows.clear();
    sampling_.penalties.clear();
    for (const meta::ScheduledRequest& s : plan.requests) {
      if (s.num_logits_rows == 0) continue;
      const sched::Request* r = scheduler_->find(s.request_id);
      XY_CHECK(r != nullptr, "planned request ", s.request_id, " is gone");
      const size_t before = sampling_.rows.size();
      verifier_.add_rows(*r, live_.at(s.request_id).rng, sampling_);
      XY_CHECK(sampling_.rows.size() - before == size_t(s.num_logits_rows), "request ", s.request_id,
               ": ", s.num_logits_rows, " logits rows planned, ", sampling_.rows.size() - before, " sampled");
    }
    t2 = Clock::now();
    backend_.forward_and_sample(plan, sampling_, sampled_);
    t3 = Clock::now();
    std::vector<sched::SampledTokens> outputs;
    std::unordered_map<int64_t, VerifiedTokens> verified;
    int32_t row = 0, logits_row = 0;
    for (const meta::ScheduledRequest& s : plan.requests) {
      if (s.num_logits_rows == 0) continue;
      const sched::Request* r = scheduler_->find(s.request_id);
      VerifiedTokens v = verifier_.finish(*r, sampled_, row, &logits_row, vocab, live_.at(s.request_id).rng);
      outputs.push_back(v.sampled);
      verified.emplace(s.request_id, std::move(v));
      row += s.num_logits_rows;
    }
    for (const sched::RequestUpdate& u : scheduler_->update(plan, outputs)) {
      auto it = verified.find(u.request_id);
      emit(u, it == verified.end() ? nullptr : &it->second);
    }
    finish_streams();
  }
  const auto t4 = Clock::now();
  host_time_.schedule_s += seconds(t1 - t0);
  host_time_.prepare_s += seconds(t2 - t1);
  host_time_.backend_s += seconds(t3 - t2);
  host_time_.finish_s += seconds(t4 - t3);
  EngineStats s;
  s.scheduler = scheduler_->stats();
  s.kv = scheduler_->kv_cache().counters();
  s.num_free_blocks = scheduler_->kv_cache().num_free_blocks();
  s.num_running = scheduler_->num_running();
  s.num_waiting = scheduler_->num_waiting();
  s.host_time = host_time_;
  s.device_busy_s = backend_.device_busy_s();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_ = s;
  }
  return scheduler_->has_unfinished();
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_requested_ || !inbox_.empty() || !cancels_.empty() || scheduler_->has_unfinished();
      });
      if (stop_requested_) return;
    }
    try {
      step();
    } catch (const EngineDeadError&) {
      return;  // every request has its error; stop() joins this thread
    }
  }
}

void Engine::start() {
  XY_CHECK(!thread_.joinable(), "engine started twice");
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_requested_ = false;
  }
  running_thread_ = true;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_requested_ = true;
  }
  cv_.notify_all();
  thread_.join();
  running_thread_ = false;
}

std::optional<std::string> Engine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Engine::set_failure_listener(std::function<void(const std::string& message)> listener) {
  XY_CHECK(!thread_.joinable(), "set_failure_listener after start()");
  failure_listener_ = std::move(listener);
}

std::vector<GenerationResult> Engine::generate_batch(const std::vector<std::vector<int32_t>>& prompts,
                                                     const GenerationOptions& options) {
  std::vector<Handle> handles;
  for (const auto& p : prompts) handles.push_back(submit(p, options));
  std::vector<GenerationResult> results(handles.size());
  if (!running_thread_) {
    while (step()) {
    }
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    GenerationResult& g = results[i];
    g.request_id = handles[i].id;
    while (true) {
      StreamEvent e = handles[i].stream->next();
      g.output_ids.insert(g.output_ids.end(), e.token_ids.begin(), e.token_ids.end());
      g.logprobs.insert(g.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      g.text += e.text;
      if (!e.error.empty()) throw EngineDeadError(e.error);
      if (e.finished) {
        g.finish_reason = e.finish_reason;
        if (e.metrics) g.metrics = *e.metrics;
        break;
      }
    }
  }
  return results;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace xy::engine
