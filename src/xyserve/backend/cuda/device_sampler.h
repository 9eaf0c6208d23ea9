// Samples a step's logits rows where they are, on the GPU, by meta/sampling_plan.h's rules
// (the kernel: kernels/sampling.h), so that only tokens, logprobs, the top logprobs asked for
// and the raw rows of return_logits rows come back to the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/meta/sampling_plan.h"

namespace xy::cuda {

// Samples a step's logits rows on the device (meta/sampling_plan.h's rules).
// Threading: engine thread only.
class DeviceSampler {
 public:
  DeviceSampler();
  ~DeviceSampler();
  // logits: [plan.rows.size(), vocab] fp32 on the device, written by work already enqueued on
  // `stream`. Packs the plan into one pinned buffer, uploads it with one copy, samples, copies
  // back tokens, logprobs, top logprobs (only when some row asks) and the return_logits rows,
  // and synchronises `stream` before returning.
  // Throws InvalidArgument when the vocabulary or plan.max_top_logprobs() exceeds the kernel's
  // limits (kMaxSamplingVocab, kMaxTopLogprobs); a malformed plan (penalty range or token id
  // out of bounds, a token twice in a row's penalties) or a row with no finite logit fails a
  // check, as it does in backend::cpu::sample_rows.
  void run(const float* logits, int64_t vocab, const meta::SamplingPlan& plan,
           meta::SamplingOutput& out, cudaStream_t stream);

 private:
  // Buffers grow to the largest step seen and are reused: a warm step allocates nothing.
  PinnedBuffer<std::byte> host_plan_;  // [rows] SamplingRow, then [penalties] PenaltyToken
  DeviceBuffer<std::byte> device_plan_;
  DeviceBuffer<std::byte> device_out_;  // [rows] tokens, [rows] logprobs, [rows, top_n] top
  PinnedBuffer<std::byte> host_out_;
};

}  // namespace xy::cuda
