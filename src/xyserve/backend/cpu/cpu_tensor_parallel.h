// The CPU backend under tensor parallelism: `size` CpuBackend ranks, each running its shard of
// the model on its own thread, joined by an in-process communicator group that sums in rank
// order (parallel/). What `--tensor-parallel-size N --device cpu` runs, and what the tests hold
// against the unsharded CpuBackend (issue 8: sharded = unsharded on the CPU).
#pragma once

#include <cstdint>
#include <memory>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/model/weights.h"
#include "xyserve/parallel/node_group.h"
#include "xyserve/parallel/tensor_parallel_backend.h"

namespace xy::backend::cpu {

// `options` as for one CpuBackend, except that num_threads counts every rank's threads
// together (0: hardware concurrency), each rank getting an equal share (at least 1), and that
// each rank's KV cache has options.num_kv_blocks blocks of its own KV heads. Size 1 is one rank
// in a group of one (what a plain CpuBackend computes, bit for bit, with a step's overhead of
// collectives). Throws InvalidArgument when the model does not split `size` ways, naming the
// config.json field (parallel/shard.h).
std::unique_ptr<parallel::TensorParallelBackend> make_tensor_parallel_cpu_backend(
    const model::ModelWeights& weights, const CpuBackendOptions& options, int32_t tensor_parallel_size);

// This process's part of a group spread over nodes (`nodes`; parallel/node_group.h): its ranks
// [k P, (k+1) P), P = size / nnodes, on threads, and every rank of every node joined by the TCP
// communicator (parallel/tcp_communicator.h), whose hub, rank 0, listens on node 0 beside the
// rendezvous on a port of its own (the group id). `options` as above, num_threads shared by
// this node's ranks. Throws what join_node_group throws.
parallel::NodeRanks join_tensor_parallel_cpu_nodes(const model::ModelWeights& weights, const CpuBackendOptions& options,
                                                   const parallel::NodeGroupOptions& nodes);

}  // namespace xy::backend::cpu
