#include "xyserve/backend/cuda/cuda_graphs.h"

#include <algorithm>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/common/check.h"

namespace xy::cuda {

bool is_decode_only(const meta::StepPlan& plan) {
  if (plan.requests.empty() || size_t(plan.num_rows()) != plan.requests.size()) return false;
  for (const meta::ScheduledRequest& r : plan.requests)
    if (r.num_new_tokens != 1 || r.num_logits_rows != 1 || !r.tree_parents.empty()) return false;
  return true;
}

std::vector<int32_t> decode_graph_buckets(int32_t max_batch) {
  std::vector<int32_t> out;
  for (int32_t b : {1, 2, 4, 8, 16, 24, 32})
    if (b <= max_batch) out.push_back(b);
  for (int32_t b = 48; b <= std::min(max_batch, 256); b += 16) out.push_back(b);
  for (int32_t b = 320; b <= max_batch; b += 64) out.push_back(b);
  if (max_batch >= 1 && out.back() != max_batch) out.push_back(max_batch);
  return out;
}

void GraphExec::capture(cudaStream_t stream, const std::function<void()>& enqueue) {
  reset();
  XY_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    enqueue();
  } catch (...) {
    // Leave capture mode so the stream stays usable; the half-recorded graph is dropped.
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  XY_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  const cudaError_t err = cudaGraphInstantiate(&exec_, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    exec_ = nullptr;
    throw_cuda_error(err, __FILE__, __LINE__, "cudaGraphInstantiate(&exec_, graph, 0)");
  }
}

void GraphExec::launch(cudaStream_t stream) const {
  XY_CHECK(exec_ != nullptr, "launch of a graph never captured");
  XY_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

void GraphExec::reset() {
  if (exec_) (void)cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
}

}  // namespace xy::cuda
