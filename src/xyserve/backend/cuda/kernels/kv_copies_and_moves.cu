#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"

namespace xy::cuda {
namespace {

// One block per plane (K or V of one layer). Copies and moves run in plan order with a barrier
// between them, since a move may read a slot an earlier move or copy wrote.
__global__ void kv_copies_and_moves_kernel(bf16* cache, int64_t plane_elems, int32_t block_size,
                                           int64_t slot_elems, const meta::KvBlockCopy* copies,
                                           int32_t num_copies, const meta::KvSlotMove* moves,
                                           int32_t num_moves) {
  bf16* plane = cache + int64_t(blockIdx.x) * plane_elems;
  const int64_t block_elems = int64_t(block_size) * slot_elems;
  for (int32_t c = 0; c < num_copies; ++c) {
    const meta::KvBlockCopy cp = copies[c];
    const bf16* src = plane + cp.src_block * block_elems;
    bf16* dst = plane + cp.dst_block * block_elems;
    for (int64_t j = threadIdx.x; j < int64_t(cp.num_tokens) * slot_elems; j += blockDim.x) dst[j] = src[j];
    __syncthreads();
  }
  for (int32_t i = 0; i < num_moves; ++i) {
    const meta::KvSlotMove mv = moves[i];
    const bf16* src = plane + (int64_t(mv.src_block) * block_size + mv.src_slot) * slot_elems;
    bf16* dst = plane + (int64_t(mv.dst_block) * block_size + mv.dst_slot) * slot_elems;
    for (int64_t j = threadIdx.x; j < slot_elems; j += blockDim.x) dst[j] = src[j];
    __syncthreads();
  }
}

}  // namespace

void launch_kv_copies_and_moves(bf16* cache, int32_t num_planes, int64_t plane_elems,
                                int32_t block_size, int64_t slot_elems,
                                const meta::KvBlockCopy* copies, int32_t num_copies,
                                const meta::KvSlotMove* moves, int32_t num_moves,
                                cudaStream_t stream) {
  if (num_copies == 0 && num_moves == 0) return;
  kv_copies_and_moves_kernel<<<num_planes, 256, 0, stream>>>(
      cache, plane_elems, block_size, slot_elems, copies, num_copies, moves, num_moves);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
