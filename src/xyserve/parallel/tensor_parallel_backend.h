// Tensor parallelism in one process (issue 8): N shard backends, one per rank, each with its
// shard of the weights (shard.h), its own KV cache of its KV heads, and its communicator. Every
// step, each rank runs the same StepPlan on its own thread (rank_threads.h) and the ranks meet
// in the collectives; every rank ends with the whole logits, and rank 0's are the result. The
// scheduler above sees one backend, and block tables are the same on every rank.
//
// Any Backend that runs a shard with a communicator can be a rank: the CPU backend with the
// in-process group (backend/cpu/cpu_tensor_parallel.h), or a GPU backend with NCCL.
//
// Threading: as Backend (the engine thread only). An error on one rank aborts the group, so
// the others do not wait forever for it, and is rethrown; the backend cannot run steps after
// that (every collective of the aborted group throws).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/model/weights.h"
#include "xyserve/parallel/communicator.h"
#include "xyserve/parallel/rank_threads.h"
#include "xyserve/parallel/shard.h"

namespace xy::parallel {

class TensorParallelBackend : public backend::Backend {
 public:
  // Makes rank `comm.rank()`'s backend from its shard; called on that rank's thread, for all
  // ranks at once (so it must be thread-safe across ranks). The shard may be freed afterwards.
  using ShardFactory =
      std::function<std::unique_ptr<backend::Backend>(const ShardedWeights& shard, Communicator& comm)>;

  // `comms`: one group, one communicator per rank in rank order. Shards `weights` and builds
  // every rank's backend. Throws InvalidArgument when the model does not split comms.size()
  // ways (shard.h), or what a rank's factory throws.
  TensorParallelBackend(const model::ModelWeights& weights,
                        std::vector<std::unique_ptr<Communicator>> comms, const ShardFactory& make_shard);
  ~TensorParallelBackend() override;

  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override;
  // Rank 0 samples the whole logits that it ends the step with; the other ranks run forward().
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override;

  std::optional<double> device_busy_s() const override;  // the slowest rank's
  int64_t vocab_size() const override { return ranks_[0]->vocab_size(); }
  // The least over the ranks (each sized its own cache), so that every rank has every block.
  int32_t num_kv_blocks() const override { return num_kv_blocks_; }
  int32_t block_size() const override { return ranks_[0]->block_size(); }

  int32_t tensor_parallel_size() const { return int32_t(ranks_.size()); }

 private:
  // Runs step(r) for every rank r on its thread; an error aborts the group and is rethrown.
  template <class Step>
  void run_ranks(Step&& step) {
    threads_.run(step, [this](int32_t r) { comms_[size_t(r)]->abort(); });
  }

  // Destroyed in reverse: the rank backends first, then their threads, then the communicators.
  std::vector<std::unique_ptr<Communicator>> comms_;
  RankThreads threads_;
  std::vector<std::unique_ptr<backend::Backend>> ranks_;
  std::vector<std::vector<float>> rank_logits_;  // ranks 1..N-1's logits, not used: reused buffers
  int32_t num_kv_blocks_ = 0;
};

}  // namespace xy::parallel
