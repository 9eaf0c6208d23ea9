// Tensor parallelism over several processes, usually one per host (issue 8; DESIGN.md "Scale"),
// started with torchrun's names: --nnodes, --node-rank, --master-addr, --master-port.
//
// The group's N ranks are split evenly over the nodes: node k holds ranks [k P, (k+1) P),
// P = N / nnodes, as threads of one process (one TensorParallelBackend of those ranks; on GPUs,
// local device i runs rank k P + i). The engine, and with it the scheduler, runs on node 0 only:
// every step node 0 sends the StepPlan to each other node over the rendezvous's connections
// (step_plan_codec.h), and every rank runs it, the ranks meeting in the collectives of one
// communicator that spans the processes (NCCL on GPUs, tcp_communicator.h on the CPU). Only
// rank 0 samples, so nothing comes back per step.
//
// Start-up: the rendezvous (tcp_rendezvous.h) hands node 0's group id to every node; each
// builds its communicators and ranks; each other node then reports its KV-block count, or the
// error that stopped it, and node 0 takes the least over every rank of every node.
//
// Failures never hang a node. An error on any rank aborts the group, so every rank's
// collectives end; a node other than 0 sends its error to node 0, which throws it naming the
// node and its ranks. A node that dies is a closed connection: node 0 names it (at its next
// step, when it dies between steps); the others exit with an error when node 0 is gone. When node 0's backend is destroyed after a clean run, it
// tells the others to stop.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/parallel/tcp_rendezvous.h"
#include "xyserve/parallel/tensor_parallel_backend.h"

namespace xy::parallel {

struct NodeGroupOptions {
  RendezvousOptions rendezvous;
  // What every node must agree on besides what the group adds itself (the tensor-parallel
  // size, nnodes and the plan encoding's version): the model, the device, the flags that size
  // a rank's buffers.
  Fingerprint fingerprint;
  int32_t tensor_parallel_size = 1;  // a multiple of rendezvous.nnodes
  // Node 0: called once the rendezvous listens, with its address (the port --master-port 0
  // picked), before it waits for the other nodes.
  std::function<void(const std::string& address)> on_listening;
};

// Node 0 makes the group's id before the rendezvous (an ncclUniqueId; the CPU's TCP hub port);
// every node then makes its ranks [first_rank, first_rank + num_ranks) of the group from it.
using MakeGroupId = std::function<std::vector<uint8_t>()>;
using MakeNodeRanks = std::function<std::unique_ptr<TensorParallelBackend>(
    std::span<const uint8_t> group_id, int32_t first_rank, int32_t num_ranks)>;

// One node's part of the group, joined.
struct NodeRanks {
  NodeLinks links;
  std::unique_ptr<TensorParallelBackend> ranks;
  // Node 0: the least over every rank of every node; the others: their own ranks' least.
  int32_t num_kv_blocks = 0;
};

// Joins this node to the group and builds its ranks. Throws InvalidArgument for a size that
// nnodes does not divide; RendezvousError, NetworkError; on node 0, Error naming a node that
// failed to start (with its error) or left; what make_ranks throws (a node other than 0 sends
// it to node 0 first).
NodeRanks join_node_group(const NodeGroupOptions& options, const MakeGroupId& make_group_id,
                          const MakeNodeRanks& make_ranks);

// Node 0's backend: its own ranks, and the other nodes driven through the links. What the
// engine runs.
//
// Threading: as Backend (the engine thread only). After an error the group is aborted and
// every later step throws.
class MultiNodeBackend : public backend::Backend {
 public:
  explicit MultiNodeBackend(NodeRanks node);  // node.links.node_rank() == 0
  // Tells the other nodes to stop, unless the group failed (they have stopped, or will see
  // the connection close and exit with an error).
  ~MultiNodeBackend() override;

  void forward(const meta::StepPlan& plan, std::vector<float>& logits) override;
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                          meta::SamplingOutput& out) override;

  std::optional<double> device_busy_s() const override { return node_.ranks->device_busy_s(); }  // node 0's
  int64_t vocab_size() const override { return node_.ranks->vocab_size(); }
  int32_t num_kv_blocks() const override { return node_.num_kv_blocks; }
  int32_t block_size() const override { return node_.ranks->block_size(); }

  int32_t nnodes() const { return node_.links.nnodes(); }
  int32_t tensor_parallel_size() const { return node_.ranks->tensor_parallel_size(); }

 private:
  // Sends the plan to every other node, then runs run_local() on node 0's ranks; on any error,
  // aborts the group and throws the error that explains it (rethrow_group_error).
  template <class RunLocal>
  void run_step(const meta::StepPlan& plan, RunLocal&& run_local);
  void send_plan(const meta::StepPlan& plan);
  [[noreturn]] void rethrow_group_error(std::exception_ptr local_error);

  NodeRanks node_;
  std::vector<uint8_t> frame_;  // the step message, reused
  bool failed_ = false;
};

// A node other than 0: runs every plan node 0 sends on `node`'s ranks until node 0 says stop
// (returns). Throws when a step fails (after sending the error to node 0) and when node 0 closes
// the connection without saying stop (it failed or was killed).
void follow_node_zero(NodeRanks& node);

}  // namespace xy::parallel
