// A rank of an NCCL group: the GPU side of tensor parallelism (issue 8; DESIGN.md "Scale").
// Collectives take device buffers and are enqueued on the stream bound with set_stream() (the
// rank backend's own), so they are ordered with its kernels, the host never waits for them,
// and CUDA graphs can capture them (NCCL >= 2.9, "Using NCCL with CUDA Graphs"). NCCL's sum
// order is its own (ring or tree), so unlike the in-process group, results are not bitwise
// fixed by rank order.
//
// Threading: a communicator is driven by its rank's thread (one thread per GPU: the
// TensorParallelBackend's rank threads), which must have the rank's device current. abort()
// may be called from any thread: ncclCommAbort is NCCL's way to end a communicator whose peers
// failed, with work still queued.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "xyserve/common/error.h"
#include "xyserve/parallel/communicator.h"

namespace xy::parallel {

class NcclError : public Error {
 public:
  using Error::Error;
};

// A group's ranks did not all join within the timeout (a peer process died or hangs after the
// rendezvous, before or inside NCCL's own set-up).
class NcclTimeout : public NcclError {
 public:
  using NcclError::NcclError;
};

// How long make_nccl_group waits by default for the other ranks: --dist-timeout's default.
inline constexpr std::chrono::milliseconds kDefaultNcclTimeout{300'000};

class NcclCommunicator : public Communicator {
 public:
  // The id that names a new group: made once (by rank 0), then handed to every rank (in one
  // process by value; across hosts through a rendezvous such as torchrun's --master-addr).
  static ncclUniqueId make_unique_id();

  // Joins rank `rank` of `size` to the group `id` names, on the current device. Every rank
  // calls this at the same time, each on its own thread or process: ncclCommInitRank returns
  // only once all have joined.
  NcclCommunicator(const ncclUniqueId& id, int32_t rank, int32_t size);
  // Adopts a communicator that ncclCommInitAll made.
  explicit NcclCommunicator(ncclComm_t comm);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // The stream later collectives are enqueued on (default: the legacy default stream, 0).
  void set_stream(cudaStream_t stream) { stream_ = stream; }
  cudaStream_t stream() const { return stream_; }
  int device() const;  // the CUDA device of this rank
  ncclComm_t handle() const { return comm_; }

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return size_; }
  // ncclCommAbort: pending and later collectives of this rank fail (throw NcclError or
  // GroupAborted); the peers' do too once NCCL notices (their ranks abort on their own error).
  void abort() override;

 protected:
  void all_reduce_sum_impl(void* data, int64_t count, DType dtype) override;
  void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) override;

 private:
  void check_usable() const;

  ncclComm_t comm_ = nullptr;
  int32_t rank_ = 0;
  int32_t size_ = 1;
  cudaStream_t stream_ = nullptr;
  std::atomic<bool> aborted_{false};
};

// `devices.size()` ranks in this process, rank r on CUDA device devices[r] (ncclCommInitAll,
// from the calling thread). Each rank's communicator is then driven by a thread that has its
// device current.
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& devices);

// This process's ranks [first_rank, first_rank + devices.size()) of the `size`-rank group `id`
// names, rank first_rank + i on CUDA device devices[i]: the part of one node when the group
// spans processes (parallel/node_group.h; the id comes from node 0 through the rendezvous).
// Returns once every rank of every process has joined (ncclCommInitRank, in one NCCL group
// call for this process's ranks). NCCL's set-up waits for the peers without a limit, so it runs
// on a thread of its own: when the ranks have not all joined within `timeout`, this throws
// NcclTimeout and leaves that thread blocked inside NCCL (NCCL cannot abort a communicator it has
// not handed out yet): the caller is expected to end the process, which cannot serve anyway.
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const ncclUniqueId& id, int32_t first_rank, int32_t size,
                                                           const std::vector<int>& devices,
                                                           std::chrono::milliseconds timeout = kDefaultNcclTimeout);

}  // namespace xy::parallel
