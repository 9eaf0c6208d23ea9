// The tests' one-GPU stand-in for NCCL (device_in_process_communicator.h), checked before the
// tensor-parallel tests lean on it: sums in rank order with one rounding (bf16 through fp32),
// gathers in rank order, ordered on each rank's own stream (it sees work queued before it, and
// work queued after it sees its result), and refuses graph capture instead of running wrongly.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "parallel/gpu/device_in_process_communicator.h"
#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/parallel/rank_threads.h"

namespace xy::parallel {
namespace {

constexpr int32_t kRanks = 3;
constexpr int64_t kCount = 1031;

// Rank r's inputs: random fp32, and bf16 values whose fp32 sum needs rounding back to bf16.
std::vector<float> f32_values(int32_t r) {
  std::mt19937 rng(uint32_t(100 + r));
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  std::vector<float> v(static_cast<size_t>(kCount));
  for (float& x : v) x = u(rng);
  return v;
}
std::vector<uint16_t> bf16_values(int32_t r) {
  std::vector<uint16_t> v;
  for (float x : f32_values(r)) v.push_back(f32_to_bf16(x * 3.1f));
  return v;
}

struct RankOut {
  std::vector<float> reduced, gathered;
  std::vector<uint16_t> reduced_bf16;
};

TEST(DeviceInProcessCommunicator, SumsInRankOrderAndGathersOrderedOnEachRanksStream) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device: run the gpu label on the device machine";
  auto comms = make_device_in_process_group(kRanks);
  std::vector<RankOut> outs(static_cast<size_t>(kRanks));
  RankThreads threads(kRanks);
  threads.run(
      [&](int32_t r) {
        XY_CUDA_CHECK(cudaSetDevice(0));
        auto& comm = static_cast<DeviceInProcessCommunicator&>(*comms[size_t(r)]);
        cudaStream_t stream;
        XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        comm.set_stream(stream);
        const std::vector<float> f32 = f32_values(r);
        const std::vector<uint16_t> b16 = bf16_values(r);
        float *pinned, *data, *gathered, *after;
        uint16_t *pinned_b16, *data_b16;
        char* delay;
        const size_t delay_bytes = size_t(1) << 30;
        XY_CUDA_CHECK(cudaMallocHost(&pinned, size_t(kCount) * 4));
        XY_CUDA_CHECK(cudaMallocHost(&pinned_b16, size_t(kCount) * 2));
        XY_CUDA_CHECK(cudaMalloc(&data, size_t(kCount) * 4));
        XY_CUDA_CHECK(cudaMalloc(&after, size_t(kCount) * 4));
        XY_CUDA_CHECK(cudaMalloc(&gathered, size_t(kRanks * kCount) * 4));
        XY_CUDA_CHECK(cudaMalloc(&data_b16, size_t(kCount) * 2));
        XY_CUDA_CHECK(cudaMalloc(&delay, delay_bytes));
        std::copy(f32.begin(), f32.end(), pinned);
        std::copy(b16.begin(), b16.end(), pinned_b16);
        XY_CUDA_CHECK(cudaMemset(data, 0, size_t(kCount) * 4));
        XY_CUDA_CHECK(cudaMemset(data_b16, 0, size_t(kCount) * 2));
        XY_CUDA_CHECK(cudaDeviceSynchronize());  // the zeros are in place before the stream starts
        // The inputs arrive on the stream behind a 1 GiB memset: a collective that did not wait
        // for its stream would read the zeros.
        XY_CUDA_CHECK(cudaMemsetAsync(delay, r, delay_bytes, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(data, pinned, size_t(kCount) * 4, cudaMemcpyHostToDevice, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(data_b16, pinned_b16, size_t(kCount) * 2, cudaMemcpyHostToDevice, stream));
        comm.all_gather(data, gathered, kCount);  // before the in-place sum overwrites data
        comm.all_reduce_sum(data, kCount);
        comm.all_reduce_sum(data_b16, kCount, DType::kBF16);
        // Work queued after the collective sees its result.
        XY_CUDA_CHECK(cudaMemcpyAsync(after, data, size_t(kCount) * 4, cudaMemcpyDeviceToDevice, stream));
        RankOut& out = outs[size_t(r)];
        out.reduced.resize(size_t(kCount));
        out.gathered.resize(size_t(kRanks * kCount));
        out.reduced_bf16.resize(size_t(kCount));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.reduced.data(), after, size_t(kCount) * 4, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.gathered.data(), gathered, out.gathered.size() * 4, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.reduced_bf16.data(), data_b16, size_t(kCount) * 2, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        for (void* p : {(void*)data, (void*)after, (void*)gathered, (void*)data_b16, (void*)delay}) XY_CUDA_CHECK(cudaFree(p));
        XY_CUDA_CHECK(cudaFreeHost(pinned));
        XY_CUDA_CHECK(cudaFreeHost(pinned_b16));
        XY_CUDA_CHECK(cudaStreamDestroy(stream));
      },
      [&](int32_t r) { comms[size_t(r)]->abort(); });

  for (int32_t r = 0; r < kRanks; ++r) {
    const RankOut& out = outs[size_t(r)];
    for (int64_t i = 0; i < kCount; ++i) {
      float sum = 0.0f, sum_b16 = 0.0f;  // rank 0 + rank 1 + ..., in fp32
      for (int32_t s = 0; s < kRanks; ++s) {
        sum += f32_values(s)[size_t(i)];
        sum_b16 += bf16_to_f32(bf16_values(s)[size_t(i)]);
      }
      ASSERT_EQ(out.reduced[size_t(i)], sum) << "rank " << r << " element " << i;
      ASSERT_EQ(out.reduced_bf16[size_t(i)], f32_to_bf16(sum_b16)) << "bf16 rank " << r << " element " << i;
      for (int32_t s = 0; s < kRanks; ++s)
        ASSERT_EQ(out.gathered[size_t(s * kCount + i)], f32_values(s)[size_t(i)]) << "gather rank " << r;
    }
  }
}

TEST(DeviceInProcessCommunicator, RefusesGraphCapture) {
  ASSERT_GT(xy::cuda::device_count(), 0) << "no CUDA device: run the gpu label on the device machine";
  XY_CUDA_CHECK(cudaSetDevice(0));
  auto comms = make_device_in_process_group(1);
  auto& comm = static_cast<DeviceInProcessCommunicator&>(*comms[0]);
  cudaStream_t stream;
  XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  comm.set_stream(stream);
  float* data;
  XY_CUDA_CHECK(cudaMalloc(&data, 64 * 4));
  XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  EXPECT_THROW(comm.all_reduce_sum(data, 64), InvalidArgument);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  if (graph) XY_CUDA_CHECK(cudaGraphDestroy(graph));
  XY_CUDA_CHECK(cudaFree(data));
  XY_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace xy::parallel
