// SmoothGEMM: a small family of fixed-tile bf16 GEMMs y = x Wᵀ for Hopper (sm_90a), one of which
// serves each bucket of M (DESIGN.md, "virtual padding"): M is never padded in memory, rows past
// M are zero-filled on load and skipped on store, so one compiled tile serves every M of its
// bucket. Which kernel runs for which (M, N, K) is decided by measurement (bench/cuda/gemm_bench),
// never here.
//
// Threading: every function is thread-safe; launches go on the caller's stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace xy::cuda {

enum class GemmKernel {
  // Weight-streaming kernels for a few tokens ("GEMV"): one CTA per SM owns an even share of W's
  // rows, all of K, so no workspace; W goes straight from HBM into tensor-core fragments.
  // kGemvT<t> serves M <= t in one pass over W (a larger M takes ceil(M / t) passes).
  kGemvT8,
  kGemvT16,
  kGemvT32,
  // Weight-streaming stream-K kernels for small M: every SM streams an equal share of the
  // (tile, k-block) iterations of W; partial tiles are summed in an fp32 workspace by the
  // last CTA to finish the tile. kStreamT<t> keeps t tokens (rows of x) per tile and streams
  // W in blocks of 128 rows x 64 columns; kStreamT<t>N<r>, r rows x 8192 / r columns.
  // (t = 128, 32 x 256 for t = 32 and 16 x 512 were measured and never won: 2026-11-25.)
  kStreamT16,
  kStreamT32,
  kStreamT64,
  kStreamT16N64,
  kStreamT32N64,
  kStreamT64N64,
  kStreamT16N32,
  // TMA + wgmma, one producer and two consumer warpgroups, 128 x 256 or 128 x 128 output
  // tile, persistent grid, split along K when the tiles are too few to fill the GPU; for
  // mid and large M.
  kWgmma128x256,
  kWgmma128x128,
  // The same in clusters of two CTAs along M (neighbouring m-tiles, one W tile) that load W's
  // box once for both by TMA multicast: half the L2 reads of W, as cuBLASLt's large-M kernels
  // (256 x 128 of yᵀ in clusters of 1 x 2) do.
  kWgmma128x256C2,
  kWgmma128x128C2,
  // TMA + wgmma stream-K: a persistent grid of one CTA per SM, each running an equal share of the
  // (output tile, K block) iterations, partial tiles summed in the workspace; bf16 output through
  // shared memory and TMA stores. 64 x 256 (two consumer warpgroups splitting N) for M <= ~512
  // and ragged M; 128 x 256 and 128 x 128 past it. PDL-aware.
  kWgmmaSk128x256,
  kWgmmaSk128x128,
  kWgmmaSk64x256,
  // 128 x 128 stream-K at two CTAs per SM (3-stage ring each, bf16 stores straight from the
  // fragments): while one CTA waits on its ring or its fix-up, the other's MMAs can run; for
  // small and mid M.
  kWgmmaSk128x128x2,
  // TMA + wgmma data-parallel: one whole bm x bn tile per CTA step on a persistent grid of one CTA
  // per SM, m-tiles varying fastest; no split of K, no workspace, no fix-up. The widths are not
  // powers of two so that some tile count falls just under a wave of 132 SMs at mid M (as
  // cuBLASLt's choices do, gemm_bench --lt-algos): e.g. qkv (N = 6144) at M = 128 on 64 x 96 is
  // 128 tiles, at M = 384 on 128 x 144 129. N need not be a multiple of bn (a multiple of 16).
  // PDL-aware.
  kWgmmaDp64x64,
  kWgmmaDp64x96,
  kWgmmaDp64x128,
  kWgmmaDp64x192,
  kWgmmaDp128x96,
  kWgmmaDp128x128,
  kWgmmaDp128x144,
  kWgmmaDp128x192,
  kWgmmaDp128x224,
  // TMA + wgmma for small M with the operands swapped (W rows as wgmma's m, x rows as its n: a
  // tile of bx tokens x bw W rows costs the tensor cores n = bx) in clusters of c CTAs:
  // kWgmmaSwap<bx>x<bw>N<c>: c neighbouring W tiles share x's box, loaded once by TMA multicast;
  // kWgmmaSwap<bx>x<bw>M<c>: c neighbouring x tiles share W's box likewise;
  // kWgmmaSwap<bx>x<bw>K<c>: c CTAs split the tile's K blocks and add up in distributed shared
  // memory (split-K without workspace), which puts o and down (N = 4096) on 2 x 64 CTAs;
  // kWgmmaSwap<bx>x<bw>: no cluster; kWgmmaSwap<bx>x<bw>x<b>: no cluster, consumer warpgroups of b
  // m64 blocks (64 W rows each) rather than one, so fewer consumers wait and release per K block.
  // N need not be a multiple of bw (a multiple of 16). PDL-aware. Measured (H200, 2026-11-25):
  // the K-split tiles win o and down at M <= 64; the sharing ones, correct, run 20-40% behind
  // the unclustered tiles at the same CTA count (docs/PERFORMANCE.md, eighth session) and are
  // kept, one or two tiles each, as the vehicle for finding why.
  // The tiles of 72 x rows and more (up to 256 W rows: four consumers) are for mid M, where one
  // wave of tiles whose x side is any multiple of 8 pads M least (cuBLASLt's choice at M = 777:
  // 192 x 208 of yᵀ in clusters sharing W, 128 x 200 sharing x); they store y through shared
  // memory and TMA. Measured (tenth session): qkv M = 777 on 200 x 192 M2 53.6 us against
  // cuBLASLt's 52.4, down M = 257 on 136 x 128 K2 54.5 against 59.1. At the same tile as
  // cuBLASLt's (192 x 72 in clusters sharing W, qkv M = 257) ours was 28% slower (31.9 against
  // 24.6 us) with three consumers, clustered or not, and is 11% slower (28.1 against 25.2) with
  // one consumer of three blocks (x3): the rest of the gap is open (bench/cuda/GEMM_NOTES.md,
  // run 14).
  kWgmmaSwap32x64N4,
  kWgmmaSwap32x128N2,
  kWgmmaSwap64x128N2,
  kWgmmaSwap32x64M2,
  kWgmmaSwap32x64K2,
  kWgmmaSwap64x64K2,
  kWgmmaSwap200x192M2,
  kWgmmaSwap200x128N2,
  kWgmmaSwap112x256N2,
  kWgmmaSwap160x192N2,
  kWgmmaSwap136x128K2,
  kWgmmaSwap136x192M2,
  kWgmmaSwap128x192M2,
  kWgmmaSwap104x64K2,
  kWgmmaSwap136x64,
  kWgmmaSwap72x192x3,
  // Decode tiles of one x box per 192 or 224 W rows, which put gate_up (N = 24576, 28672) on 128
  // CTAs: not whole m64 blocks (224 rows: the last consumer's block is half empty). Measured
  // (eleventh session): Llama gate_up M <= 32 with PDL 1.00x cuBLASLt (dp_64x128 0.91x), plainly
  // ~1% ahead of dp_64x128; not picked in the tuner's context, where stream_t16_n64 stays ours.
  kWgmmaSwap32x192,
  kWgmmaSwap32x224,
  // Two consumers of two m64 blocks (256 W rows) x 136 x rows, unclustered: Llama's gate_up at
  // M = 257, cuBLASLt's 256 x 136 there (eleventh session: 98.1 us against 115.4 before, cuBLASLt
  // 91.6).
  kWgmmaSwap136x256x2,
};

// Every kernel of the family, in the order above (for benchmarks and tests).
std::span<const GemmKernel> all_gemm_kernels();
const char* gemm_kernel_name(GemmKernel kernel);

// y[M, N] = x[M, K] · W[N, K]ᵀ; all row-major bf16, fp32 accumulation.
struct GemmArgs {
  const __nv_bfloat16* x = nullptr;  // [m, k]
  const __nv_bfloat16* w = nullptr;  // [n, k], as Hugging Face stores linear weights
  __nv_bfloat16* y = nullptr;        // [m, n]; rows >= m are never written
  int m = 0;
  int n = 0;
  int k = 0;
  // Scratch of gemm_workspace_bytes(kernel, m, n, k) bytes (split-K partial sums; may be 0),
  // zero-filled once when allocated; the kernels leave it zero-filled again, so it is reused across calls without a memset.
  // Calls that share a workspace must be ordered (same stream).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Programmatic dependent launch: the kernel may start while the previous kernel in the stream
  // is still running and request its first blocks of W (never written by kernels) before it
  // waits for that kernel (griddepcontrol.wait); it reads x, writes y and touches the workspace
  // only after. The previous kernel lets it start early by issuing griddepcontrol.launch_dependents
  // (without it, the launch still waits for its completion, as a plain launch does). Kernels that
  // are not PDL-aware (kWgmma128x256, kWgmma128x128 and their C2 forms) ignore the flag. Works
  // inside CUDA graph capture (a programmatic edge).
  bool pdl = false;
};

// Whether the kernel honours GemmArgs::pdl.
bool gemm_kernel_supports_pdl(GemmKernel kernel);

// Empty when `kernel` can run this shape, else the reason (a static string).
const char* gemm_unsupported_reason(GemmKernel kernel, int m, int n, int k);

size_t gemm_workspace_bytes(GemmKernel kernel, int m, int n, int k);

// Launches `kernel` on `stream`. Throws InvalidArgument naming the shape when the kernel
// cannot run it or the workspace is too small; CudaError when the launch fails.
void gemm_launch(GemmKernel kernel, const GemmArgs& args, cudaStream_t stream);

}  // namespace xy::cuda
