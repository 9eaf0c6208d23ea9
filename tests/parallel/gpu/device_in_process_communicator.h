// A group of ranks that are threads of one process and share ONE GPU: the tests' stand-in for
// NCCL, which refuses two ranks on one device, so that sharded = unsharded can be checked on the
// CUDA backend with the single GPU the device machine lends (issue 8). Test support only: never
// linked into the server.
//
// Collectives take device buffers and are ordered on the stream bound with set_stream() (the
// rank backend's, through CudaBackendOptions::bind_communicator_stream). A collective waits for
// that stream, so it sees what the rank's earlier kernels wrote; meets the other ranks in the
// host in-process group (parallel/in_process_communicator.h), which sums in rank order, rank 0
// + rank 1 + ..., in fp32 and rounds bf16 once, so results are deterministic and bitwise the
// same on every rank; and has the result copied back into the device buffer, finished before it
// returns, so the rank's later kernels see it. Speed is no concern.
//
// Not usable inside CUDA graph capture (it synchronises the stream): a collective on a
// capturing stream throws InvalidArgument. Tests with it run with cuda_graphs off; real NCCL
// covers the captured path.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "xyserve/parallel/communicator.h"

namespace xy::parallel {

class DeviceInProcessCommunicator : public Communicator {
 public:
  // `host`: this rank's communicator of an in-process group (make_in_process_group).
  explicit DeviceInProcessCommunicator(std::unique_ptr<Communicator> host) : host_(std::move(host)) {}

  // The stream later collectives are ordered on (default: the legacy default stream, 0).
  void set_stream(cudaStream_t stream) { stream_ = stream; }

  int32_t rank() const override { return host_->rank(); }
  int32_t size() const override { return host_->size(); }
  void abort() override { host_->abort(); }

 protected:
  void all_reduce_sum_impl(void* data, int64_t count, DType dtype) override;
  void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) override;

 private:
  void check_not_capturing() const;

  std::unique_ptr<Communicator> host_;
  cudaStream_t stream_ = nullptr;
  std::vector<uint8_t> send_, recv_;  // host staging, grown and reused
};

// `size` communicators sharing one group, rank order; each is to be used by its rank's thread,
// with the rank's device current. Precondition: size >= 1.
std::vector<std::unique_ptr<Communicator>> make_device_in_process_group(int32_t size);

}  // namespace xy::parallel
