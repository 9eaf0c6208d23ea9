// A step that throws (a CUDA error, a node of a tensor-parallel group that died) kills the
// engine cleanly: every request, running, waiting in the scheduler or still in the inbox,
// finishes at once with the error; nothing runs on the backend again; later submits are
// refused with the same error; nobody waits forever. The failures come from FailingBackend
// (tests/support), which wraps the CPU backend.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>

#include "engine/tiny_model.h"
#include "support/failing_backend.h"

namespace xy::engine {
namespace {

using testing::FailingBackend;
using testing::greedy_options;
using testing::outputs_of;
using testing::random_prompts;
using testing::tiny_backend;

const std::string kCause = "node 1 (10.0.0.2:29500) failed: connection reset by peer";

std::exception_ptr backend_error() { return std::make_exception_ptr(std::runtime_error(kCause)); }

struct Collected {
  std::vector<int32_t> tokens;
  StreamEvent last;
};

// Every event of `h` up to the finishing one; fails the test instead of hanging when the
// finishing event does not come.
Collected collect(const Engine::Handle& h) {
  Collected c;
  while (true) {
    std::optional<StreamEvent> e = h.stream->next_for(std::chrono::seconds(60));
    if (!e) {
      ADD_FAILURE() << "request " << h.id << " never finished";
      return c;
    }
    c.tokens.insert(c.tokens.end(), e->token_ids.begin(), e->token_ids.end());
    if (e->finished) {
      c.last = std::move(*e);
      return c;
    }
  }
}

TEST(EngineFailureTest, AFailedStepFinishesRunningWaitingAndQueuedRequestsWithTheError) {
  const auto prompts = random_prompts(5, 4, 30, 41);
  const GenerationOptions options = greedy_options(20);
  std::vector<std::vector<int32_t>> expected;
  {
    auto healthy = tiny_backend("llama");
    Engine reference(*healthy, nullptr, {});
    expected = outputs_of(reference.generate_batch(prompts, options));
  }

  auto inner = tiny_backend("llama");
  FailingBackend backend(*inner, FailingBackend::at_call(3), backend_error());
  EngineConfig config;
  config.scheduler.max_num_seqs = 2;  // two run, three wait in the scheduler
  Engine engine(backend, nullptr, config);
  std::atomic<int> num_failure_calls{0};
  std::string listener_message;
  engine.set_failure_listener([&](const std::string& message) {
    ++num_failure_calls;
    listener_message = message;
  });
  std::vector<Engine::Handle> handles;
  for (const auto& p : prompts) handles.push_back(engine.submit(p, options));
  // One more request arrives while the failing step runs: it is still in the inbox then.
  std::optional<Engine::Handle> queued;
  backend.set_before_failure([&] { queued = engine.submit(prompts[0], options); });
  engine.start();

  const std::string& message = kCause;
  size_t num_with_tokens = 0;
  for (size_t i = 0; i < handles.size(); ++i) {
    const Collected c = collect(handles[i]);
    EXPECT_TRUE(c.last.finished);
    EXPECT_EQ(c.last.error, message) << "request " << i;
    EXPECT_EQ(c.last.finish_reason, sched::FinishReason::kError) << "request " << i;
    EXPECT_LT(c.tokens.size(), expected[i].size());
    // What went out before the failure is what a healthy engine writes.
    EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), expected[i].begin())) << "request " << i;
    num_with_tokens += c.tokens.empty() ? 0 : 1;
  }
  EXPECT_EQ(num_with_tokens, 2u) << "the two running requests stream tokens before the failure";
  ASSERT_TRUE(queued.has_value());
  const Collected q = collect(*queued);
  EXPECT_TRUE(q.tokens.empty());
  EXPECT_EQ(q.last.error, message);
  EXPECT_EQ(q.last.finish_reason, sched::FinishReason::kError);

  EXPECT_EQ(engine.failure(), std::optional<std::string>(message));
  try {
    engine.submit(prompts[1], options);
    ADD_FAILURE() << "a dead engine accepted a request";
  } catch (const EngineDeadError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
  engine.cancel(handles[0].id);  // harmless on a dead engine
  engine.stop();                 // the engine thread has ended: this joins at once
  EXPECT_EQ(backend.num_calls(), 4) << "the backend ran after the failed step";
  EXPECT_EQ(num_failure_calls.load(), 1);
  EXPECT_EQ(listener_message, message);
}

TEST(EngineFailureTest, StepOnTheCallingThreadThrowsEngineDeadAndNeverRunsTheBackendAgain) {
  auto inner = tiny_backend("qwen2");
  FailingBackend backend(*inner, FailingBackend::at_call(2), backend_error());
  Engine engine(backend, nullptr, {});
  const auto prompts = random_prompts(3, 5, 20, 42);
  std::vector<Engine::Handle> handles;
  for (const auto& p : prompts) handles.push_back(engine.submit(p, greedy_options(10)));
  EXPECT_TRUE(engine.step());
  EXPECT_TRUE(engine.step());
  EXPECT_THROW(engine.step(), EngineDeadError);
  EXPECT_EQ(backend.num_calls(), 3);
  for (const auto& h : handles) {
    const Collected c = collect(h);
    EXPECT_EQ(c.tokens.size(), 2u);
    EXPECT_EQ(c.last.error, kCause);
    EXPECT_EQ(c.last.finish_reason, sched::FinishReason::kError);
  }
  EXPECT_THROW(engine.step(), EngineDeadError);
  EXPECT_THROW(engine.generate_batch(prompts, greedy_options(10)), EngineDeadError);
  EXPECT_EQ(backend.num_calls(), 3);
}

// The client's cancel and the engine's death are told apart: a request cancelled before the
// failure keeps kAbort and gets no error; only the ones the failure ended get kError.
TEST(EngineFailureTest, ARequestCancelledBeforeTheFailureStaysAborted) {
  auto inner = tiny_backend("llama");
  FailingBackend backend(*inner, FailingBackend::at_call(1), backend_error());
  Engine engine(backend, nullptr, {});
  const auto prompts = random_prompts(2, 5, 20, 45);
  const Engine::Handle cancelled = engine.submit(prompts[0], greedy_options(10));
  const Engine::Handle failed = engine.submit(prompts[1], greedy_options(10));
  EXPECT_TRUE(engine.step());
  engine.cancel(cancelled.id);
  // The cancel finishes its request at the start of the step whose backend call then fails.
  EXPECT_THROW(engine.step(), EngineDeadError);
  const Collected c = collect(cancelled);
  EXPECT_EQ(c.last.finish_reason, sched::FinishReason::kAbort);
  EXPECT_TRUE(c.last.error.empty()) << c.last.error;
  const Collected f = collect(failed);
  EXPECT_EQ(f.last.finish_reason, sched::FinishReason::kError);
  EXPECT_EQ(f.last.error, kCause);
}

TEST(EngineFailureTest, GenerateBatchThrowsTheErrorInsteadOfWaiting) {
  auto inner = tiny_backend("qwen3");
  const auto prompts = random_prompts(4, 5, 20, 43);
  for (const bool threaded : {false, true}) {
    FailingBackend backend(*inner, FailingBackend::at_call(1), backend_error());
    Engine engine(backend, nullptr, {});
    if (threaded) engine.start();
    try {
      engine.generate_batch(prompts, greedy_options(16));
      ADD_FAILURE() << "generate_batch returned from a dead engine (threaded " << threaded << ")";
    } catch (const EngineDeadError& e) {
      EXPECT_EQ(std::string(e.what()), kCause);
    }
    engine.stop();
  }
}

TEST(EngineFailureTest, AnExceptionOfNoKnownTypeFailsTheEngineAsUnknownError) {
  auto inner = tiny_backend("llama");
  FailingBackend backend(*inner, FailingBackend::at_call(0), std::make_exception_ptr(7));
  Engine engine(backend, nullptr, {});
  engine.start();
  const Engine::Handle h = engine.submit(random_prompts(1, 5, 5, 44)[0], greedy_options(4));
  const Collected c = collect(h);
  EXPECT_EQ(c.last.error, "unknown error");
  EXPECT_EQ(c.last.finish_reason, sched::FinishReason::kError);
  engine.stop();
  EXPECT_EQ(engine.failure(), std::optional<std::string>("unknown error"));
}

}  // namespace
}  // namespace xy::engine
