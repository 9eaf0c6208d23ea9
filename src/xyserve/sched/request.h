// One generation request as the scheduler sees it: its tokens (prompt, then output), how many of
// them are in the KV cache, the draft tokens it proposes for the next verify, its state and its
// timing. No phases: what a step runs for a request follows from num_computed_tokens and
// num_tokens alone (DESIGN.md "Schedule"; vLLM v1's Request).
//
// Threading: owned by the scheduler; touched only on the engine thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include "xyserve/meta/sampling_params.h"

namespace xy::sched {

using Clock = std::chrono::steady_clock;

enum class RequestState { kWaiting, kRunning, kFinished };

enum class FinishReason {
  kNone,    // still running
  kStop,    // EOS, a stop token id or a stop string
  kLength,  // max_tokens reached
  kAbort,   // cancelled by the client
  kError,   // the engine died under it (engine::EngineDeadError); never set by the scheduler
};

std::string_view to_string(FinishReason reason);

// Token-level stop conditions; stop strings are text and live in the engine, which finishes the
// request through Scheduler::finish_request.
struct StopConditions {
  int32_t max_tokens = 16;               // >= 1
  int32_t min_tokens = 0;                // EOS and stop token ids are ignored before this many
  bool ignore_eos = false;
  std::vector<int32_t> eos_token_ids;    // the model's
  std::vector<int32_t> stop_token_ids;   // the request's
};

struct Request {
  int64_t id = 0;
  int32_t num_prompt_tokens = 0;
  // Prompt then output tokens: [0, num_prompt_tokens) prompt, the rest generated. Everything a
  // recompute after preemption must prefill again.
  std::vector<int32_t> token_ids;
  meta::SamplingParams sampling;
  StopConditions stop;

  // Positions [0, num_computed_tokens) of token_ids hold KV. A running request that is
  // decoding has num_computed_tokens == num_tokens() - 1: its last sampled token is fed next.
  int32_t num_computed_tokens = 0;
  // Draft tokens proposed for the next verify step, after token_ids. draft_parents empty: a
  // chain; else draft_parents[i] is the index of draft i's parent, -1 for a child of the last
  // real token, parents before children.
  std::vector<int32_t> draft_tokens;
  std::vector<int32_t> draft_parents;
  // KV slot moves that compact an accepted draft-tree path; they go in the next plan, and the
  // moved tokens are marked computed in the KV cache manager after that plan ran.
  struct SlotMove {
    int32_t src_position = 0, dst_position = 0;
  };
  std::vector<SlotMove> pending_moves;

  RequestState state = RequestState::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  int64_t arrival_order = 0;    // FCFS rank, set by the scheduler
  int64_t admission_order = 0;  // when it last became running (preemption picks the largest)
  int32_t num_preemptions = 0;
  int64_t scheduled_step = -1;  // scheduler bookkeeping: the step that last gave it rows

  // Speculative decoding counters.
  int64_t num_draft_tokens = 0;     // proposed and verified
  int64_t num_accepted_tokens = 0;  // of those, accepted

  Clock::time_point arrival_time{};
  Clock::time_point first_token_time{};  // set when the first output token is appended
  Clock::time_point last_token_time{};  // TPOT = (last - first) / (outputs - 1)

  int32_t num_tokens() const { return int32_t(token_ids.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  int32_t num_tokens_with_spec() const { return num_tokens() + int32_t(draft_tokens.size()); }
  // Decoding: only the last sampled token is missing from the KV cache, so the next step is a
  // decode (1 row) or a verify (1 + drafts rows). Otherwise it is a prefill (or a recompute).
  bool is_decoding() const {
    return num_output_tokens() > 0 && num_computed_tokens == num_tokens() - 1;
  }
  bool finished() const { return state == RequestState::kFinished; }
};

}  // namespace xy::sched
