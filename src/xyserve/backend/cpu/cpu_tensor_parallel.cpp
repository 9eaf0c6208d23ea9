#include "xyserve/backend/cpu/cpu_tensor_parallel.h"

#include <algorithm>
#include <thread>

#include "xyserve/common/check.h"
#include "xyserve/parallel/in_process_communicator.h"
#include "xyserve/parallel/tcp_communicator.h"
#include "xyserve/parallel/wire_format.h"
#include "xyserve/parallel/tensor_parallel_backend.h"

namespace xy::backend::cpu {

namespace {

// Each rank's options: an equal share of the threads of the ranks in this process.
CpuBackendOptions rank_options(const CpuBackendOptions& options, int32_t num_local_ranks) {
  XY_CHECK(options.communicator == nullptr, "the tensor-parallel backend makes its own communicators");
  const int total_threads =
      options.num_threads > 0 ? options.num_threads : int(std::max(1u, std::thread::hardware_concurrency()));
  CpuBackendOptions o = options;
  o.num_threads = std::max(1, total_threads / num_local_ranks);
  return o;
}

parallel::TensorParallelBackend::ShardFactory shard_factory(const CpuBackendOptions& rank_options) {
  return [rank_options](const parallel::ShardedWeights& shard, parallel::Communicator& comm) -> std::unique_ptr<Backend> {
    CpuBackendOptions o = rank_options;
    o.communicator = &comm;
    o.shard = shard.info;
    return std::make_unique<CpuBackend>(shard.weights, o);
  };
}

}  // namespace

std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cpu_backend(
    const model::ModelWeights& weights, const CpuBackendOptions& options, int32_t tensor_parallel_size) {
  parallel::check_tensor_parallel(weights.config, tensor_parallel_size);
  return std::make_unique<parallel::TensorParallelBackend>(
      weights, parallel::make_in_process_group(tensor_parallel_size),
      shard_factory(rank_options(options, tensor_parallel_size)));
}

parallel::NodeRanks join_tensor_parallel_cpu_nodes(const model::ModelWeights& weights, const CpuBackendOptions& options,
                                                   const parallel::NodeGroupOptions& nodes) {
  const parallel::RendezvousOptions& rv = nodes.rendezvous;
  const int32_t size = nodes.tensor_parallel_size;
  parallel::check_tensor_parallel(weights.config, size);
  std::unique_ptr<parallel::TcpGroupHub> hub;  // node 0's, from the group id to the group
  return parallel::join_node_group(
      nodes,
      [&] {
        hub = std::make_unique<parallel::TcpGroupHub>(parallel::listen_host_for(rv.master_addr), size);
        std::vector<uint8_t> id;
        parallel::WireWriter(id).put(hub->port());
        return id;
      },
      [&](std::span<const uint8_t> id, int32_t first_rank, int32_t num_ranks) {
        parallel::WireReader r(id, "the CPU group id (rank 0's port)");
        parallel::TcpGroupOptions o;
        o.hub_host = rv.master_addr;
        o.hub_port = r.get<uint16_t>();
        r.expect_end();
        o.size = size;
        o.first_rank = first_rank;
        o.num_ranks = num_ranks;
        o.timeout = rv.timeout;
        return std::make_unique<parallel::TensorParallelBackend>(
            weights, parallel::make_tcp_group(o, std::move(hub)), shard_factory(rank_options(options, num_ranks)));
      });
}

}  // namespace xy::backend::cpu
