#include "parallel/gpu/device_in_process_communicator.h"

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/common/error.h"
#include "xyserve/parallel/in_process_communicator.h"

namespace xy::parallel {

void DeviceInProcessCommunicator::check_not_capturing() const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  XY_CUDA_CHECK(cudaStreamIsCapturing(stream_, &status));
  if (status != cudaStreamCaptureStatusNone)
    throw InvalidArgument("the device in-process communicator synchronises its stream and cannot be captured "
                          "in a CUDA graph: run its tests with cuda_graphs off");
}

// Stream work before the collective -> host copy -> the host group's sum -> device copy, which
// has finished when this returns (the staging buffer is reused by the next collective).
void DeviceInProcessCommunicator::all_reduce_sum_impl(void* data, int64_t count, DType dtype) {
  check_not_capturing();
  const size_t bytes = size_t(count) * dtype_size(dtype);
  send_.resize(bytes);
  if (bytes) {
    XY_CUDA_CHECK(cudaMemcpyAsync(send_.data(), data, bytes, cudaMemcpyDeviceToHost, stream_));
    XY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  host_->all_reduce_sum(send_.data(), count, dtype);
  if (bytes) {
    XY_CUDA_CHECK(cudaMemcpyAsync(data, send_.data(), bytes, cudaMemcpyHostToDevice, stream_));
    XY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
}

void DeviceInProcessCommunicator::all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) {
  check_not_capturing();
  const size_t bytes = size_t(count) * dtype_size(dtype);
  send_.resize(bytes);
  recv_.resize(bytes * size_t(size()));
  if (bytes) {
    XY_CUDA_CHECK(cudaMemcpyAsync(send_.data(), send, bytes, cudaMemcpyDeviceToHost, stream_));
    XY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  host_->all_gather(send_.data(), recv_.data(), count, dtype);
  if (bytes) {
    XY_CUDA_CHECK(cudaMemcpyAsync(recv, recv_.data(), recv_.size(), cudaMemcpyHostToDevice, stream_));
    XY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
}

std::vector<std::unique_ptr<Communicator>> make_device_in_process_group(int32_t size) {
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (auto& host : make_in_process_group(size))
    ranks.push_back(std::make_unique<DeviceInProcessCommunicator>(std::move(host)));
  return ranks;
}

}  // namespace xy::parallel
