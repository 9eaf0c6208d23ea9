// A backend runs a StepPlan through the model: it owns the weights in its compute dtype and the
// paged KV cache, and knows nothing of requests beyond what the plan says.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "xyserve/meta/sampling_plan.h"
#include "xyserve/meta/step_plan.h"

namespace xy::backend {

class Backend {
 public:
  virtual ~Backend() = default;

  // Runs the plan's M rows through every layer, writing each row's K and V into the KV block
  // slot the plan names for its position, and fills `logits` with [plan.num_logits_rows(),
  // vocab] fp32 values, requests in plan order. Runs only on the engine thread.
  virtual void forward(const meta::StepPlan& plan, std::vector<float>& logits) = 0;

  // Runs the plan as forward() does and samples each logits row as `sampling` says (one
  // RowSampling per logits row, plan order; the rules are meta/sampling_plan.h's), so that
  // only tokens and the logprobs and logits rows asked for leave the backend. The engine's path.
  virtual void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                                  meta::SamplingOutput& out) = 0;
  // Runs the plan as forward() does and returns nothing: what a tensor-parallel rank other than 0
  // runs, whose logits are rank 0's (the vocabulary-parallel LM head gathers them on every rank).
  // A backend whose logits live off the host overrides it to leave them there; the default calls
  // forward() and drops them.
  virtual void forward_without_logits(const meta::StepPlan& plan) {
    std::vector<float> dropped;
    forward(plan, dropped);
  }

  // Device time spent on steps so far, in seconds, where the backend measures it (the CUDA
  // backend, with events around each step); nullopt where the host is the device.
  virtual std::optional<double> device_busy_s() const { return std::nullopt; }

  virtual int64_t vocab_size() const = 0;
  virtual int32_t num_kv_blocks() const = 0;
  virtual int32_t block_size() const = 0;
};

}  // namespace xy::backend
