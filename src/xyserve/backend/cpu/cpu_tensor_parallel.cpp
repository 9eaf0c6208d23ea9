#include "xyserve/backend/cpu/cpu_tensor_parallel.h"

#include <algorithm>
#include <thread>

#include "xyserve/common/check.h"
#include "xyserve/parallel/in_process_communicator.h"
#include "xyserve/parallel/tensor_parallel_backend.h"

namespace xy::backend::cpu {

std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cpu_backend(
    const model::ModelWeights& weights, const CpuBackendOptions& options, int32_t tensor_parallel_size) {
  XY_CHECK(options.communicator == nullptr, "the tensor-parallel backend makes its own communicators");
  parallel::check_tensor_parallel(weights.config, tensor_parallel_size);
  const int total_threads =
      options.num_threads > 0 ? options.num_threads : int(std::max(1u, std::thread::hardware_concurrency()));
  CpuBackendOptions rank_options = options;
  rank_options.num_threads = std::max(1, total_threads / tensor_parallel_size);
  return std::make_unique<parallel::TensorParallelBackend>(
      weights, parallel::make_in_process_group(tensor_parallel_size),
      [&](const parallel::ShardedWeights& shard, parallel::Communicator& comm) -> std::unique_ptr<Backend> {
        CpuBackendOptions o = rank_options;
        o.communicator = &comm;
        o.shard = shard.info;
        return std::make_unique<CpuBackend>(shard.weights, o);
      });
}

}  // namespace xy::backend::cpu
