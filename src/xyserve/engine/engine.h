// The engine: the step loop that drives the hybrid P/D/V schedule on a backend.
//   plan = scheduler.schedule(); backend.forward(plan, logits);
//   tokens = verify/sample each request's logits rows; scheduler.update(plan, tokens);
// then new tokens are detokenized and streamed, with stop strings held back.
//
// Threading: submit(), cancel(), stats(), failure() and generate_batch() are thread-safe. The
// loop runs on the engine thread that start() launches (it sleeps on a condition variable when
// idle), or, when not started, on whichever single thread calls step(). Everything else
// (scheduler, backend, detokenizers) is touched only by the loop.
//
// A step that throws (a CUDA error, a lost node of a tensor-parallel group) kills the engine,
// as vLLM's EngineDeadError does: the backend's state is unknown from then on, so it is never
// run again. Every unfinished request, queued or running, finishes at once with
// FinishReason::kError and StreamEvent::error set (a client's cancel stays kAbort); step(),
// submit() and generate_batch() throw EngineDeadError from then on; the engine thread ends.
// The process is expected to exit and be restarted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/common/error.h"
#include "xyserve/engine/request_stream.h"
#include "xyserve/engine/stop_string_matcher.h"
#include "xyserve/engine/token_verifier.h"
#include "xyserve/sched/ngram_drafter.h"
#include "xyserve/sched/scheduler.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::engine {

enum class SpeculativeMethod { kNone, kNgram };

// The engine is dead: a step failed (see the top of this file). what() is the failure: the
// step's exception's what() ("node 1 (rank 1) ... exited or was killed"), or "unknown error".
class EngineDeadError : public Error {
 public:
  using Error::Error;
};

struct EngineConfig {
  sched::SchedulerConfig scheduler;
  int32_t num_kv_blocks = 0;  // 0: all of the backend's
  bool enable_prefix_caching = true;
  SpeculativeMethod speculative_method = SpeculativeMethod::kNone;
  sched::NgramDrafterOptions ngram;  // with num_speculative_tokens in `scheduler`
  std::vector<int32_t> eos_token_ids;
};

struct GenerationOptions {
  meta::SamplingParams sampling;
  int32_t max_tokens = 16;
  int32_t min_tokens = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings (need a tokenizer)
  bool skip_special_tokens = true;
};

struct GenerationResult {
  int64_t request_id = 0;
  std::vector<int32_t> output_ids;
  std::vector<float> logprobs;
  std::string text;
  sched::FinishReason finish_reason = sched::FinishReason::kNone;
  RequestMetrics metrics;
};

// Wall time of the engine thread's steps, summed, in seconds: scheduling (with taking new
// requests and cancels), building the sampling plan, the backend's forward_and_sample (which
// waits for the device), and turning samples into tokens, updates and stream events.
struct StepHostTime {
  double schedule_s = 0, prepare_s = 0, backend_s = 0, finish_s = 0;
  double total_s() const { return schedule_s + prepare_s + backend_s + finish_s; }
};

struct EngineStats {
  sched::SchedulerStats scheduler;
  StepHostTime host_time;
  // The backend's device time over all steps (Backend::device_busy_s), when it measures it:
  // host_time.total_s() - device_busy_s is the time the device sat idle between steps.
  std::optional<double> device_busy_s;
  cache::KvCacheCounters kv;
  int32_t num_free_blocks = 0;
  int32_t num_running = 0;
  int32_t num_waiting = 0;
};

class Engine {
 public:
  // `tokenizer` may be null: no text, no stop strings. Throws InvalidArgument for a config the
  // backend cannot run (block size, block count).
  Engine(backend::Backend& backend, const tokenizer::Tokenizer* tokenizer, EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  struct Handle {
    int64_t id = 0;
    std::shared_ptr<RequestStream> stream;
  };
  // Queues a request; its events arrive on the handle's stream. Throws InvalidArgument for an
  // empty prompt, max_tokens < 1, a token id outside the vocabulary, stop strings without a
  // tokenizer, or a request that can never fit in the KV cache; EngineDeadError once the
  // engine is dead.
  Handle submit(std::vector<int32_t> prompt_ids, const GenerationOptions& options);
  // Ends the request at the start of the next step (its blocks are freed then); its stream
  // finishes with FinishReason::kAbort. Unknown or finished ids are ignored.
  void cancel(int64_t request_id);

  // Runs one step on the calling thread (only when start() was not called). Returns whether
  // any request is still unfinished. Throws EngineDeadError when this step failed (after every
  // unfinished request got its error event) or an earlier one did.
  bool step();
  void start();
  // Joins the engine thread; also after the engine died (the thread has ended then).
  void stop();

  // The failure (EngineDeadError's message) once the engine is dead, else nullopt.
  std::optional<std::string> failure() const;
  // Called once, on the thread that ran the failed step, after every request's error event
  // was pushed: how a server learns that it must shut down. Set before start().
  void set_failure_listener(std::function<void(const std::string& message)> listener);

  // Submits every prompt and waits for all of them; results in prompt order. Throws
  // EngineDeadError when the engine dies before they finish.
  std::vector<GenerationResult> generate_batch(const std::vector<std::vector<int32_t>>& prompts,
                                               const GenerationOptions& options);

  EngineStats stats() const;
  // Engine thread (or the step() caller) only: for tests that inspect the KV cache.
  const sched::Scheduler& scheduler() const { return *scheduler_; }
  sched::Scheduler& scheduler() { return *scheduler_; }

 private:
  struct Live {
    std::shared_ptr<RequestStream> stream;
    std::mt19937_64 rng;
    std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
    StopStringMatcher stops;
    int32_t logprobs = -1;
  };
  struct Submission {
    std::unique_ptr<sched::Request> request;
    std::vector<std::string> stop;
    bool skip_special_tokens = true;
    std::shared_ptr<RequestStream> stream;
  };

  bool run_step();
  void take_inbox();
  void emit(const sched::RequestUpdate& u, const VerifiedTokens* verified);
  void finish_streams();
  // Marks the engine dead and finishes every unfinished request with the error.
  void fail(std::string cause);
  void loop();

  backend::Backend& backend_;
  const tokenizer::Tokenizer* tokenizer_;
  EngineConfig config_;
  std::unique_ptr<sched::Drafter> drafter_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  TokenVerifier verifier_;
  meta::SamplingPlan sampling_;   // this step's, reused
  meta::SamplingOutput sampled_;
  StepHostTime host_time_;
  std::unordered_map<int64_t, Live> live_;
  int32_t max_request_blocks_ = 0;
  std::function<void(const std::string&)> failure_listener_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Submission> inbox_;
  std::vector<int64_t> cancels_;
  int64_t next_id_ = 0;
  EngineStats stats_;
  std::optional<std::string> failure_;  // set once, by fail()
  bool stop_requested_ = false;
  std::thread thread_;
  std::atomic<bool> running_thread_{false};
};

}  // namespace xy::engine
