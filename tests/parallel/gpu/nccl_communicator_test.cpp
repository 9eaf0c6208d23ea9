// NcclCommunicator on the GPUs present (label `gpu`: the device machine only): all-reduce (fp32
// and bf16, in place) and all-gather in rank order, enqueued on each rank's own stream, also
// replayed from a captured CUDA graph, with one rank and with every GPU as a rank. Values are
// small integers, so every sum is exact whatever order NCCL adds in.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>
#include <string>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/parallel/nccl/nccl_communicator.h"
#include "xyserve/parallel/rank_threads.h"

namespace xy::parallel {
namespace {

int num_gpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

// Rank r's value at element i: an integer below 2^8, exact in bf16 and in any sum of 8 ranks.
float value(int32_t r, int64_t i) { return float((r * 7 + i * 3) % 29); }

struct RankResult {
  std::vector<float> reduced, gathered, graph_reduced;
  std::vector<uint16_t> reduced_bf16;
};

void run_ranks(int32_t size) {
  SCOPED_TRACE(cat(size, " ranks"));
  std::vector<int> devices(static_cast<size_t>(size));
  std::iota(devices.begin(), devices.end(), 0);
  auto comms = make_nccl_group(devices);
  const int64_t count = 4099;  // not a multiple of anything NCCL chunks by
  std::vector<RankResult> results(static_cast<size_t>(size));
  RankThreads threads(size);
  threads.run(
      [&](int32_t r) {
        XY_CUDA_CHECK(cudaSetDevice(devices[size_t(r)]));
        auto& comm = static_cast<NcclCommunicator&>(*comms[size_t(r)]);
        EXPECT_EQ(comm.rank(), r);
        EXPECT_EQ(comm.device(), devices[size_t(r)]);
        cudaStream_t stream;
        XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        comm.set_stream(stream);
        std::vector<float> host(static_cast<size_t>(count));
        std::vector<uint16_t> host_bf16(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i) {
          host[size_t(i)] = value(r, i);
          host_bf16[size_t(i)] = f32_to_bf16(value(r, i));
        }
        float *data, *gathered, *graph_data;
        uint16_t* data_bf16;
        XY_CUDA_CHECK(cudaMalloc(&data, size_t(count) * 4));
        XY_CUDA_CHECK(cudaMalloc(&graph_data, size_t(count) * 4));
        XY_CUDA_CHECK(cudaMalloc(&gathered, size_t(size * count) * 4));
        XY_CUDA_CHECK(cudaMalloc(&data_bf16, size_t(count) * 2));
        XY_CUDA_CHECK(cudaMemcpyAsync(data, host.data(), size_t(count) * 4, cudaMemcpyHostToDevice, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(data_bf16, host_bf16.data(), size_t(count) * 2, cudaMemcpyHostToDevice, stream));
        comm.all_gather(data, gathered, count);  // before the in-place sum overwrites data
        comm.all_reduce_sum(data, count);
        comm.all_reduce_sum(data_bf16, count, DType::kBF16);

        // Captured once, replayed twice: the second replay sums the first one's result.
        XY_CUDA_CHECK(cudaMemcpyAsync(graph_data, host.data(), size_t(count) * 4, cudaMemcpyHostToDevice, stream));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        comm.all_reduce_sum(graph_data, count);
        XY_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        XY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        XY_CUDA_CHECK(cudaGraphLaunch(exec, stream));

        RankResult& out = results[size_t(r)];
        out.reduced.resize(size_t(count));
        out.graph_reduced.resize(size_t(count));
        out.gathered.resize(size_t(size * count));
        out.reduced_bf16.resize(size_t(count));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.reduced.data(), data, size_t(count) * 4, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.graph_reduced.data(), graph_data, size_t(count) * 4, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.gathered.data(), gathered, size_t(size * count) * 4, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaMemcpyAsync(out.reduced_bf16.data(), data_bf16, size_t(count) * 2, cudaMemcpyDeviceToHost, stream));
        XY_CUDA_CHECK(cudaStreamSynchronize(stream));
        XY_CUDA_CHECK(cudaGraphExecDestroy(exec));
        XY_CUDA_CHECK(cudaGraphDestroy(graph));
        for (void* p : {(void*)data, (void*)gathered, (void*)graph_data, (void*)data_bf16}) XY_CUDA_CHECK(cudaFree(p));
        XY_CUDA_CHECK(cudaStreamDestroy(stream));
      },
      [&](int32_t r) { comms[size_t(r)]->abort(); });

  for (int32_t r = 0; r < size; ++r) {
    const RankResult& out = results[size_t(r)];
    for (int64_t i = 0; i < count; ++i) {
      float sum = 0;
      for (int32_t s = 0; s < size; ++s) sum += value(s, i);
      ASSERT_EQ(out.reduced[size_t(i)], sum) << "rank " << r << " element " << i;
      ASSERT_EQ(bf16_to_f32(out.reduced_bf16[size_t(i)]), sum) << "bf16 rank " << r << " element " << i;
      ASSERT_EQ(out.graph_reduced[size_t(i)], sum * float(size)) << "graph rank " << r << " element " << i;
      for (int32_t s = 0; s < size; ++s)
        ASSERT_EQ(out.gathered[size_t(s * count + i)], value(s, i)) << "gather rank " << r;
    }
  }
}

TEST(NcclCommunicatorTest, OneRankIsTheIdentity) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  run_ranks(1);
}

TEST(NcclCommunicatorTest, EveryGpuARank) {
  if (num_gpus() < 2) GTEST_SKIP() << "one GPU: no multi-rank NCCL run";
  run_ranks(num_gpus());
}

// Rank 0 of a 2-rank group whose rank 1 never comes: what node 0 meets when node 1 joined the
// rendezvous and died before NCCL's set-up. One GPU is enough: the group never forms. The set-up
// thread stays blocked in NCCL; the process goes on (and a new group works).
TEST(NcclCommunicatorTest, APeerThatNeverJoinsTimesOutInsteadOfHanging) {
  ASSERT_GT(num_gpus(), 0) << "no CUDA device: run the gpu label on the device machine";
  const ncclUniqueId id = NcclCommunicator::make_unique_id();
  const auto start = std::chrono::steady_clock::now();
  try {
    make_nccl_group(id, /*first_rank=*/0, /*size=*/2, {0}, std::chrono::seconds(2));
    FAIL() << "a 2-rank group formed with one rank";
  } catch (const NcclTimeout& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ranks 0..0 of 2"), std::string::npos) << what;
    EXPECT_NE(what.find("2 s (--dist-timeout)"), std::string::npos) << what;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(elapsed, 1.9);
  EXPECT_LT(elapsed, 5.0);
  run_ranks(1);
}

}  // namespace
}  // namespace xy::parallel
