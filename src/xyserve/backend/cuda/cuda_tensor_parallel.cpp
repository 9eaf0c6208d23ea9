#include "xyserve/backend/cuda/cuda_tensor_parallel.h"

#include <algorithm>
#include <cstring>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/parallel/nccl/nccl_communicator.h"
#include "xyserve/parallel/shard.h"

namespace xy::backend::cuda {

std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cuda_backend(
    const model::ModelWeights& weights, const CudaBackendOptions& options,
    std::vector<std::unique_ptr<parallel::Communicator>> comms, const std::vector<int>& devices,
    const CommunicatorStreamBinder& bind_stream) {
  XY_CHECK(options.communicator == nullptr, "the tensor-parallel backend makes its own communicators");
  XY_CHECK(comms.size() == devices.size(), comms.size(), " communicators for ", devices.size(), " devices");
  XY_CHECK(bool(bind_stream), "no stream binder");
  XY_CHECK(!comms.empty(), "no communicators");
  const int32_t first_rank = comms[0]->rank();
  return std::make_unique<parallel::TensorParallelBackend>(
      weights, std::move(comms),
      // On rank r's thread: CudaBackend makes its device current for it before it allocates.
      [&](const parallel::ShardedWeights& shard, parallel::Communicator& comm) -> std::unique_ptr<Backend> {
        CudaBackendOptions o = options;
        o.device = devices[size_t(shard.info.rank - first_rank)];
        o.communicator = &comm;
        o.shard = shard.info;
        // The communicators outlive the rank backends (TensorParallelBackend's member order);
        // the binder is copied, since the options are kept.
        o.bind_communicator_stream = [&comm, bind_stream](cudaStream_t stream) { bind_stream(comm, stream); };
        return std::make_unique<CudaBackend>(shard.weights, o);
      });
}

std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cuda_backend(
    const model::ModelWeights& weights, const CudaBackendOptions& options, int32_t tensor_parallel_size,
    const std::vector<int>& devices) {
  if (int64_t(devices.size()) != int64_t(tensor_parallel_size))
    throw InvalidArgument(cat("tensor parallel size ", tensor_parallel_size, " needs as many GPUs; given ",
                              devices.size()));
  // Before NCCL starts: a model that does not split is the user's error, named as such.
  parallel::check_tensor_parallel(weights.config, tensor_parallel_size);
  return make_tensor_parallel_cuda_backend(
      weights, options, parallel::make_nccl_group(devices), devices,
      [](parallel::Communicator& comm, cudaStream_t stream) {
        static_cast<parallel::NcclCommunicator&>(comm).set_stream(stream);
      });
}

parallel::NodeRanks join_tensor_parallel_cuda_nodes(const model::ModelWeights& weights,
                                                    const CudaBackendOptions& options, const std::vector<int>& devices,
                                                    const parallel::NodeGroupOptions& nodes) {
  const int32_t size = nodes.tensor_parallel_size;
  const int32_t per_node = size / std::max(1, nodes.rendezvous.nnodes);
  if (int64_t(devices.size()) != int64_t(per_node))
    throw InvalidArgument(cat("tensor parallel size ", size, " over ", nodes.rendezvous.nnodes, " nodes needs ",
                              per_node, " GPUs on each node; given ", devices.size()));
  parallel::check_tensor_parallel(weights.config, size);
  return parallel::join_node_group(
      nodes,
      [] {
        const ncclUniqueId id = parallel::NcclCommunicator::make_unique_id();
        const auto* bytes = reinterpret_cast<const uint8_t*>(&id);
        return std::vector<uint8_t>(bytes, bytes + sizeof id);
      },
      [&](std::span<const uint8_t> group_id, int32_t first_rank, int32_t num_ranks) {
        ncclUniqueId id;
        if (group_id.size() != sizeof id)
          throw Error(cat("the NCCL group id from node 0 has ", group_id.size(), " bytes, not ", sizeof id));
        std::memcpy(&id, group_id.data(), sizeof id);
        XY_CHECK(num_ranks == int32_t(devices.size()), num_ranks, " ranks for ", devices.size(), " devices");
        return make_tensor_parallel_cuda_backend(weights, options,
                                                 parallel::make_nccl_group(id, first_rank, size, devices,
                                                                           nodes.rendezvous.timeout),
                                                 devices,
                                                 [](parallel::Communicator& comm, cudaStream_t stream) {
                                                   static_cast<parallel::NcclCommunicator&>(comm).set_stream(stream);
                                                 });
      });
}

}  // namespace xy::backend::cuda
