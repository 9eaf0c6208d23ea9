#include "xyserve/parallel/tensor_parallel_backend.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::parallel {

TensorParallelBackend::TensorParallelBackend(const model::ModelWeights& weights,
                                             std::vector<std::unique_ptr<Communicator>> comms,
                                             const ShardFactory& make_shard)
    : comms_(std::move(comms)), threads_(int32_t(comms_.size())) {
  const int32_t num_local = int32_t(comms_.size());
  XY_CHECK(num_local >= 1, "tensor-parallel ranks in this process: ", num_local);
  const int32_t first = comms_[0]->rank();
  const int32_t size = comms_[0]->size();
  for (int32_t i = 0; i < num_local; ++i)
    XY_CHECK(comms_[size_t(i)]->rank() == first + i && comms_[size_t(i)]->size() == size, "communicator ", i,
             " is rank ", comms_[size_t(i)]->rank(), " of ", comms_[size_t(i)]->size(), "; expected ", first + i,
             " of ", size);
  check_tensor_parallel(weights.config, size);
  ranks_.resize(size_t(num_local));
  // Each rank slices and converts its own shard, in parallel; a GPU rank binds its device on
  // the thread that will run its steps.
  run_ranks([&](int32_t i) {
    const ShardedWeights shard = shard_weights(weights, first + i, size);
    ranks_[size_t(i)] = make_shard(shard, *comms_[size_t(i)]);
  });
  num_kv_blocks_ = ranks_[0]->num_kv_blocks();
  for (const auto& rank : ranks_) {
    XY_CHECK(rank->vocab_size() == ranks_[0]->vocab_size() && rank->block_size() == ranks_[0]->block_size(),
             "ranks disagree on vocab_size or block_size");
    num_kv_blocks_ = std::min(num_kv_blocks_, rank->num_kv_blocks());
  }
}

TensorParallelBackend::~TensorParallelBackend() = default;

void TensorParallelBackend::forward(const meta::StepPlan& plan, std::vector<float>& logits) {
  run_ranks([&](int32_t r) {
    if (r == 0) ranks_[0]->forward(plan, logits);
    else ranks_[size_t(r)]->forward_without_logits(plan);
  });
}

void TensorParallelBackend::forward_and_sample(const meta::StepPlan& plan,
                                               const meta::SamplingPlan& sampling,
                                               meta::SamplingOutput& out) {
  run_ranks([&](int32_t r) {
    if (r == 0) ranks_[0]->forward_and_sample(plan, sampling, out);
    else ranks_[size_t(r)]->forward_without_logits(plan);
  });
}

void TensorParallelBackend::follow(const meta::StepPlan& plan) {
  run_ranks([&](int32_t i) { ranks_[size_t(i)]->forward_without_logits(plan); });
}

void TensorParallelBackend::abort() {
  for (auto& comm : comms_) comm->abort();
}

std::optional<double> TensorParallelBackend::device_busy_s() const {
  std::optional<double> busy;
  for (const auto& rank : ranks_) {
    if (auto b = rank->device_busy_s()) busy = std::max(busy.value_or(0.0), *b);
  }
  return busy;
}

}  // namespace xy::parallel
