// A backend that fails on purpose, for tests of what the engine and the server do when a step
// throws (a CUDA error, a node of a tensor-parallel group that died). It wraps a real backend
// and runs its steps until `fail_when` says the coming step fails; that step throws
// `exception` instead of running. Test-only: production code has no way to inject a fault.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "xyserve/backend/backend.h"

namespace xy::testing {

class FailingBackend : public backend::Backend {
 public:
  // `call` counts the forward calls from 0, this one included.
  using FailWhen = std::function<bool(const meta::StepPlan& plan, int64_t call)>;

  FailingBackend(backend::Backend& inner, FailWhen fail_when, std::exception_ptr exception)
      : inner_(inner), fail_when_(std::move(fail_when)), exception_(std::move(exception)) {}

  // The `k`-th forward call (from 0) fails.
  static FailWhen at_call(int64_t k) {
    return [k](const meta::StepPlan&, int64_t call) { return call == k; };
  }

  // Runs on the engine thread just before the failing step throws (to queue a request at that
  // moment, say).
  void set_before_failure(std::function<void()> hook) { before_failure_ = std::move(hook); }

  // Forward calls so far, the failed one included (the engine must make none after it).
  int64_t num_calls() const { return num_calls_.load(); }

  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override {
    maybe_fail(plan);
    inner_.forward(plan, logits);
  }
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override {
    maybe_fail(plan);
    inner_.forward_and_sample(plan, sampling, out);
  }
  std::optional<double> device_busy_s() const override { return inner_.device_busy_s(); }
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  int32_t num_kv_blocks() const override { return inner_.num_kv_blocks(); }
  int32_t block_size() const override { return inner_.block_size(); }

 private:
  void maybe_fail(const meta::StepPlan& plan) {
    const int64_t call = num_calls_++;
    if (!fail_when_(plan, call)) return;
    if (before_failure_) before_failure_();
    std::rethrow_exception(exception_);
  }

  backend::Backend& inner_;
  FailWhen fail_when_;
  std::exception_ptr exception_;
  std::function<void()> before_failure_;
  std::atomic<int64_t> num_calls_{0};
};

}  // namespace xy::testing
