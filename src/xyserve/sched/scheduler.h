// The token-budget hybrid scheduler (DESIGN.md "Schedule"; XY-Serve's token-wise scheduling;
// vLLM v1's "no phases" rule). Each request has num_computed_tokens and num_tokens (prompt +
// output + drafts); a step gives requests some of the difference, under max_num_batched_tokens
// rows and max_num_seqs requests:
//   decode-first (default): decodes and verifies of running requests, then prefill chunks of
//     running requests (SplitFuse), then admission of waiting requests (FCFS) while KV blocks
//     and budget last;
//   prefill-first (the paper's): prefill chunks and admissions first, but a share of the budget
//     (decode_reserve_fraction) is held back for decodes and verifies whenever any wait.
// When the KV cache cannot grow a request, the most recently admitted running request is
// preempted: its blocks are freed (its computed prefix stays in the prefix cache), it goes back
// to the front of the waiting queue, and later recomputes prompt + generated tokens.
//
// schedule() returns a StepPlan (plain data); update(plan, outputs) takes the sampled tokens
// back as data. Neither touches a backend, so tests check plans alone.
//
// Threading: engine thread only; nothing here locks.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "xyserve/cache/kv_cache_manager.h"
#include "xyserve/meta/step_plan.h"
#include "xyserve/sched/drafter.h"
#include "xyserve/sched/request.h"

namespace xy::sched {

enum class SchedulingPolicy { kDecodeFirst, kPrefillFirst };

struct SchedulerConfig {
  int32_t max_num_batched_tokens = 2048;  // rows per step
  int32_t max_num_seqs = 256;             // requests per step
  // Largest prefill chunk one request gets in a step; 0: up to the budget.
  int32_t long_prefill_token_threshold = 0;
  // Off: a prompt is admitted only when all of it fits in the step (no SplitFuse).
  bool enable_chunked_prefill = true;
  SchedulingPolicy policy = SchedulingPolicy::kDecodeFirst;
  // prefill-first: share of the budget kept for decodes and verifies when any wait.
  double decode_reserve_fraction = 0.25;
  int32_t num_speculative_tokens = 0;  // drafts per verify; 0: no speculation
  // Longest sequence (prompt + output); drafts never go past it. 0: no limit.
  int32_t max_model_len = 0;
};

// What the engine hands back for one request that had logits rows in the plan.
struct SampledTokens {
  int64_t request_id = 0;
  // Draft indices accepted, root to leaf (tokens[i] == draft_tokens[accepted[i]]).
  std::vector<int32_t> accepted;
  // accepted drafts' tokens, then the one sampled after them.
  std::vector<int32_t> tokens;
};

// One request's new output after update(): what the engine streams.
struct RequestUpdate {
  int64_t request_id = 0;
  std::vector<int32_t> new_tokens;  // appended to the output this step (after stop trimming)
  FinishReason finish_reason = FinishReason::kNone;
};

struct SchedulerStats {
  int64_t num_steps = 0;
  int64_t num_scheduled_tokens = 0;  // rows over all steps
  int64_t num_preemptions = 0;
  int64_t num_draft_tokens = 0;
  int64_t num_accepted_tokens = 0;
  int64_t num_generated_tokens = 0;
};

class Scheduler {
 public:
  // `drafter` may be null (no speculation); it must outlive the scheduler.
  Scheduler(const SchedulerConfig& config, const cache::KvCacheConfig& kv_config,
            Drafter* drafter = nullptr);

  // Queues a request (state waiting, FCFS behind everything queued). Returns its id.
  // Preconditions: a unique id, a non-empty prompt, max_tokens >= 1.
  int64_t add_request(std::unique_ptr<Request> request);

  // Ends a request now (cancel, a stop string): frees its blocks at once; take_finished() hands
  // it over. Returns false if the id is unknown (never added, or finished already).
  bool finish_request(int64_t request_id, FinishReason reason);

  // Picks this step's work. The requests in the plan stay running until update().
  meta::StepPlan schedule();

  // Applies a step's results: advances num_computed_tokens, appends outputs, accepts or rolls
  // back drafts, finishes requests (finished ones are returned by take_finished()).
  // `outputs` has one entry per plan request with logits rows, in plan order.
  std::vector<RequestUpdate> update(const meta::StepPlan& plan,
                                    const std::vector<SampledTokens>& outputs);

  // Finished requests since the last call, in finishing order.
  std::vector<std::unique_ptr<Request>> take_finished();

  const Request* find(int64_t request_id) const;
  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  int32_t num_waiting() const { return int32_t(waiting_.size()); }
  int32_t num_running() const { return int32_t(running_.size()); }
  // Waiting queue front to back; running requests in admission order.
  std::vector<int64_t> waiting_ids() const { return {waiting_.begin(), waiting_.end()}; }
  const std::vector<int64_t>& running_ids() const { return running_; }
  const SchedulerStats& stats() const { return stats_; }
  const SchedulerConfig& config() const { return config_; }
  cache::KvCacheManager& kv_cache() { return kv_; }
  const cache::KvCacheManager& kv_cache() const { return kv_; }

 private:
  struct Entry {
    int64_t id = 0;
    int32_t num_new = 0;     // rows: real tokens then drafts
    int32_t num_drafts = 0;  // of them, draft rows
  };
  Request& get(int64_t id);
  void propose_drafts(Request& r);
  // Grows r's KV to num_tokens_total, preempting the newest running requests (removing their
  // entries) until it fits. Returns false if r itself was preempted.
  bool allocate_or_preempt(Request& r, int32_t num_tokens_total, std::vector<Entry>& entries,
                           int32_t& budget);
  void preempt(Request& r);
  // Gives running requests of one kind (decoding or prefilling) rows, oldest first.
  void schedule_running(bool decoding, int32_t& budget, std::vector<Entry>& entries,
                        bool& preempted);
  void admit_waiting(int32_t& budget, std::vector<Entry>& entries);
  meta::StepPlan build_plan(const std::vector<Entry>& entries);
  // Publishes to the KV cache manager every token of r whose KV is in its final slot.
  void mark_computed(Request& r);
  // Appends tokens to r's output until a stop condition holds; returns the ones kept.
  std::vector<int32_t> append_output(Request& r, std::span<const int32_t> tokens);
  void finish(Request& r, FinishReason reason);

  SchedulerConfig config_;
  cache::KvCacheManager kv_;
  Drafter* drafter_;
  std::unordered_map<int64_t, std::unique_ptr<Request>> requests_;
  std::deque<int64_t> waiting_;
  std::vector<int64_t> running_;  // admission order: preemption takes from the back
  std::vector<std::unique_ptr<Request>> finished_;
  std::vector<int64_t> moved_ids_;  // requests whose pending moves went into the last plan
  int64_t next_arrival_ = 0;
  int64_t next_admission_ = 0;
  int64_t step_index_ = 0;
  SchedulerStats stats_;
};

}  // namespace xy::sched
