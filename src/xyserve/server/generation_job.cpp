#include "xyserve/server/generation_job.h"

#include <algorithm>
#include <optional>

#include <boost/asio/post.hpp>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/server/openai_error.h"
#include "xyserve/server/sse.h"

namespace xy::server {
namespace {

class GenerationJob : public std::enable_shared_from_this<GenerationJob> {
 public:
  GenerationJob(const JobContext& context, std::shared_ptr<Exchange> exchange, JobSpec spec)
      : ctx_(context), exchange_(std::move(exchange)), executor_(exchange_->executor()),
        spec_(std::move(spec)) {
    choices_.resize(spec_.choices.size());
  }

  void start() {
    // Submit everything first: a refusal (the KV cache cannot hold the request) is a 400
    // before any byte of the response was sent.
    for (size_t i = 0; i < spec_.choices.size(); ++i) {
      try {
        choices_[i].handle = ctx_.engine->submit(spec_.choices[i].prompt_ids, spec_.choices[i].options);
      } catch (const InvalidArgument& e) {
        for (size_t j = 0; j < i; ++j) ctx_.engine->cancel(choices_[j].handle.id);
        // Their abort events still arrive; a bare listener-free stream is simply dropped.
        throw ApiException(ApiError{400, e.what(), "invalid_request_error", "max_tokens", ""});
      } catch (const engine::EngineDeadError& e) {
        // The choices submitted before got their error events; nobody listens to them.
        throw ApiException(engine_unavailable(e.what()));
      }
    }
    ++*ctx_.num_active;
    exchange_->attach(shared_from_this());
    std::weak_ptr<GenerationJob> weak = weak_from_this();
    exchange_->on_close([weak] {
      if (auto self = weak.lock()) self->cancel_all();
    });
    if (spec_.stream) {
      exchange_->begin_stream(kSseContentType);
      const auto n = int32_t(spec_.choices.size());
      if (spec_.api == ApiKind::kChat)
        chat_stream_.emplace(spec_.header, n, spec_.with_logprobs, spec_.include_usage);
      else
        completion_stream_.emplace(spec_.header, n, spec_.with_logprobs, spec_.include_usage);
    }
    auto self = shared_from_this();
    for (Choice& c : choices_) {
      c.handle.stream->set_listener([self] {
        if (!self->drain_posted_.exchange(true))
          boost::asio::post(self->executor_, [self] { self->drain(); });
      });
    }
  }

 private:
  struct Choice {
    engine::Engine::Handle handle;
    bool finished = false;
    ChoiceOutput output;
    int64_t num_tokens = 0;
    std::vector<int32_t> last_tokens;  // for stop_reason: the last token id
  };

  void cancel_all() {
    for (const Choice& c : choices_)
      if (!c.finished) ctx_.engine->cancel(c.handle.id);
  }

  // kError never gets here: take() answers a failed request with an error body, so "error"
  // cannot appear as a finish_reason in a 200 response. kNone finishes nothing.
  static FinishReason finish_reason_of(sched::FinishReason r) {
    switch (r) {
      case sched::FinishReason::kStop: return FinishReason::kStop;
      case sched::FinishReason::kLength: return FinishReason::kLength;
      case sched::FinishReason::kAbort: return FinishReason::kAbort;
      case sched::FinishReason::kNone:
      case sched::FinishReason::kError: break;
    }
    XY_CHECK(false, "a choice finished with finish reason ", sched::to_string(r));
    return FinishReason::kStop;
  }

  std::vector<TokenLogprobs> logprobs_of(const engine::StreamEvent& e) const {
    std::vector<TokenLogprobs> out;
    if (!spec_.with_logprobs) return out;
    for (size_t i = 0; i < e.token_ids.size(); ++i) {
      TokenLogprobs t;
      t.token = token_text(e.token_ids[i]);
      if (i < e.logprobs.size()) t.logprob = e.logprobs[i];
      if (i < e.top_logprobs.size()) {
        const auto& top = e.top_logprobs[i];
        const size_t k = std::min(top.size(), size_t(std::max(spec_.num_top_logprobs, 0)));
        for (size_t j = 0; j < k; ++j) t.top.push_back({token_text(top[j].token), top[j].logprob});
      }
      out.push_back(std::move(t));
    }
    return out;
  }

  std::string token_text(int32_t id) const {
    const int32_t ids[1] = {id};
    return ctx_.tokenizer->decode(ids, /*skip_special_tokens=*/false);
  }

  // Takes every queued event of every choice; on the strand.
  void drain() {
    drain_posted_ = false;  // before taking: a push after this point posts a new drain
    std::string out;
    for (size_t i = 0; i < choices_.size(); ++i) {
      Choice& c = choices_[i];
      while (!c.finished) {
        std::optional<engine::StreamEvent> e = c.handle.stream->try_next();
        if (!e) break;
        take(int32_t(i), c, *e, out);
      }
    }
    if (!out.empty()) exchange_->send(std::move(out));
    if (!completed_ && std::all_of(choices_.begin(), choices_.end(), [](const Choice& c) { return c.finished; }))
      complete();
  }

  void take(int32_t index, Choice& c, engine::StreamEvent& e, std::string& out) {
    if (e.finish_reason == sched::FinishReason::kError) {
      // The engine died: the response becomes the error (complete()).
      XY_CHECK(!e.error.empty(), "request ", c.handle.id, " failed without a message");
      c.finished = true;
      failure_ = e.error;
      ctx_.metrics->record_failure(sched::to_string(e.finish_reason));
      return;
    }
    c.num_tokens += int64_t(e.token_ids.size());
    if (!e.token_ids.empty()) c.last_tokens = e.token_ids;
    std::vector<TokenLogprobs> lp = logprobs_of(e);
    ChoiceDelta delta;
    delta.index = index;
    if (e.finished) {
      c.finished = true;
      const FinishReason reason = finish_reason_of(e.finish_reason);
      delta.finish_reason = reason;
      c.output.finish_reason = reason;
      // vLLM's stop_reason: the stop string, or the stop token id, that ended the choice
      // (null for EOS and length).
      const auto& stop_ids = spec_.choices[size_t(index)].options.stop_token_ids;
      if (!e.stop_string.empty()) {
        delta.stop_reason = c.output.stop_reason = e.stop_string;
      } else if (e.finish_reason == sched::FinishReason::kStop && !c.last_tokens.empty() &&
                 std::find(stop_ids.begin(), stop_ids.end(), c.last_tokens.back()) != stop_ids.end()) {
        delta.stop_reason = c.output.stop_reason = c.last_tokens.back();
      }
      if (e.metrics) {
        FinishedRequest f;
        f.finished_reason = sched::to_string(e.finish_reason);
        f.num_prompt_tokens = e.metrics->num_prompt_tokens;
        f.num_output_tokens = e.metrics->num_output_tokens;
        f.ttft_s = e.metrics->ttft_s;
        f.tpot_s = e.metrics->tpot_s;
        f.e2e_s = e.metrics->e2e_s;
        ctx_.metrics->record(f);
      }
    }
    if (spec_.stream) {
      if (e.text.empty() && lp.empty() && !e.finished) return;
      delta.text = std::move(e.text);
      delta.logprobs = std::move(lp);
      if (chat_stream_) {
        for (const Json& chunk : chat_stream_->chunks(delta)) out += sse_event(chunk);
      } else {
        out += sse_event(completion_stream_->chunk(delta));
      }
    } else {
      c.output.text += e.text;
      for (auto& t : lp) c.output.logprobs.push_back(std::move(t));
    }
  }

  void complete() {
    completed_ = true;
    if (failure_) {
      respond_with_error();
    } else {
      respond();
    }
    --*ctx_.num_active;
    // Break the cycles (stream -> listener -> job -> stream; exchange <-> job).
    for (Choice& c : choices_) c.handle.stream.reset();
    exchange_.reset();
  }

  // The engine died under the request (every choice fails with it at once): a 500 error body,
  // or in a stream that has begun, one error event in the same shape, then [DONE]; OpenAI's
  // clients raise an APIError on an event that carries "error", as vLLM streams its errors.
  void respond_with_error() {
    const ApiError error = engine_failed(*failure_);
    if (spec_.stream) {
      exchange_->send(sse_event(error_body(error)) + sse_done());
      exchange_->end_stream();
    } else {
      HttpResponse r;
      r.status = error.http_status;
      r.body = json_text(error_body(error));
      exchange_->reply(std::move(r));
    }
  }

  void respond() {
    Usage usage;
    usage.prompt_tokens = spec_.num_prompt_tokens;
    for (const Choice& c : choices_) usage.completion_tokens += c.num_tokens;
    if (spec_.stream) {
      std::string out;
      std::optional<Json> u = chat_stream_ ? chat_stream_->usage_chunk(usage) : completion_stream_->usage_chunk(usage);
      if (u) out += sse_event(*u);
      out += sse_done();
      exchange_->send(std::move(out));
      exchange_->end_stream();
    } else {
      std::vector<ChoiceOutput> outputs;
      std::vector<EchoedPrompt> echo;
      bool any_echo = false;
      for (size_t i = 0; i < choices_.size(); ++i) {
        outputs.push_back(std::move(choices_[i].output));
        echo.push_back(EchoedPrompt{spec_.choices[i].echo_text, {}});
        any_echo = any_echo || !spec_.choices[i].echo_text.empty();
      }
      if (!any_echo) echo.clear();
      const Json body = spec_.api == ApiKind::kChat
                            ? chat_response(spec_.header, outputs, spec_.with_logprobs, usage)
                            : completion_response(spec_.header, outputs, echo, spec_.with_logprobs, usage);
      HttpResponse r;
      r.body = json_text(body);
      exchange_->reply(std::move(r));
    }
  }

  const JobContext ctx_;
  std::shared_ptr<Exchange> exchange_;
  boost::asio::any_io_executor executor_;
  JobSpec spec_;
  std::vector<Choice> choices_;
  std::optional<ChatStream> chat_stream_;
  std::optional<CompletionStream> completion_stream_;
  std::atomic<bool> drain_posted_{false};
  bool completed_ = false;
  std::optional<std::string> failure_;  // the engine's failure message, once a choice got it
};

}  // namespace

void start_generation_job(const JobContext& context, std::shared_ptr<Exchange> exchange, JobSpec spec) {
  auto job = std::make_shared<GenerationJob>(context, std::move(exchange), std::move(spec));
  job->start();
}

}  // namespace xy::server
