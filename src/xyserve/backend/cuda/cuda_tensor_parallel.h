// The CUDA backend under tensor parallelism (issue 8; DESIGN.md "Scale"): one CudaBackend rank
// per GPU, each running its shard of the model (parallel/shard.h) on its own thread with its
// device current, joined by an NCCL group whose collectives run on each rank's stream (so decode
// graphs capture them). What `--tensor-parallel-size N --device cuda` runs; the mirror of
// backend/cpu/cpu_tensor_parallel.h.
//
// Built only where NCCL is (XY_HAVE_NCCL, set by backend/cuda/CMakeLists.txt).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/model/weights.h"
#include "xyserve/parallel/communicator.h"
#include "xyserve/parallel/node_group.h"
#include "xyserve/parallel/tensor_parallel_backend.h"

namespace xy::backend::cuda {

// `tensor_parallel_size` ranks over NCCL (parallel::make_nccl_group), rank r on CUDA device
// devices[r]. `options` as for one CudaBackend, except `device`, `communicator`, `shard` and
// bind_communicator_stream, which are set per rank; each rank's KV cache has
// options.num_kv_blocks blocks of its own KV heads (0: as many as gpu_memory_utilization of its
// GPU holds, and the backend takes the least over the ranks). Throws InvalidArgument when the
// model does not split `tensor_parallel_size` ways, naming the config.json field
// (parallel/shard.h), or when devices.size() != tensor_parallel_size; NcclError when NCCL
// cannot build the group (two ranks on one GPU, for one).
std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cuda_backend(
    const model::ModelWeights& weights, const CudaBackendOptions& options, int32_t tensor_parallel_size,
    const std::vector<int>& devices);

// The same over any group of device communicators: this process's, consecutive ranks in rank
// order, the i-th on devices[i] (several ranks may share a device when the group allows it: the
// tests' one-GPU stand-in for NCCL). bind_stream(comm, stream) must make `comm` enqueue its collectives on
// `stream` (NcclCommunicator::set_stream); it is called once per rank, on that rank's thread,
// while its backend is built.
using CommunicatorStreamBinder = std::function<void(parallel::Communicator& comm, cudaStream_t stream)>;
std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cuda_backend(
    const model::ModelWeights& weights, const CudaBackendOptions& options,
    std::vector<std::unique_ptr<parallel::Communicator>> comms, const std::vector<int>& devices,
    const CommunicatorStreamBinder& bind_stream);

// This process's part of a group spread over nodes (`nodes`; parallel/node_group.h): its ranks
// [k P, (k+1) P), P = size / nnodes, rank k P + i on devices[i] (devices.size() == P), joined
// over NCCL with the ncclUniqueId that node 0 makes and the rendezvous hands out. `options` as
// above. Throws InvalidArgument when devices.size() != P, else what join_node_group throws.
// Runs only where every node has P GPUs (not on a one-GPU machine: NCCL refuses two ranks on
// one GPU).
parallel::NodeRanks join_tensor_parallel_cuda_nodes(const model::ModelWeights& weights,
                                                    const CudaBackendOptions& options, const std::vector<int>& devices,
                                                    const parallel::NodeGroupOptions& nodes);

}  // namespace xy::backend::cuda
