// CUDA graphs for decode-only steps (issue 5 item 4). A Llama-3-8B decode step is ~325 small
// launches; at batch 1 their host and launch overhead is a large share of a ~6 ms step
// (bench/cuda/DECODE_NOTES.md). A decode-only step (every request one new row with logits, no
// draft tree) of B requests is padded to the smallest bucket >= B, and each bucket's kernels
// are captured once into a graph that later steps of the bucket replay with one launch.
//
// What keeps a replay right (cuda_backend.cu does the capture): the step's data is uploaded
// into the bucket's PaddedPlan at fixed offsets (device_plan.h); the attention and merge
// kernels read their task counts from that upload and stride over them with a fixed grid; every
// other buffer a launch names is allocated once, and the two that grow (the bucket's plan and
// the attention partials) drop the graph when they move.
//
// Threading: engine thread only, as CudaBackend.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/meta/step_plan.h"

namespace xy::cuda {

// True when every request of `plan` has one new row, one logits row and no draft tree (KV
// copies and moves may be present: they run before the graph). False for an empty plan.
bool is_decode_only(const meta::StepPlan& plan);

// Bucket sizes up to max_batch: 1, 2, 4, 8, 16, 24, 32, then every 16 to 256, then every 64,
// and max_batch itself last (empty when max_batch < 1). A padding row gets no attention task,
// and a bf16 GEMM of M rows does ~M FLOP per weight byte, so up to M ~ 200 (an H200's ~1 PFLOP/s
// over ~4.8 TB/s) it stays weight-bound and padded rows are nearly free: fine steps where
// launch overhead matters most, coarse ones (at most 63 rows, under 1/8 of a step from 512 on)
// where the step is long and compute starts to count.
std::vector<int32_t> decode_graph_buckets(int32_t max_batch);

// An instantiated graph, owned.
class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() { reset(); }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  GraphExec(GraphExec&& other) noexcept { std::swap(exec_, other.exec_); }
  GraphExec& operator=(GraphExec&& other) noexcept {
    std::swap(exec_, other.exec_);
    return *this;
  }

  // Records what `enqueue` puts on `stream` (nothing runs) and instantiates it, replacing any
  // earlier graph. Capture is thread-local: another thread's CUDA calls are not disturbed, and
  // a call of this thread that cannot be captured (a synchronisation, an allocation) fails
  // the capture with CudaError instead of running. On any error the stream leaves capture mode.
  void capture(cudaStream_t stream, const std::function<void()>& enqueue);
  void launch(cudaStream_t stream) const;
  void reset();
  explicit operator bool() const { return exec_ != nullptr; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// One bucket: its padded plan, its graph (empty until captured, and after its buffers moved),
// and the generation of the attention partials that graph was captured over.
struct DecodeGraph {
  explicit DecodeGraph(int32_t rows) : plan(rows) {}
  PaddedPlan plan;
  GraphExec graph;
  uint64_t partials_generation = 0;
};

}  // namespace xy::cuda
