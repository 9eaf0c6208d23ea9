#include "xyserve/backend/cuda/cuda_tensor_parallel.h"

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
  return std::make_unique<parallel::TensorParallelBackend>(
      weights, std::move(comms),
      // On rank r's thread: CudaBackend makes devices[r] current for it before it allocates.
      [&](const parallel::ShardedWeights& shard, parallel::Communicator& comm) -> std::unique_ptr<Backend> {
        CudaBackendOptions o = options;
        o.device = devices[size_t(shard.info.rank)];
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

}  // namespace xy::backend::cuda
