// Weight-streaming GEMM for a few tokens: y[M, N] = x[M, K] · W[N, K]ᵀ with M <= kTok (8, 16 or
// 32), at the speed of one pass over W.
//
// At such M the GEMM is a read of W (N·K·2 bytes) and nothing else: what counts is that every SM
// keeps enough bytes of W in flight, all the time, that all SMs finish together, and the fixed
// cost around the stream. So:
//   - Rows, not tiles: CTA b of a grid of P CTAs, one per SM, owns rows [N·b/P, N·(b+1)/P) of W,
//     whole (all of K), so no CTA shares an output with another: no split-K workspace, no
//     counters, and the shares differ by at most one row (6144 rows over 132 SMs: 46 or 47).
//   - Inside a CTA, its 16 warps split K: warp w takes 32-column chunks w·U .. w·U + U-1, then
//     16·U further on, and so on, for all rows of a block of up to 8·kGroups rows at once; the
//     warps' partial sums of a block meet once, in shared memory, when the block ends.
//   - W goes from global memory straight into mma.sync fragments, 16 bytes per lane per row per
//     chunk, with no shared-memory staging: the operands are swapped (yᵀ = W · xᵀ; x is the m16
//     side, W rows the n8 side), and the chunk's 32 columns are permuted so that one 16-byte load
//     of 8 consecutive columns is exactly a lane's B fragment for two k16 steps (the sum over K
//     does not care in which order the columns are taken, as long as x takes the same order):
//         lane (g = lane / 4, c = lane % 4) loads W[row g][8c .. 8c+7] and x[token g][8c .. 8c+7];
//         step 0 takes columns 8c+{0,1} as logical k = 2c, 2c+1 and 8c+{2,3} as 2c+8, 2c+9;
//         step 1 the same with 8c+{4,5} and 8c+{6,7}.
//     x comes the same way from L2 (ld.global.cg: written by the previous kernel, so it is read
//     through the coherent path and only after griddepcontrol.wait); with 8 tokens the upper
//     half of the m16 tile is zeros, and at M = 1 only lanes 0-3 load x at all.
//   - Bytes in flight: a warp's step is kGroups x U loads of W (4 KB for 8 x 1 or 4 x 2) in
//     registers, 64 KB per SM over 16 warps; on top of that each warp prefetches into L2 the W
//     lines of its step `prefetch_steps` ahead, so the register loads mostly meet L2 and HBM sees
//     requests well before they are needed (Little's law at ~32 GB/s per SM and 1-2 µs of loaded
//     latency asks for 32-64 KB per SM). The prefetch runs across block boundaries, so the
//     shared-memory reduction at a block's end leaves HBM busy.
//   - Programmatic dependent launch: W does not depend on the previous kernel, so a CTA loads its
//     first step of W and prefetches the next ones BEFORE griddepcontrol.wait, and reads x and
//     writes y only after it; it signals its own dependents when its last step is in registers.
//     Without a PDL launch the wait is a no-op and the order is the same.
//
// Virtual padding: tokens past M are never loaded (their fragments are zero) and never stored;
// rows past a CTA's share are neither loaded nor stored. M > kTok runs ceil(M / kTok) token
// tiles as gridDim.y (W is then read once per tile: correct for any M, fast for M <= kTok).
//
// Batch invariance: an output element's sum runs over the same chunks, warps and mma steps in
// the same order whatever M is (the row shares depend on N and the SM count only).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"

namespace xy::cuda::gemm_detail {
namespace {

template <int kTok_, int kGroups_, int kUnroll_>
struct GemvTraits {
  static_assert(kTok_ == 8 || kTok_ == 16 || kTok_ == 32, "token tiles of 8, 16 or 32");
  static constexpr int kTok = kTok_;
  static constexpr int kGroups = kGroups_;  // 8-row groups of W per block (mma n8 each)
  static constexpr int kUnroll = kUnroll_;  // 32-column chunks per warp per step
  static constexpr int kWarps = 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunk = 32;            // columns of K per chunk: 16 bytes per lane per row
  static constexpr int kXRows = kTok / 8;      // x rows per lane: tokens g, g + 8, ...
  static constexpr int kMTiles = (kTok + 15) / 16;  // m16 tiles of tokens
  // Accumulators of a lane that can hold tokens: an 8-token tile leaves the upper half (tokens
  // g + 8: accumulators 2 and 3) of its m16 tile empty.
  static constexpr int kLiveAcc = kTok == 8 ? 2 : 4;
  static constexpr int kAccPerLane = kGroups * kMTiles * kLiveAcc;
  // Partial sums of every warp for one block, [warp][accumulator][lane] fp32.
  static constexpr int kSmemBytes = kWarps * kAccPerLane * 32 * 4;
  static_assert(kGroups * kUnroll <= 8, "at most 8 loads of W per lane per step (registers)");
};

struct GemvShape {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  __nv_bfloat16* y;
  int m, n, k;
  int prefetch_steps;  // how many steps ahead each warp prefetches its W lines into L2
};

// A step of one CTA: iteration `iter` over K (kWarps x kUnroll chunks) of block `block` of its
// rows.
struct StepPos {
  int block, iter;
};

template <int kTok, int kGroups, int kUnroll>
__global__ void __launch_bounds__(GemvTraits<kTok, kGroups, kUnroll>::kThreads, 1)
    gemv_kernel(const GemvShape s) {
  using T = GemvTraits<kTok, kGroups, kUnroll>;
  extern __shared__ float reduce_buf[];  // [kWarps][kAccPerLane][32]
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;

  // This CTA's rows [row_begin, row_end), cut into 8-row groups and the groups into blocks of
  // at most kGroups (as even as possible), and its token tile.
  const int row_begin = static_cast<int>(int64_t{s.n} * blockIdx.x / gridDim.x);
  const int row_end = static_cast<int>(int64_t{s.n} * (blockIdx.x + 1) / gridDim.x);
  const int num_groups = (row_end - row_begin + 7) / 8;
  const int num_blocks = (num_groups + kGroups - 1) / kGroups;
  auto block_group_first = [&](int block) { return num_groups * block / num_blocks; };
  const int num_chunks = s.k / T::kChunk;
  const int chunks_per_iter = T::kWarps * kUnroll;
  const int num_iters = (num_chunks + chunks_per_iter - 1) / chunks_per_iter;
  const int num_steps = num_blocks * num_iters;
  const int tok0 = blockIdx.y * kTok;
  const uint64_t policy = ptx::evict_first_policy();

  auto pos_of = [&](int step) { return StepPos{step / num_iters, step % num_iters}; };
  auto chunk_of = [&](int iter, int u) { return (iter * T::kWarps + warp) * kUnroll + u; };

  // W fragments of step `pos`: wf[group][u] = W[row of lane][8c .. 8c+7 of chunk u], or zeros
  // past the CTA's rows or past K.
  auto load_w = [&](StepPos pos, uint4 (&wf)[kGroups][kUnroll]) {
    const int first = block_group_first(pos.block);
    const int groups = block_group_first(pos.block + 1) - first;
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi) {
      const int row = row_begin + (first + gi) * 8 + g;
      const bool row_ok = gi < groups && row < row_end;
      const __nv_bfloat16* w_row = s.w + int64_t{row} * s.k + c * 8;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int chunk = chunk_of(pos.iter, u);
        wf[gi][u] = row_ok && chunk < num_chunks
                        ? ptx::ld_global_nc_evict_first(w_row + chunk * T::kChunk, policy)
                        : make_uint4(0, 0, 0, 0);
      }
    }
  };
  // Into L2: the lines of W that this warp loads at `step` (one 128-byte line holds a row's U
  // chunks when U = 2; for U = 1 two warps ask for the same line, which costs nothing more).
  auto prefetch_w = [&](int step) {
    if (step >= num_steps) return;
    const StepPos pos = pos_of(step);
    const int first = block_group_first(pos.block);
    const int rows = min((block_group_first(pos.block + 1) - first) * 8, row_end - row_begin - first * 8);
    const int chunk = chunk_of(pos.iter, 0);
    if (chunk >= num_chunks) return;
    for (int r = lane; r < rows; r += 32) {
      ptx::prefetch_l2(s.w + int64_t{row_begin + first * 8 + r} * s.k + chunk * T::kChunk);
    }
  };
  // x fragments of iteration `iter`: xf[u][r] = x[token g + 8r][8c .. 8c+7 of chunk u], or zeros
  // past M.
  auto load_x = [&](int iter, uint4 (&xf)[kUnroll][T::kXRows]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int chunk = chunk_of(iter, u);
#pragma unroll
      for (int r = 0; r < T::kXRows; ++r) {
        const int token = tok0 + g + 8 * r;
        xf[u][r] = token < s.m && chunk < num_chunks
                       ? __ldcg(reinterpret_cast<const uint4*>(s.x + int64_t{token} * s.k +
                                                              chunk * T::kChunk + c * 8))
                       : make_uint4(0, 0, 0, 0);
      }
    }
  };

  float acc[kGroups][T::kMTiles][4];
  auto zero_acc = [&] {
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi)
#pragma unroll
      for (int mt = 0; mt < T::kMTiles; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[gi][mt][e] = 0.f;
  };

  // acc[group][m16 tile] (tokens x 8 rows) += x_chunk · W_chunkᵀ, two k16 steps per chunk.
  auto compute = [&](const uint4 (&wf)[kGroups][kUnroll], const uint4 (&xf)[kUnroll][T::kXRows]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int mt = 0; mt < T::kMTiles; ++mt) {
        // Tokens g (a0, a2) and g + 8 (a1, a3) of this m16 tile; the upper half of an 8-token
        // tile is padding.
        const uint4 lo = xf[u][2 * mt];
        uint4 hi = make_uint4(0, 0, 0, 0);
        if constexpr (T::kXRows > 1) hi = xf[u][2 * mt + 1];
        const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
        const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
        for (int gi = 0; gi < kGroups; ++gi) {
          ptx::mma_bf16_16816(acc[gi][mt], a0, wf[gi][u].x, wf[gi][u].y);
          ptx::mma_bf16_16816(acc[gi][mt], a1, wf[gi][u].z, wf[gi][u].w);
        }
      }
  };

  // Sums the warps' partials of block `block` and stores its rows of y (tokens past M and rows
  // past the CTA's share skipped). acc[gi][mt][e] of lane (g, c) is token 16 mt + g + 8 (e / 2),
  // row 8 gi + 2c + e % 2 of the block. Only accumulators of tokens < M go through shared
  // memory (at M = 1, 4 lanes of each warp), so the reduction costs what M asks for.
  auto finish_block = [&](int block) {
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi)
#pragma unroll
      for (int mt = 0; mt < T::kMTiles; ++mt)
#pragma unroll
        for (int e = 0; e < T::kLiveAcc; ++e) {
          if (tok0 + 16 * mt + g + 8 * (e >> 1) >= s.m) continue;
          const int i = (gi * T::kMTiles + mt) * T::kLiveAcc + e;
          reduce_buf[(warp * T::kAccPerLane + i) * 32 + lane] = acc[gi][mt][e];
        }
    __syncthreads();
    const int first = block_group_first(block);
    const int block_row0 = row_begin + first * 8;
    const int block_rows = min((block_group_first(block + 1) - first) * 8, row_end - block_row0);
    for (int o = threadIdx.x; o < T::kAccPerLane * 32; o += T::kThreads) {
      const int i = o / 32, l = o % 32;
      const int e = i % T::kLiveAcc, mt = (i / T::kLiveAcc) % T::kMTiles, gi = i / (T::kLiveAcc * T::kMTiles);
      const int tile_token = 16 * mt + (l >> 2) + 8 * (e >> 1);
      const int token = tok0 + tile_token;
      const int row = gi * 8 + (l & 3) * 2 + (e & 1);
      if (token >= s.m || row >= block_rows) continue;
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < T::kWarps; ++w) sum += reduce_buf[w * T::kAccPerLane * 32 + o];
      s.y[int64_t{token} * s.n + block_row0 + row] = __float2bfloat16(sum);
    }
    __syncthreads();  // reduce_buf is rewritten at the next block's end
  };

  // Before the wait: nothing here reads what the previous kernel writes.
  uint4 wf[kGroups][kUnroll];
  if (num_steps > 0) load_w(pos_of(0), wf);
  for (int d = 1; d <= s.prefetch_steps; ++d) prefetch_w(d);
  ptx::griddep_wait();

  zero_acc();
  for (int step = 0; step < num_steps; ++step) {
    const StepPos pos = pos_of(step);
    if (step > 0) load_w(pos, wf);
    uint4 xf[kUnroll][T::kXRows];
    load_x(pos.iter, xf);
    // Steps 1 .. prefetch_steps were asked for before the wait; from step 1 on, one more each.
    if (step > 0 && s.prefetch_steps > 0) prefetch_w(step + s.prefetch_steps);
    compute(wf, xf);
    if (step + 1 == num_steps) ptx::griddep_launch_dependents();
    if (pos.iter + 1 == num_iters) {
      finish_block(pos.block);
      zero_acc();
    }
  }
  // A CTA with no rows still waited above (its dependents count on this grid having waited).
  if (num_steps == 0) ptx::griddep_launch_dependents();
}

template <int kTok, int kGroups, int kUnroll>
cudaError_t launch(const GemvShape& shape, dim3 grid, bool pdl, cudaStream_t stream) {
  using T = GemvTraits<kTok, kGroups, kUnroll>;
  static std::atomic<uint64_t> smem_allowed{0};
  if (const cudaError_t err = allow_dynamic_smem(reinterpret_cast<const void*>(gemv_kernel<kTok, kGroups, kUnroll>),
                                                 T::kSmemBytes, smem_allowed);
      err != cudaSuccess) {
    return err;
  }
  return launch_kernel(gemv_kernel<kTok, kGroups, kUnroll>, grid, dim3(T::kThreads), T::kSmemBytes,
                       stream, pdl, shape);
}

// One CTA per SM, 4 x 2 (two chunks per step, 8 loads of W per lane): measured faster than 8 x 1
// at every Llama-3-8B shape but qkv, where the two are within 1% (gemm_kernels.cuh).
GemvConfig default_config() { return GemvConfig{4, 2, kGemvPrefetchSteps}; }

}  // namespace

GemvConfig gemv_config(int /*tok*/, int /*n*/) { return default_config(); }

cudaError_t launch_gemv(int tok, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                        int m, int n, int k, bool pdl, cudaStream_t stream, const GemvConfig* config) {
  const int sms = num_sms();
  const GemvConfig cfg = config != nullptr ? *config : default_config();
  if (cfg.prefetch_steps < 0) return cudaErrorInvalidValue;
  const GemvShape shape{x, w, y, m, n, k, cfg.prefetch_steps};
  const dim3 grid(static_cast<unsigned>(std::min(sms, n)), static_cast<unsigned>((m + tok - 1) / tok));
  const bool wide = cfg.groups == 8 && cfg.unroll == 1;
  const bool narrow = cfg.groups == 4 && cfg.unroll == 2;
  switch (tok) {
    case 8:
      if (wide) return launch<8, 8, 1>(shape, grid, pdl, stream);
      if (narrow) return launch<8, 4, 2>(shape, grid, pdl, stream);
      break;
    case 16:
      if (wide) return launch<16, 8, 1>(shape, grid, pdl, stream);
      if (narrow) return launch<16, 4, 2>(shape, grid, pdl, stream);
      break;
    case 32:
      if (narrow) return launch<32, 4, 2>(shape, grid, pdl, stream);
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
