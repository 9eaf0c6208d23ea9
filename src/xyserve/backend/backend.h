// A backend runs a StepPlan through the model: it owns the weights in its compute dtype and the
// paged KV cache, and knows nothing of requests beyond what the plan says.
#pragma once

#include <cstdint>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::backend {

class Backend {
 public:
  virtual ~Backend() = default;

  // Runs the plan's M rows through every layer, writing each row's K and V into the KV block
  // slot the plan names for its position, and fills `logits` with [plan.num_logits_rows(),
  // vocab] fp32 values, requests in plan order. Runs only on the engine thread.
  virtual void forward(const meta::StepPlan& plan, std::vector<float>& logits) = 0;

  virtual int64_t vocab_size() const = 0;
  virtual int32_t num_kv_blocks() const = 0;
  virtual int32_t block_size() const = 0;
};

}  // namespace xy::backend
