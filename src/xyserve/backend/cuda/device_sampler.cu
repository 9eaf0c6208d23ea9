#include "xyserve/backend/cuda/device_sampler.h"

#include <cstring>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/sampling.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

constexpr size_t align8(size_t n) { return (n + 7) / 8 * 8; }

// Byte offsets of the parts of the output buffer.
struct OutLayout {
  size_t tokens = 0, logprobs = 0, top = 0, bytes = 0;
  OutLayout(size_t rows, size_t top_n) {
    logprobs = align8(rows * sizeof(int32_t));
    top = align8(logprobs + rows * sizeof(float));
    bytes = top + rows * top_n * sizeof(meta::TokenLogprob);
  }
};

}  // namespace

DeviceSampler::DeviceSampler() = default;
DeviceSampler::~DeviceSampler() = default;

void DeviceSampler::run(const float* logits, int64_t vocab, const meta::SamplingPlan& plan,
                        meta::SamplingOutput& out, cudaStream_t stream) {
  const size_t rows = plan.rows.size();
  const int32_t top_n = plan.max_top_logprobs();
  out.top_n = top_n;
  out.tokens.assign(rows, -1);
  out.logprobs.assign(rows, 0.0f);
  out.top_logprobs.assign(rows * size_t(top_n), meta::TokenLogprob{});
  out.logits.clear();
  if (rows == 0) {
    XY_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  if (vocab <= 0 || vocab > kMaxSamplingVocab)
    throw InvalidArgument(cat("sampling: vocabulary of ", vocab, " outside [1, ",
                              kMaxSamplingVocab, "] (the GPU sampler's limit)"));
  if (top_n > kMaxTopLogprobs)
    throw InvalidArgument(cat("sampling: logprobs ", top_n,
                              " asked; the GPU sampler returns at most ", kMaxTopLogprobs,
                              " top logprobs"));
  XY_CHECK(rows <= size_t(INT32_MAX), rows, " rows");

  // Pack: the rows, then the penalty entries, in one pinned buffer and one upload.
  const size_t num_penalties = plan.penalties.size();
  const size_t rows_bytes = rows * sizeof(SamplingRow);
  const size_t plan_bytes = rows_bytes + num_penalties * sizeof(meta::PenaltyToken);
  host_plan_.reserve(plan_bytes);
  auto* packed_rows = reinterpret_cast<SamplingRow*>(host_plan_.get());
  bool any_penalties = false, any_sampled = false;
  int32_t num_returned = 0;
  for (size_t i = 0; i < rows; ++i) {
    const meta::RowSampling& rs = plan.rows[i];
    XY_CHECK(rs.penalties_begin >= 0 && rs.penalties_begin <= rs.penalties_end &&
                 size_t(rs.penalties_end) <= num_penalties,
             "row ", i, " penalties [", rs.penalties_begin, ", ", rs.penalties_end, ") of ",
             num_penalties);
    SamplingRow& r = packed_rows[i];
    r = SamplingRow{};
    r.uniform = rs.uniform;
    r.temperature = rs.params.greedy() ? 0.0f : rs.params.temperature;
    r.top_p = rs.params.top_p;
    r.min_p = rs.params.min_p;
    r.repetition_penalty = rs.params.repetition_penalty;
    r.frequency_penalty = rs.params.frequency_penalty;
    r.presence_penalty = rs.params.presence_penalty;
    r.top_k = rs.params.top_k;
    r.num_top_logprobs = rs.params.logprobs > 0 ? rs.params.logprobs : 0;
    r.return_logits = rs.return_logits ? 1 : 0;
    // A return_logits row reads no penalties: an empty range keeps its bitmap unbuilt.
    r.penalties_begin = rs.return_logits ? 0 : rs.penalties_begin;
    r.penalties_end = rs.return_logits ? 0 : rs.penalties_end;
    if (rs.return_logits) {
      ++num_returned;
    } else {
      any_penalties = any_penalties || r.penalties_end > r.penalties_begin;
      any_sampled = any_sampled || r.temperature > 0.0f;
    }
  }
  auto* packed_penalties = reinterpret_cast<meta::PenaltyToken*>(host_plan_.get() + rows_bytes);
  for (size_t j = 0; j < num_penalties; ++j) {
    const meta::PenaltyToken& e = plan.penalties[j];
    XY_CHECK(e.token >= 0 && e.token < vocab, "penalty token id ", e.token, " outside [0, ",
             vocab, ")");
    packed_penalties[j] = e;
  }
  device_plan_.reserve(plan_bytes);
  XY_CUDA_CHECK(cudaMemcpyAsync(device_plan_.get(), host_plan_.get(), plan_bytes,
                                cudaMemcpyHostToDevice, stream));

  const OutLayout layout(rows, size_t(top_n));
  device_out_.reserve(layout.bytes);
  host_out_.reserve(layout.bytes);
  SamplingArgs args;
  args.logits = logits;
  args.vocab = vocab;
  args.num_rows = int32_t(rows);
  args.rows = reinterpret_cast<const SamplingRow*>(device_plan_.get());
  args.penalties = reinterpret_cast<const meta::PenaltyToken*>(device_plan_.get() + rows_bytes);
  args.any_penalties = any_penalties;
  args.any_sampled = any_sampled;
  args.top_n = top_n;
  args.tokens = reinterpret_cast<int32_t*>(device_out_.get() + layout.tokens);
  args.logprobs = reinterpret_cast<float*>(device_out_.get() + layout.logprobs);
  args.top_logprobs = reinterpret_cast<meta::TokenLogprob*>(device_out_.get() + layout.top);
  launch_sampling(args, stream);
  // Tokens and logprobs, and the top logprobs only when some row asked (top_n > 0).
  XY_CUDA_CHECK(cudaMemcpyAsync(host_out_.get(), device_out_.get(), layout.bytes,
                                cudaMemcpyDeviceToHost, stream));

  // The return_logits rows straight from the logits, one copy per run of consecutive rows.
  // out.logits is pageable, so each copy returns once done; the rows are rare (sampled verifies).
  if (num_returned > 0) {
    out.logits.resize(size_t(num_returned) * size_t(vocab));
    size_t dst_row = 0;
    for (size_t i = 0; i < rows;) {
      if (!plan.rows[i].return_logits) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < rows && plan.rows[j].return_logits) ++j;
      XY_CUDA_CHECK(cudaMemcpyAsync(out.logits.data() + dst_row * size_t(vocab),
                                    logits + i * size_t(vocab),
                                    (j - i) * size_t(vocab) * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
      dst_row += j - i;
      i = j;
    }
  }
  XY_CUDA_CHECK(cudaStreamSynchronize(stream));

  std::memcpy(out.tokens.data(), host_out_.get() + layout.tokens, rows * sizeof(int32_t));
  std::memcpy(out.logprobs.data(), host_out_.get() + layout.logprobs, rows * sizeof(float));
  if (top_n > 0)
    std::memcpy(static_cast<void*>(out.top_logprobs.data()), host_out_.get() + layout.top,
                rows * size_t(top_n) * sizeof(meta::TokenLogprob));
  for (size_t i = 0; i < rows; ++i) {
    const int32_t t = out.tokens[i];
    XY_CHECK(t != kSamplingNoFiniteLogit, "row ", i,
             ": no token has a finite probability (logits all -inf, or NaN or +inf)");
    XY_CHECK(t != kSamplingDuplicatePenalty, "row ", i,
             ": a token appears twice in the row's penalty entries");
    XY_CHECK(plan.rows[i].return_logits ? t == -1 : (t >= 0 && t < vocab), "row ", i, " token ", t);
  }
}

}  // namespace xy::cuda
