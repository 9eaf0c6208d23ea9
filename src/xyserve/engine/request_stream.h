// The per-request stream of generation events, from the engine thread to any consumer thread
// (the server, generate_batch, a test). Thread-safe; one producer, any number of consumers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/sched/request.h"

namespace xy::engine {

// Timing and counts of a finished request (for TTFT / TPOT percentiles).
struct RequestMetrics {
  int32_t num_prompt_tokens = 0;
  int32_t num_output_tokens = 0;
  int32_t num_preemptions = 0;
  int64_t num_draft_tokens = 0;
  int64_t num_accepted_tokens = 0;
  double ttft_s = 0;  // arrival to first output token
  double tpot_s = 0;  // mean time per output token after the first (0 with one token)
  double e2e_s = 0;   // arrival to finish
};

struct StreamEvent {
  std::vector<int32_t> token_ids;  // new tokens this step
  std::vector<float> logprobs;     // of each new token, from the raw logits (when asked)
  std::vector<std::vector<backend::cpu::TokenLogprob>> top_logprobs;
  std::string text;                // text that became final (stop strings held back)
  bool finished = false;
  sched::FinishReason finish_reason = sched::FinishReason::kNone;
  std::string stop_string;  // on the finishing event: the stop string that ended the request
  // On the finishing event of a request that failed (the engine died under it): the message.
  // finish_reason is kError then (and only then), and no metrics come with it.
  std::string error;
  std::optional<RequestMetrics> metrics;  // on the finishing event
};

class RequestStream {
 public:
  explicit RequestStream(int64_t id) : id_(id) {}
  int64_t id() const { return id_; }

  // Engine thread.
  void push(StreamEvent event);

  // Blocks until an event is available. After the finishing event was taken, returns an empty
  // finished event at once.
  StreamEvent next();
  // As next(), giving up after `timeout`.
  std::optional<StreamEvent> next_for(std::chrono::milliseconds timeout);
  std::optional<StreamEvent> try_next();
  bool finished() const;

  // For consumers that must not block (the server's I/O threads): `listener` is called after
  // every push(), on the pushing thread and outside the lock, so it must be cheap (post work
  // elsewhere) and must not call push(). Set once; when events are already queued it is called
  // at once, so none is missed whenever it is set.
  void set_listener(std::function<void()> listener);

 private:
  StreamEvent pop_locked();

  const int64_t id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  bool finish_pushed_ = false;
  bool finish_taken_ = false;
  std::shared_ptr<const std::function<void()>> listener_;
};

}  // namespace xy::engine
