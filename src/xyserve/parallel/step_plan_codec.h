// The StepPlan on the wire: node 0 sends each step's plan to the other nodes of a multi-node
// group, which run it on their ranks (node_group.h). Compact and binary: a version byte, then
// every field in declaration order, integers little-endian at their own width, arrays prefixed
// with their length. Only the StepPlan travels: the other nodes' ranks run forward() and leave
// sampling to rank 0, so the SamplingPlan never leaves node 0.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xyserve/meta/step_plan.h"

namespace xy::parallel {

// Bumped whenever the encoding changes; a node with another version is refused.
inline constexpr uint8_t kStepPlanCodecVersion = 1;

// Appends the encoding of `plan` to `out`.
void encode_step_plan(const meta::StepPlan& plan, std::vector<uint8_t>& out);

// Decodes `bytes` into `plan`, reusing its storage (no allocation once a step of that size has
// been seen). Throws Error for another version, a truncated plan or trailing bytes.
void decode_step_plan(std::span<const uint8_t> bytes, meta::StepPlan& plan);

}  // namespace xy::parallel
