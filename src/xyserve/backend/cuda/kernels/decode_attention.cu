// Decode-specialised attention over the meta work list (issue 6, the decode path): tasks of at
// most kDecodeMaxRows (16) GQA-packed rows, i.e. decodes and verifies of a few tokens, reading
// paged KV at close to copy bandwidth.
//
// A decode task reads 512 bytes of K and V per key (head_dim 128) and does ~8 KFLOP of mma.sync per
// key on its 16-row slab: the bytes in flight bound it, not math. The first version (2 stages of
// 16 keys a warp, refilled after computing, two CTA barriers per task) streamed 3.72-4.07 TB/s
// where cuDNN reads 3.89-4.44 on contiguous KV, and its cp.async.bulk variant (one bulk copy per
// 256-byte key row, on the TMA unit) was slower at 3 of 4 points (bench/cuda/attention_bench,
// H200). It also streamed the same 3.71-3.72 TB/s on 8 x 32k with one CTA per SM as with two: twice
// its ring bought nothing there, so the SM's own limit on loads in flight, not only the ring, may
// cap it. This version attacks both:
//   - CTA of 4 warps, 2 CTAs per SM (kDecodeCtasPerSm): 112 KB of shared memory each at d = 128.
//   - Each warp streams its own keys through its own ring of kEntries entries; an entry is the K
//     rows or the V rows of a 16-key chunk (4 KB at d = 128, 6 entries a warp), loaded by 16-byte
//     cp.async from every lane, one commit group per entry, evict-first in L2. A warp waits for
//     entry n, issues entry n + kEntries - 1 into the slot it read last, then computes on entry n:
//     kEntries - 1 entries (20 KB a warp, 160 KB an SM) stay in flight while it computes. K and V
//     are separate entries so that a slot is refilled as soon as Q K^T (or P V) has read it.
//     Rows are stored with their 16-byte units XOR-swizzled by row % 8 (no padding: the shared
//     memory goes to the ring), so ldmatrix reads are conflict-free. A key the task does not see
//     (before the span or the window, past the span, a tree row of another span) is zero-filled
//     without a read and masked.
//   - An L2 prefetch of the warp's next chunk (prefetch.global.L2, kPrefetchChunks ahead) is
//     there to measure and off: on the H200 it cost 7-14% (the ring alone keeps enough in
//     flight; the extra requests compete with it).
//   - A task's keys are dealt to the warps in 16-key chunks, chunk j to warp (j + 1) % 4, the same
//     for every task (so a task's result does not depend on the grid): warp 0, which folds the
//     states at the end, takes the last chunk of every 4 and never one of the remainder. Each warp
//     keeps an online-softmax state (m, l, O) of the task's 16-row slab in registers.
//   - End of a slab: no CTA barrier. Warps 1 and 3 write their states to two merge slots and go on
//     with their next task; warp 2 folds warp 3's state into its own and writes it back; warp 0
//     folds warp 1's, then warp 2's, and writes the rows (or the partial). Named barriers pair the
//     writers and readers of each slot (finish_slab).
//   - The rings run across tasks: a warp issues the first chunks of its next task while it
//     finishes the current one, so the pipe does not drain between tasks.
//   - Persistent grid; the cost-sorted tasks are dealt to CTAs in XY-Serve's symmetric round robin
//     (decode_split.cpp simulates the same deal to choose kv_split).
//
// Math per chunk, as in meta_attention.cu: S = Q K^T (m16n8k16, the slab's Q fragments held in
// registers for the whole slab), mask only on chunks the slab does not see whole, online softmax in
// base 2, O += P V with P re-packed from the S accumulators. A task of more than 16 rows (which
// check_decode_work_list rejects on the host) is run correctly, slab by slab, each reading the
// span again.
//
// Reduction order: fixed by the task alone (chunk-to-warp deal, fold order (w0 + w1) + (w2 + w3)),
// so runs are bitwise repeatable and a graph replay equals an eager launch. It differs from the
// tensor-core kernel's, so the batch-invariant mode does not use this kernel (the launcher throws).
//
// Programmatic dependent launch: the kernel's first statement lets the next kernel in the stream
// (the o-projection GEMM, when launched with PDL) start; that kernel waits for this grid's
// completion (griddepcontrol.wait) before it reads the output.
#include <cstdint>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/decode_attention.cuh"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using decode_cta::DecodeTraits;

// Persistent: every CTA walks its dealt tasks (count read on the device when task_count is set).
template <int kHeadDim>
__global__ void __launch_bounds__(DecodeTraits<kHeadDim>::kThreads, kDecodeCtasPerSm)
    decode_attention_kernel(AttentionArgs a) {
  ptx::griddep_launch_dependents();
  extern __shared__ __align__(128) uint8_t smem[];
  const int32_t count = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  const decode_cta::DecodeDeal deal{int32_t(blockIdx.x), int32_t(gridDim.x), 0, count};
  decode_cta::run<kHeadDim, 1>(a, deal, int(threadIdx.x / 32), smem);
}

template <int kHeadDim>
void run_decode_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = DecodeTraits<kHeadDim>;
  // Resident CTAs per SM (kDecodeCtasPerSm unless the device has less shared memory): the
  // persistent grid's width.
  const void* kernel = reinterpret_cast<const void*>(decode_attention_kernel<kHeadDim>);
  // The carveout (a hint) once per process; the shared-memory allowance per device inside.
  static const bool carveout = [&] {
    XY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       int(cudaSharedmemCarveoutMaxShared)));
    return true;
  }();
  (void)carveout;
  const int blocks_per_sm = resident_ctas_per_sm(kernel, T::kThreads, T::kSmemBytes, "attention: the decode kernel");
  const int32_t grid = persistent_grid(a.num_tasks, blocks_per_sm);
  decode_attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_attention_decode(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tasks == 0) return;
  if (a.batch_invariant)
    throw InvalidArgument(
        "attention: the decode kernel reduces in another order than the tensor-core kernel; the batch-invariant "
        "mode runs the tensor-core kernel for every step");
  if (a.group < 1 || a.group > kDecodeMaxRows)
    throw InvalidArgument(cat("attention: GQA group ", a.group, " gives every task at least ", a.group,
                              " rows; the decode kernel serves tasks of 1 to ", kDecodeMaxRows));
  if (a.block_size < 8 || (a.block_size & (a.block_size - 1)) != 0)
    throw InvalidArgument(cat("attention: the decode kernel needs a power-of-two KV block size of at least 8, got ",
                              a.block_size));
  if (a.head_dim == 64) return run_decode_attention<64>(a, stream);
  if (a.head_dim == 128) return run_decode_attention<128>(a, stream);
  throw InvalidArgument(cat("attention: the decode kernel has no head_dim ", a.head_dim, " (64, 128)"));
}

}  // namespace xy::cuda
