#include "xyserve/sched/scheduler.h"

#include <algorithm>
#include <cmath>

#include "xyserve/common/check.h"

namespace xy::sched {

Scheduler::Scheduler(const SchedulerConfig& config, const cache::KvCacheConfig& kv_config,
                     Drafter* drafter)
    : config_(config), kv_(kv_config), drafter_(drafter) {
  XY_CHECK(config.max_num_batched_tokens >= 1, "max_num_batched_tokens ",
           config.max_num_batched_tokens);
  XY_CHECK(config.max_num_seqs >= 1, "max_num_seqs ", config.max_num_seqs);
  XY_CHECK(config.num_speculative_tokens >= 0, "num_speculative_tokens ",
           config.num_speculative_tokens);
}

Request& Scheduler::get(int64_t id) {
  auto it = requests_.find(id);
  XY_CHECK(it != requests_.end(), "unknown request ", id);
  return *it->second;
}

const Request* Scheduler::find(int64_t request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : it->second.get();
}

int64_t Scheduler::add_request(std::unique_ptr<Request> request) {
  XY_CHECK(request && !request->token_ids.empty(), "a request needs a prompt");
  XY_CHECK(request->stop.max_tokens >= 1, "request ", request->id, " max_tokens ",
           request->stop.max_tokens);
  XY_CHECK(!requests_.count(request->id), "request id ", request->id, " added twice");
  const int64_t id = request->id;
  request->num_prompt_tokens = request->num_tokens();
  request->num_computed_tokens = 0;
  request->state = RequestState::kWaiting;
  request->arrival_order = next_arrival_++;
  if (request->arrival_time == Clock::time_point{}) request->arrival_time = Clock::now();
  waiting_.push_back(id);
  requests_.emplace(id, std::move(request));
  return id;
}

bool Scheduler::finish_request(int64_t request_id, FinishReason reason) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return false;
  finish(*it->second, reason);
  return true;
}

void Scheduler::finish(Request& r, FinishReason reason) {
  if (r.state == RequestState::kRunning) {
    kv_.free(r.id);
    running_.erase(std::find(running_.begin(), running_.end(), r.id));
  } else if (r.state == RequestState::kWaiting) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), r.id));
  }
  r.state = RequestState::kFinished;
  r.finish_reason = reason;
  r.draft_tokens.clear();
  r.draft_parents.clear();
  r.pending_moves.clear();
  auto it = requests_.find(r.id);
  finished_.push_back(std::move(it->second));
  requests_.erase(it);
}

std::vector<std::unique_ptr<Request>> Scheduler::take_finished() {
  std::vector<std::unique_ptr<Request>> out;
  out.swap(finished_);
  return out;
}

// ---- scheduling ----

void Scheduler::propose_drafts(Request& r) {
  r.draft_tokens.clear();
  r.draft_parents.clear();
  if (!drafter_ || config_.num_speculative_tokens == 0 || !r.is_decoding()) return;
  // Past max_tokens - 1 drafts nothing more could be emitted (the bonus token is the last);
  // past max_model_len there are no positions.
  int32_t max = std::min(config_.num_speculative_tokens,
                         r.stop.max_tokens - r.num_output_tokens() - 1);
  if (config_.max_model_len > 0) max = std::min(max, config_.max_model_len - r.num_tokens());
  if (max <= 0) return;
  DraftProposal p = drafter_->propose(r.token_ids, max);
  XY_CHECK(int32_t(p.tokens.size()) <= max, "drafter proposed ", p.tokens.size(), " > ", max);
  r.draft_tokens = std::move(p.tokens);
  r.draft_parents = std::move(p.parents);
}

void Scheduler::preempt(Request& r) {
  XY_CHECK(!running_.empty() && running_.back() == r.id, "preempting request ", r.id,
           " which is not the newest running one");
  kv_.free(r.id);
  running_.pop_back();
  moved_ids_.erase(std::remove(moved_ids_.begin(), moved_ids_.end(), r.id), moved_ids_.end());
  r.state = RequestState::kWaiting;
  r.num_computed_tokens = 0;
  r.draft_tokens.clear();
  r.draft_parents.clear();
  r.pending_moves.clear();
  ++r.num_preemptions;
  ++stats_.num_preemptions;
  waiting_.push_front(r.id);
}

bool Scheduler::allocate_or_preempt(Request& r, int32_t num_tokens_total,
                                    std::vector<Entry>& entries, int32_t& budget) {
  while (!kv_.allocate_slots(r.id, num_tokens_total)) {
    // Alone and still short: the request can never fit (the engine refuses such requests).
    XY_CHECK(running_.size() > 1, "request ", r.id, " needs ", num_tokens_total,
             " KV slots; the whole cache cannot hold them");
    Request& victim = get(running_.back());
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const Entry& e) { return e.id == victim.id; });
    if (it != entries.end()) {
      budget += it->num_new;
      entries.erase(it);
    }
    preempt(victim);
    if (&victim == &r) return false;
  }
  return true;
}

void Scheduler::schedule_running(bool decoding, int32_t& budget, std::vector<Entry>& entries,
                                 bool& preempted) {
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Request& r = get(running_[i]);
    // A request admitted this step with a prefix hit up to its last token looks like a
    // decode, but already has its rows.
    if (r.is_decoding() != decoding || r.scheduled_step == step_index_) continue;
    int32_t num_new = 0;
    if (decoding) {
      // A verify that does not fit keeps its first drafts: a prefix of a tree is a tree.
      num_new = std::min(1 + int32_t(r.draft_tokens.size()), budget);
      r.draft_tokens.resize(size_t(num_new - 1));
      if (!r.draft_parents.empty()) r.draft_parents.resize(size_t(num_new - 1));
    } else {
      const int32_t remaining = r.num_tokens() - r.num_computed_tokens;
      num_new = std::min(remaining, budget);
      if (config_.long_prefill_token_threshold > 0)
        num_new = std::min(num_new, config_.long_prefill_token_threshold);
      if (!config_.enable_chunked_prefill && num_new < remaining) continue;
    }
    const int64_t preemptions = stats_.num_preemptions;
    const bool ok = allocate_or_preempt(r, r.num_computed_tokens + num_new, entries, budget);
    if (stats_.num_preemptions != preemptions) preempted = true;
    if (!ok) break;  // r was the newest running request: nothing after it
    const int32_t drafts = decoding ? int32_t(r.draft_tokens.size()) : 0;
    entries.push_back({r.id, num_new, drafts});
    r.scheduled_step = step_index_;
    budget -= num_new;
  }
}

void Scheduler::admit_waiting(int32_t& budget, std::vector<Entry>& entries) {
  while (!waiting_.empty() && budget > 0 && int32_t(running_.size()) < config_.max_num_seqs) {
    Request& r = get(waiting_.front());
    const cache::PrefixHit hit = kv_.find_prefix(r.token_ids);
    const int32_t remaining = r.num_tokens() - hit.num_cached_tokens;
    int32_t num_new = std::min(remaining, budget);
    if (config_.long_prefill_token_threshold > 0)
      num_new = std::min(num_new, config_.long_prefill_token_threshold);
    if (!config_.enable_chunked_prefill && num_new < remaining) break;
    // FCFS: when the head does not fit, nobody behind it jumps the queue (no starvation).
    if (!kv_.admit(r.id, r.token_ids, hit, hit.num_cached_tokens + num_new)) break;
    waiting_.pop_front();
    r.num_computed_tokens = hit.num_cached_tokens;
    r.state = RequestState::kRunning;
    r.admission_order = next_admission_++;
    running_.push_back(r.id);
    entries.push_back({r.id, num_new, 0});
    r.scheduled_step = step_index_;
    budget -= num_new;
  }
}

meta::StepPlan Scheduler::schedule() {
  ++step_index_;
  for (const int64_t id : running_) propose_drafts(get(id));

  std::vector<Entry> entries;
  int32_t budget = config_.max_num_batched_tokens;
  bool preempted = false;
  if (config_.policy == SchedulingPolicy::kDecodeFirst) {
    schedule_running(true, budget, entries, preempted);
    schedule_running(false, budget, entries, preempted);
    // Admitting right after a preemption would only take back the blocks just freed.
    if (!preempted) admit_waiting(budget, entries);
  } else {
    // Prefill-first (XY-Serve): prefill chunks fill the budget, but a share stays reserved for
    // decodes and verifies whenever any wait, so they never starve.
    int32_t decode_demand = 0;
    for (const int64_t id : running_) {
      const Request& r = get(id);
      if (r.is_decoding()) decode_demand += 1 + int32_t(r.draft_tokens.size());
    }
    const int32_t share = int32_t(std::ceil(config_.decode_reserve_fraction *
                                            double(config_.max_num_batched_tokens)));
    const int32_t reserve = std::min(decode_demand, std::max(share, decode_demand > 0 ? 1 : 0));
    int32_t prefill_budget = budget - reserve;
    const int32_t prefill_start = prefill_budget;
    schedule_running(false, prefill_budget, entries, preempted);
    if (!preempted) admit_waiting(prefill_budget, entries);
    budget -= prefill_start - prefill_budget;
    schedule_running(true, budget, entries, preempted);
  }

  // Drafts of requests that got no rows are dropped; they are proposed again next step.
  for (const int64_t id : running_) {
    Request& r = get(id);
    if (std::none_of(entries.begin(), entries.end(), [&](const Entry& e) { return e.id == id; })) {
      r.draft_tokens.clear();
      r.draft_parents.clear();
    }
  }
  return build_plan(entries);
}

meta::StepPlan Scheduler::build_plan(const std::vector<Entry>& entries) {
  meta::StepPlan plan;
  plan.block_size = kv_.block_size();
  plan.requests.reserve(entries.size());
  std::vector<int32_t> depth;
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& e = entries[k];
    for (size_t m = 0; m < k; ++m)
      XY_CHECK(entries[m].id != e.id, "request ", e.id, " scheduled twice");
    const Request& r = get(e.id);
    meta::ScheduledRequest s;
    s.request_id = r.id;
    s.num_computed_tokens = r.num_computed_tokens;
    s.num_new_tokens = e.num_new;
    s.first_row = plan.num_rows();
    const std::span<const int32_t> table = kv_.block_table(r.id);
    s.block_table.assign(table.begin(), table.end());
    const int32_t real = e.num_new - e.num_drafts;
    const int32_t nc = r.num_computed_tokens;
    XY_CHECK(nc + real <= r.num_tokens(), "request ", r.id, " scheduled past its tokens");
    for (int32_t j = 0; j < real; ++j) {
      plan.token_ids.push_back(r.token_ids[size_t(nc + j)]);
      plan.positions.push_back(nc + j);
    }
    // Draft i sits at the depth of its node below the last real token.
    depth.assign(size_t(e.num_drafts), 0);
    for (int32_t i = 0; i < e.num_drafts; ++i) {
      const int32_t parent = r.draft_parents.empty() ? i - 1 : r.draft_parents[size_t(i)];
      depth[size_t(i)] = parent < 0 ? 1 : depth[size_t(parent)] + 1;
      plan.token_ids.push_back(r.draft_tokens[size_t(i)]);
      plan.positions.push_back(nc + real - 1 + depth[size_t(i)]);
    }
    if (!r.draft_parents.empty() && e.num_drafts > 0) {
      for (int32_t j = 0; j < real; ++j) s.tree_parents.push_back(j - 1);
      for (int32_t i = 0; i < e.num_drafts; ++i) {
        const int32_t parent = r.draft_parents[size_t(i)];
        s.tree_parents.push_back(parent < 0 ? real - 1 : real + parent);
      }
    }
    s.num_logits_rows = nc + real == r.num_tokens() ? 1 + e.num_drafts : 0;
    stats_.num_scheduled_tokens += e.num_new;
    plan.requests.push_back(std::move(s));
  }
  for (const cache::BlockCopy& c : kv_.take_pending_copies())
    plan.kv_copies.push_back({c.src_block, c.dst_block, c.num_tokens});
  // Tree compaction moves of every running request, scheduled or not: they must run before
  // anything reads those slots, and each plan's moves run before its forward pass.
  moved_ids_.clear();
  const int32_t bs = kv_.block_size();
  for (const int64_t id : running_) {
    Request& r = get(id);
    if (r.pending_moves.empty()) continue;
    const std::span<const int32_t> table = kv_.block_table(id);
    for (const auto& m : r.pending_moves) {
      plan.kv_moves.push_back({table[size_t(m.src_position / bs)], m.src_position % bs,
                               table[size_t(m.dst_position / bs)], m.dst_position % bs});
    }
    r.pending_moves.clear();
    moved_ids_.push_back(id);
  }
  if (!plan.requests.empty() || !plan.kv_moves.empty()) ++stats_.num_steps;
  return plan;
}

// ---- results ----

std::vector<int32_t> Scheduler::append_output(Request& r, std::span<const int32_t> tokens) {
  std::vector<int32_t> kept;
  const Clock::time_point now = Clock::now();
  for (const int32_t t : tokens) {
    r.token_ids.push_back(t);
    kept.push_back(t);
    ++stats_.num_generated_tokens;
    if (r.num_output_tokens() == 1) r.first_token_time = now;
    r.last_token_time = now;
    const auto has = [t](const std::vector<int32_t>& ids) {
      return std::find(ids.begin(), ids.end(), t) != ids.end();
    };
    FinishReason reason = FinishReason::kNone;
    if (r.num_output_tokens() >= r.stop.min_tokens &&
        ((!r.stop.ignore_eos && has(r.stop.eos_token_ids)) || has(r.stop.stop_token_ids)))
      reason = FinishReason::kStop;
    else if (r.num_output_tokens() >= r.stop.max_tokens)
      reason = FinishReason::kLength;
    else if (config_.max_model_len > 0 && r.num_tokens() >= config_.max_model_len)
      reason = FinishReason::kLength;
    if (reason != FinishReason::kNone) {
      r.finish_reason = reason;
      break;
    }
  }
  return kept;
}

void Scheduler::mark_computed(Request& r) {
  // Tokens up to the first slot still waiting for a move are in place.
  int32_t valid = r.num_computed_tokens;
  for (const auto& m : r.pending_moves) valid = std::min(valid, m.dst_position);
  if (valid > kv_.num_computed_tokens(r.id)) kv_.mark_computed(r.id, r.token_ids, valid);
}

std::vector<RequestUpdate> Scheduler::update(const meta::StepPlan& plan,
                                             const std::vector<SampledTokens>& outputs) {
  std::vector<RequestUpdate> updates;
  size_t k = 0;
  for (const meta::ScheduledRequest& s : plan.requests) {
    const SampledTokens* out = nullptr;
    if (s.num_logits_rows > 0) {
      XY_CHECK(k < outputs.size(), "no sampled tokens for request ", s.request_id);
      out = &outputs[k++];
      XY_CHECK(out->request_id == s.request_id, "sampled tokens for request ", out->request_id,
               " where the plan has ", s.request_id);
    }
    auto it = requests_.find(s.request_id);
    if (it == requests_.end()) continue;  // finished while the step ran (cancel)
    Request& r = *it->second;
    XY_CHECK(r.state == RequestState::kRunning && r.num_computed_tokens == s.num_computed_tokens,
             "request ", r.id, " changed while its step ran: state ", int(r.state), " computed ", r.num_computed_tokens, " planned ", s.num_computed_tokens);
    const int32_t num_drafts = int32_t(r.draft_tokens.size());
    const int32_t real = s.num_new_tokens - num_drafts;
    int32_t num_computed = s.num_computed_tokens + s.num_new_tokens;
    int32_t keep_slots = num_computed;
    RequestUpdate u;
    u.request_id = r.id;
    if (out) {
      const int32_t a = int32_t(out->accepted.size());
      XY_CHECK(int32_t(out->tokens.size()) == a + 1, "request ", r.id, ": ", out->tokens.size(),
               " tokens for ", a, " accepted drafts");
      DraftProposal draft{r.draft_tokens, r.draft_parents};
      for (int32_t i = 0; i < a; ++i) {
        const int32_t node = out->accepted[size_t(i)];
        XY_CHECK(node >= 0 && node < num_drafts && draft.parent(node) == (i ? out->accepted[size_t(i - 1)] : -1) &&
                     out->tokens[size_t(i)] == r.draft_tokens[size_t(node)],
                 "request ", r.id, ": accepted draft ", node, " is not on a path of the tree");
      }
      num_computed = s.num_computed_tokens + real + a;
      keep_slots = num_computed;
      for (int32_t i = 0; i < a; ++i) {
        const int32_t src = s.num_computed_tokens + real + out->accepted[size_t(i)];
        const int32_t dst = s.num_computed_tokens + real + i;
        if (src != dst) r.pending_moves.push_back({src, dst});
        keep_slots = std::max(keep_slots, src + 1);
      }
      r.num_draft_tokens += num_drafts;
      r.num_accepted_tokens += a;
      stats_.num_draft_tokens += num_drafts;
      stats_.num_accepted_tokens += a;
      u.new_tokens = append_output(r, out->tokens);
    }
    r.num_computed_tokens = num_computed;
    r.draft_tokens.clear();
    r.draft_parents.clear();
    u.finish_reason = r.finish_reason;
    updates.push_back(std::move(u));
    if (r.finish_reason != FinishReason::kNone) {
      finish(r, r.finish_reason);
      continue;
    }
    // Give back the blocks only rejected drafts used.
    if (num_drafts > 0) kv_.truncate(r.id, keep_slots);
    mark_computed(r);
  }
  for (const int64_t id : moved_ids_) {
    auto it = requests_.find(id);
    if (it != requests_.end() && it->second->state == RequestState::kRunning)
      mark_computed(*it->second);
  }
  moved_ids_.clear();
  return updates;
}

}  // namespace xy::sched
