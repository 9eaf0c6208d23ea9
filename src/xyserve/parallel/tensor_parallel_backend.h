// Tensor parallelism in one process (issue 8): N shard backends, one per rank, each with its
// shard of the weights (shard.h), its own KV cache of its KV heads, and its communicator. Every
// step, each rank runs the same StepPlan on its own thread (rank_threads.h) and the ranks meet
// in the collectives; every rank ends with the whole logits, and rank 0's are the result. The
// scheduler above sees one backend, and block tables are the same on every rank.
//
// Any Backend that runs a shard with a communicator can be a rank: the CPU backend with the
// in-process group (backend/cpu/cpu_tensor_parallel.h), or a GPU backend with NCCL.
//
// Across processes (--nnodes > 1, node_group.h), one TensorParallelBackend per process holds
// that process's ranks, a consecutive slice of the group: node 0's, with rank 0, is the engine's
// backend; the other nodes' run the same plans through follow().
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

  // `comms`: this process's communicators of one group, consecutive ranks in rank order (all
  // of the group's when it lives in one process). Shards `weights` and builds every local
  // rank's backend. Throws InvalidArgument when the model does not split the group's size ways
  // (shard.h), or what a rank's factory throws.
  TensorParallelBackend(const model::ModelWeights& weights,
                        std::vector<std::unique_ptr<Communicator>> comms, const ShardFactory& make_shard);
  ~TensorParallelBackend() override;

  // The logits are the first local rank's: the whole logits when it is rank 0.
  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override;
  // The first local rank samples the whole logits that it ends the step with; the other ranks
  // run forward_without_logits() (a GPU rank's logits stay on its device).
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override;
  // Runs the plan on every local rank and drops the logits: a node other than 0 taking its part
  // in a step that node 0 samples.
  void follow(const meta::StepPlan& plan);
  // Aborts every local rank's communicator, so that no rank of the group (here or in another
  // process) waits for this process any longer; the backend cannot run steps after that.
  void abort();

  std::optional<double> device_busy_s() const override;  // the slowest rank's
  int64_t vocab_size() const override { return ranks_[0]->vocab_size(); }
  // The least over the ranks (each sized its own cache), so that every rank has every block.
  int32_t num_kv_blocks() const override { return num_kv_blocks_; }
  int32_t block_size() const override { return ranks_[0]->block_size(); }

  int32_t tensor_parallel_size() const { return comms_[0]->size(); }
  int32_t first_rank() const { return comms_[0]->rank(); }
  int32_t num_local_ranks() const { return int32_t(ranks_.size()); }

 private:
  // Runs step(i) for every local rank i (rank first_rank() + i) on its thread; an error aborts
  // the group and is rethrown.
  template <class Step>
  void run_ranks(Step&& step) {
    threads_.run(step, [this](int32_t i) { comms_[size_t(i)]->abort(); });
  }

  // Destroyed in reverse: the rank backends first, then their threads, then the communicators.
  std::vector<std::unique_ptr<Communicator>> comms_;
  RankThreads threads_;
  std::vector<std::unique_ptr<backend::Backend>> ranks_;
  int32_t num_kv_blocks_ = 0;
};

}  // namespace xy::parallel
