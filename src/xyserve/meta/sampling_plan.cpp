#include "xyserve/meta/sampling_plan.h"

#include <algorithm>

namespace xy::meta {

void append_penalty_tokens(const SamplingParams& params, std::span<const int32_t> prompt,
                           std::span<const int32_t> output, std::vector<PenaltyToken>& out,
                           std::vector<int32_t>& scratch) {
  const bool repetition = params.repetition_penalty != 1.0f;
  if (!repetition && params.frequency_penalty == 0.0f && params.presence_penalty == 0.0f) return;
  // Output tokens are tagged (id * 2 + 1) and prompt ones (id * 2), so that after sorting each
  // distinct id's output occurrences can be counted in one pass.
  scratch.clear();
  for (const int32_t t : output) scratch.push_back(t * 2 + 1);
  if (repetition)
    for (const int32_t t : prompt) scratch.push_back(t * 2);
  std::sort(scratch.begin(), scratch.end());
  for (size_t i = 0; i < scratch.size();) {
    const int32_t id = scratch[i] >> 1;
    int32_t count = 0;
    for (; i < scratch.size() && (scratch[i] >> 1) == id; ++i) count += scratch[i] & 1;
    out.push_back({id, count});
  }
}

}  // namespace xy::meta
