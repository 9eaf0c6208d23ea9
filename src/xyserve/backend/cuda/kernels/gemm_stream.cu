// Stream-K weight-streaming GEMM for small M: y[M, N] = x[M, K] · W[N, K]ᵀ.
//
// When M is small the GEMM is a pass over W (N·K·2 bytes) and nothing else matters: every SM
// must keep enough bytes of W in flight to saturate HBM, all the time, and all SMs must finish
// together. So the work is cut into iterations (one 16 KB block of W -- 128 rows x 64 columns,
// 64 x 128 or 32 x 256 -- against the matching tokens of x) and the persistent grid deals each
// CTA an equal, contiguous run of them
// (stream-K): a CTA streams W through a cp.async pipeline without a gap, even where its run
// crosses from one output tile into the next. An output tile whose K range was split between
// CTAs is summed in an fp32 workspace (vector reductions at L2); the last CTA to add its share,
// known from a per-tile counter, writes the bf16 tile and zeroes the workspace behind it, so no
// CTA ever waits on another and the workspace needs no memset between calls. A CTA updates the
// counters once, when its run ends: the release fence that must precede the update would stall
// its stream of W if taken in mid-run.
//
// The tensor-core operands are swapped (yᵀ = W · xᵀ): W's rows fill mma.sync's 16-row side and
// the tokens its 8-column side, so M = 1 wastes 7/8 of the math instead of 15/16, and the math
// is far from being the bottleneck either way.
//
// Virtual padding: rows of x past M are zero-filled by cp.async (src-size 0) and rows of y past
// M are never stored.
//
// Programmatic dependent launch: the prologue's blocks of W are requested before
// griddepcontrol.wait, everything else (x, y, the workspace) after it, so under a PDL launch the
// first 32-64 KB of W per CTA (kStages - 1 blocks) stream in while the previous kernel finishes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"

namespace xy::cuda::gemm_detail {
namespace {

// The 4 warps of a CTA split the W block kWarpsN ways along its rows and kWarpsK ways along
// K; warps that share rows sum their accumulators through shared memory when a tile ends.
// Splitting K lets a block be few rows of long runs (32 x 256: 512 contiguous bytes per row),
// which measured faster than 128 x 64 (2026-11-25, H200: 128-byte runs lose DRAM locality).
template <int kTok, int kBN_, int kBK_, int kWarpsK_>
struct StreamTraits {
  static_assert(kTok % 16 == 0 && kTok <= 128, "tokens per tile: a multiple of 16, at most 128");
  static constexpr int kThreads = 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kBN = kBN_;  // rows of W per tile
  static constexpr int kBK = kBK_;  // columns of K per iteration: kBK / 64 swizzle atoms per row
  static constexpr int kWarpsK = kWarpsK_;
  static constexpr int kWarpsN = kWarps / kWarpsK;
  static constexpr int kWarpRows = kBN / kWarpsN;
  static constexpr int kWarpSteps = kBK / 16 / kWarpsK;  // k16 steps of each warp per block
  static constexpr int kMmaM = kWarpRows / 16;  // m16 tiles per warp
  static constexpr int kMmaN = kTok / 8;        // n8 tiles (tokens) per warp
  static_assert(kWarps % kWarpsK == 0 && kBK % (16 * kWarpsK) == 0, "warp split");
  static_assert(kBK % 64 == 0 && kWarpRows % 16 == 0, "tile shape");
  static_assert(kBN * kBK == 128 * 64, "W block of 16 KB per stage (stage counts assume it)");
  static constexpr int kWTileBytes = kBN * kBK * 2;
  static constexpr int kXTileBytes = kTok * kBK * 2;
  static constexpr int kStageBytes = kWTileBytes + kXTileBytes;
  // Stages chosen so that two CTAs fit on an SM (one for kTok = 128) with >= 64 KB of W in
  // flight per SM: at 4.2 TB/s over 132 SMs and ~1-2 µs loaded latency, that is what keeps
  // HBM busy (Little's law).
  static constexpr int kStages = kBN >= 64 ? (kTok == 16 ? 5 : kTok == 32 ? 4 : kTok == 64 ? 3 : 5)
                                           : (kStageBytes <= 24576 ? 4 : 3);
  static constexpr int kOutPitch = kBN + 8;  // bf16; the 16-byte pad spreads rows over banks
  static constexpr int kOutBytes = kTok * kOutPitch * 2;
  // Accumulators of the warps with warp_k > 0, in fragment order, summed by warp_k = 0.
  static constexpr int kReduceBytes = (kWarpsK - 1) * kWarpsN * kMmaM * kMmaN * 4 * 32 * 4;
  static constexpr int kSmemBytes = kStages * kStageBytes + kOutBytes + kReduceBytes;
  static constexpr int kTileFloats = kBN * kTok;  // one partial tile in the workspace
  static constexpr int kChunksPerRow = kBK / 8;  // 16-byte chunks of one row of a block
  static constexpr int kWChunksPerThread = kBN * kBK / 8 / kThreads;
  static constexpr int kXChunksPerThread = kTok * kBK / 8 / kThreads;
  static_assert(kXChunksPerThread >= 1, "x tile must give every thread a 16-byte chunk");
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows, swizzled so
// that the 8 rows one ldmatrix phase reads land in 8 different bank groups.
__device__ __forceinline__ uint32_t swizzle_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}
// Same for a block of `rows` rows and kBK columns stored as kBK / 64 swizzled 128-byte sub-tiles:
// chunk c of a row lives in sub-tile c / 8.
__device__ __forceinline__ uint32_t block_offset(int rows, int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * rows * 128) + swizzle_offset(row, chunk & 7);
}

struct StreamShape {
  int m, n, k;
  int num_m_tiles, num_n_tiles, k_iters;
  int64_t total_iters;
};

template <int kTok, int kBN, int kBK, int kWarpsK>
__global__ void __launch_bounds__(StreamTraits<kTok, kBN, kBK, kWarpsK>::kThreads)
    stream_gemm_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                       __nv_bfloat16* __restrict__ y, StreamShape shape,
                       uint32_t* __restrict__ counters, float* __restrict__ partials) {
  using T = StreamTraits<kTok, kBN, kBK, kWarpsK>;
  extern __shared__ __align__(1024) unsigned char smem[];
  __shared__ int s_is_last[2];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  // Which rows and which k16 steps of the block; spelled so that with kWarpsK = 1 warp_k is a
  // compile-time 0 (else the compiler keeps per-step addresses live: 70 -> 128 registers).
  const int warp_n = T::kWarpsK == 1 ? warp : warp % T::kWarpsN;
  const int warp_k = T::kWarpsK == 1 ? 0 : warp / T::kWarpsN;
  const int n_thread = warp_n * 32 + lane;  // thread index among the warps with warp_k = 0
  const uint32_t smem_base = ptx::smem_addr(smem);
  __nv_bfloat16* out_tile = reinterpret_cast<__nv_bfloat16*>(smem + T::kStages * T::kStageBytes);
  float* reduce_buf =
      reinterpret_cast<float*>(smem + T::kStages * T::kStageBytes + T::kOutBytes);
  const uint64_t policy = ptx::evict_first_policy();

  // This CTA's contiguous run of iterations [it_begin, it_end).
  const int64_t it_begin = shape.total_iters * blockIdx.x / gridDim.x;
  const int64_t it_end = shape.total_iters * (blockIdx.x + 1) / gridDim.x;

  // A stage is a block of W and the matching tokens of x, loaded apart so that W can be
  // requested before griddepcontrol.wait (W never depends on the previous kernel; x does).
  auto load_stage_w = [&](int64_t it, int stage) {
    const int tile = static_cast<int>(it / shape.k_iters);
    const int kb = static_cast<int>(it - int64_t{tile} * shape.k_iters);
    const int n_tile = tile / shape.num_m_tiles;
    const uint32_t w_smem = smem_base + stage * T::kStageBytes;
    const __nv_bfloat16* w_src = w + (int64_t{n_tile} * T::kBN) * shape.k + kb * T::kBK;
#pragma unroll
    for (int i = 0; i < T::kWChunksPerThread; ++i) {
      const int id = i * T::kThreads + tid;
      const int row = id / T::kChunksPerRow, chunk = id % T::kChunksPerRow;
      ptx::cp_async_16_evict_first(w_smem + block_offset(T::kBN, row, chunk),
                                   w_src + int64_t{row} * shape.k + chunk * 8, policy);
    }
  };
  auto load_stage_x = [&](int64_t it, int stage) {
    const int tile = static_cast<int>(it / shape.k_iters);
    const int kb = static_cast<int>(it - int64_t{tile} * shape.k_iters);
    const int n_tile = tile / shape.num_m_tiles;
    const int m_tile = tile - n_tile * shape.num_m_tiles;
    const uint32_t x_smem = smem_base + stage * T::kStageBytes + T::kWTileBytes;
#pragma unroll
    for (int i = 0; i < T::kXChunksPerThread; ++i) {
      const int id = i * T::kThreads + tid;
      const int row = id / T::kChunksPerRow, chunk = id % T::kChunksPerRow;
      const int token = m_tile * kTok + row;
      const bool valid = token < shape.m;
      const __nv_bfloat16* src = valid ? x + int64_t{token} * shape.k + kb * T::kBK + chunk * 8 : x;
      ptx::cp_async_16(x_smem + block_offset(kTok, row, chunk), src, valid);
    }
  };
  auto load_stage = [&](int64_t it, int stage) {
    load_stage_w(it, stage);
    load_stage_x(it, stage);
  };

  float acc[T::kMmaM][T::kMmaN][4];
  auto zero_acc = [&] {
#pragma unroll
    for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
      for (int nt = 0; nt < T::kMmaN; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;
  };

  // acc[W rows of this warp][tokens] += W_tile · x_tileᵀ over one kBK-wide K block.
  auto compute_stage = [&](int stage) {
    const uint32_t w_smem = smem_base + stage * T::kStageBytes;
    const uint32_t x_smem = w_smem + T::kWTileBytes;
#pragma unroll
    for (int step = 0; step < T::kWarpSteps; ++step) {
      const int ks = warp_k * T::kWarpSteps + step;
      uint32_t a[T::kMmaM][4];
#pragma unroll
      for (int mt = 0; mt < T::kMmaM; ++mt) {
        const int row = warp_n * T::kWarpRows + mt * 16 + (lane & 15);
        ptx::ldmatrix_x4(w_smem + block_offset(T::kBN, row, ks * 2 + (lane >> 4)), a[mt]);
      }
#pragma unroll
      for (int np = 0; np < T::kMmaN / 2; ++np) {
        uint32_t b[4];  // b[0..1]: tokens np*16 + 0..7; b[2..3]: tokens np*16 + 8..15
        const int token = np * 16 + ((lane >> 4) << 3) + (lane & 7);
        ptx::ldmatrix_x4(x_smem + block_offset(kTok, token, ks * 2 + ((lane >> 3) & 1)), b);
#pragma unroll
        for (int mt = 0; mt < T::kMmaM; ++mt) {
          ptx::mma_bf16_16816(acc[mt][2 * np], a[mt], b[0], b[1]);
          ptx::mma_bf16_16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  };

  // Writes acc of the warp_k = 0 warps (fp32, fragment layout) as bf16 rows of y through shared
  // memory, so that global stores are 16 bytes wide; rows past M are skipped.
  auto store_tile = [&](int n_tile, int m_tile) {
    if (warp_k == 0) {
#pragma unroll
    for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
      for (int nt = 0; nt < T::kMmaN; ++nt) {
        const int n_local = warp_n * T::kWarpRows + mt * 16 + (lane >> 2);
        const int token = nt * 8 + (lane & 3) * 2;
        out_tile[token * T::kOutPitch + n_local] = __float2bfloat16(acc[mt][nt][0]);
        out_tile[(token + 1) * T::kOutPitch + n_local] = __float2bfloat16(acc[mt][nt][1]);
        out_tile[token * T::kOutPitch + n_local + 8] = __float2bfloat16(acc[mt][nt][2]);
        out_tile[(token + 1) * T::kOutPitch + n_local + 8] = __float2bfloat16(acc[mt][nt][3]);
      }
    }
    __syncthreads();
    constexpr int kOutChunksPerRow = T::kBN / 8;
    for (int id = tid; id < kTok * kOutChunksPerRow; id += T::kThreads) {
      const int row = id / kOutChunksPerRow, chunk = id % kOutChunksPerRow;
      const int token = m_tile * kTok + row;
      if (token < shape.m) {
        const uint4 v = *reinterpret_cast<const uint4*>(out_tile + row * T::kOutPitch + chunk * 8);
        *reinterpret_cast<uint4*>(y + int64_t{token} * shape.n + n_tile * T::kBN + chunk * 8) = v;
      }
    }
  };

  // Partial tiles live in the workspace in fragment order: each thread's 4 accumulators of one
  // mma tile are 16 contiguous bytes, and a warp's 32 of them are contiguous.
  auto partial_ptr = [&](int tile, int mt, int nt) {
    return partials + int64_t{tile} * T::kTileFloats +
           ((mt * T::kMmaN + nt) * (T::kWarpsN * 32) + n_thread) * 4;
  };

  // Partial tiles reduced into the workspace whose counters are not yet updated (uniform
  // over the CTA).
  int pending_tile0 = 0, pending_done0 = 0, pending_tile1 = 0, pending_done1 = 0;
  int num_pending = 0;

  // Ends the run of K blocks [kb_first, kb_last] of `tile` that this CTA accumulated in acc.
  auto finish_segment = [&](int tile, int kb_first, int kb_last) {
    const int n_tile = tile / shape.num_m_tiles;
    const int m_tile = tile - n_tile * shape.num_m_tiles;
    if constexpr (T::kWarpsK > 1) {
      // acc of warp_k = 0 += acc of every other warp_k with the same rows.
      auto slot = [&](int wk, int mt, int nt) {
        return reduce_buf + ((((wk - 1) * T::kMmaM + mt) * T::kMmaN + nt) * (T::kWarpsN * 32) + n_thread) * 4;
      };
      if (warp_k > 0) {
#pragma unroll
        for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
          for (int nt = 0; nt < T::kMmaN; ++nt)
            *reinterpret_cast<float4*>(slot(warp_k, mt, nt)) =
                make_float4(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3]);
      }
      __syncthreads();
      if (warp_k == 0) {
        for (int wk = 1; wk < T::kWarpsK; ++wk)
#pragma unroll
          for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
            for (int nt = 0; nt < T::kMmaN; ++nt) {
              const float4 v = *reinterpret_cast<const float4*>(slot(wk, mt, nt));
              acc[mt][nt][0] += v.x;
              acc[mt][nt][1] += v.y;
              acc[mt][nt][2] += v.z;
              acc[mt][nt][3] += v.w;
            }
      }
      // reduce_buf is rewritten only at the next tile's end, after the main loop's barriers.
    }
    if (kb_first == 0 && kb_last == shape.k_iters - 1) {  // the whole K range: no reduction
      store_tile(n_tile, m_tile);
      return;
    }
    // Token blocks of 8 wholly past M hold zeros: they add nothing, so their part of the
    // workspace stays zero (at M = 1, half of the reduction traffic of a 16-token tile).
    const int live_tokens = shape.m - (tile % shape.num_m_tiles) * kTok;
    if (warp_k == 0) {
#pragma unroll
      for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
        for (int nt = 0; nt < T::kMmaN; ++nt)
          if (nt * 8 < live_tokens) {
            ptx::red_add_v4(partial_ptr(tile, mt, nt), acc[mt][nt][0], acc[mt][nt][1],
                            acc[mt][nt][2], acc[mt][nt][3]);
          }
    }
    // The counter update waits for the end of the run (finish_run): its release fence would
    // otherwise stall this CTA's stream of W in mid-run. Only a run's first and last segments
    // can be partial tiles, so at most two are pending.
    // Named scalars, not an array indexed at run time, which would live in local memory.
    if (num_pending == 0) {
      pending_tile0 = tile;
      pending_done0 = kb_last - kb_first + 1;
    } else {
      pending_tile1 = tile;
      pending_done1 = kb_last - kb_first + 1;
    }
    ++num_pending;
  };

  // Sums a tile's parts from the workspace, zeroes them behind, and stores the tile.
  auto finalize_tile = [&](int tile) {
    const int n_tile = tile / shape.num_m_tiles;
    const int m_tile = tile - n_tile * shape.num_m_tiles;
    __threadfence();  // acquire: the other CTAs' reductions are visible from here on
    const int live_tokens = shape.m - m_tile * kTok;
    if (warp_k == 0) {
#pragma unroll
      for (int mt = 0; mt < T::kMmaM; ++mt)
#pragma unroll
        for (int nt = 0; nt < T::kMmaN; ++nt) {
          if (nt * 8 >= live_tokens) continue;  // never added to; not stored either
          float4* p = reinterpret_cast<float4*>(partial_ptr(tile, mt, nt));
          const float4 sum = __ldcg(p);
          __stcg(p, make_float4(0.f, 0.f, 0.f, 0.f));
          acc[mt][nt][0] = sum.x;
          acc[mt][nt][1] = sum.y;
          acc[mt][nt][2] = sum.z;
          acc[mt][nt][3] = sum.w;
        }
    }
    if (tid == 0) counters[tile] = 0;  // the next launch (stream-ordered) starts from zero
    store_tile(n_tile, m_tile);
  };

  // Publishes the pending partial tiles; the CTA that completes a tile stores it.
  auto finish_run = [&] {
    if (num_pending == 0) return;
    __threadfence();  // release: this CTA's reductions are ordered before its counter updates
    __syncthreads();
    if (tid == 0) {
      const uint32_t k_iters = static_cast<uint32_t>(shape.k_iters);
      s_is_last[0] = atomicAdd(&counters[pending_tile0], uint32_t(pending_done0)) + pending_done0 == k_iters;
      if (num_pending == 2) {
        s_is_last[1] = atomicAdd(&counters[pending_tile1], uint32_t(pending_done1)) + pending_done1 == k_iters;
      }
    }
    __syncthreads();
    if (s_is_last[0]) {
      finalize_tile(pending_tile0);
      __syncthreads();  // out_tile is reused by the next finalize_tile
    }
    if (num_pending == 2 && s_is_last[1]) finalize_tile(pending_tile1);
  };

  // Pipeline prologue: kStages - 1 loads in flight. W of every prologue stage is requested
  // before griddepcontrol.wait (a no-op unless launched with PDL), x after it; the first commit
  // group then holds all of that W with stage 0's x, so waiting for it is waiting for more than
  // the main loop needs at its first step, never less. Every step commits a group, empty or
  // not, so that wait_group counts stay uniform.
#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (it_begin + s < it_end) load_stage_w(it_begin + s, s);
  }
  ptx::griddep_wait();  // from here on: x, y, the workspace and its counters
#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (it_begin + s < it_end) load_stage_x(it_begin + s, s);
    ptx::cp_async_commit();
  }
  zero_acc();
  int kb_first = static_cast<int>(it_begin % shape.k_iters);
  int stage = 0;
  for (int64_t it = it_begin; it < it_end; ++it) {
    ptx::cp_async_wait<T::kStages - 2>();
    __syncthreads();  // stage `stage` landed for all threads; the stage reloaded below is free
    const int64_t next = it + T::kStages - 1;
    const int next_stage = stage == 0 ? T::kStages - 1 : stage - 1;
    if (next < it_end) load_stage(next, next_stage);
    ptx::cp_async_commit();
    compute_stage(stage);
    stage = stage + 1 == T::kStages ? 0 : stage + 1;

    const int tile = static_cast<int>(it / shape.k_iters);
    const int kb = static_cast<int>(it - int64_t{tile} * shape.k_iters);
    if (kb == shape.k_iters - 1 || it + 1 == it_end) {
      finish_segment(tile, kb_first, kb);
      zero_acc();
      kb_first = 0;
    }
  }
  ptx::cp_async_wait<0>();
  ptx::griddep_launch_dependents();  // the next kernel's launch overlaps the fix-ups below
  finish_run();
}

// Raises the kernel's shared-memory limit on the current device (once per device).
template <int kTok, int kBN, int kBK, int kWarpsK>
cudaError_t allow_stream_smem() {
  static std::atomic<uint64_t> allowed{0};
  return allow_dynamic_smem(reinterpret_cast<const void*>(stream_gemm_kernel<kTok, kBN, kBK, kWarpsK>),
                            StreamTraits<kTok, kBN, kBK, kWarpsK>::kSmemBytes, allowed);
}

template <int kTok, int kBN, int kBK, int kWarpsK>
int stream_grid_size() {
  // Cached per instantiation: occupancy does not change within a process (its GPUs are alike).
  static const int grid = [] {
    using T = StreamTraits<kTok, kBN, kBK, kWarpsK>;
    int device = 0, num_sms = 0, per_sm = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
    allow_stream_smem<kTok, kBN, kBK, kWarpsK>();
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_gemm_kernel<kTok, kBN, kBK, kWarpsK>,
                                                  T::kThreads,
                                                  T::kSmemBytes);
    return num_sms * (per_sm > 0 ? per_sm : 1);
  }();
  return grid;
}

StreamShape make_shape(int tok, int bn, int bk, int m, int n, int k) {
  StreamShape s{};
  s.m = m;
  s.n = n;
  s.k = k;
  s.num_m_tiles = (m + tok - 1) / tok;
  s.num_n_tiles = n / bn;
  s.k_iters = k / bk;
  s.total_iters = int64_t{s.num_m_tiles} * s.num_n_tiles * s.k_iters;
  return s;
}

size_t counters_bytes(int num_tiles) { return (size_t(num_tiles) * 4 + 255) / 256 * 256; }

template <int kTok, int kBN, int kBK, int kWarpsK>
cudaError_t launch(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m,
                   int n, int k, void* workspace, bool pdl, cudaStream_t stream) {
  using T = StreamTraits<kTok, kBN, kBK, kWarpsK>;
  const StreamShape shape = make_shape(kTok, kBN, kBK, m, n, k);
  const int num_tiles = shape.num_m_tiles * shape.num_n_tiles;
  auto* counters = static_cast<uint32_t*>(workspace);
  auto* partials =
      reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + counters_bytes(num_tiles));
  const int64_t grid = std::min<int64_t>(stream_grid_size<kTok, kBN, kBK, kWarpsK>(), shape.total_iters);
  if (const cudaError_t err = allow_stream_smem<kTok, kBN, kBK, kWarpsK>(); err != cudaSuccess) return err;
  return launch_kernel(stream_gemm_kernel<kTok, kBN, kBK, kWarpsK>, dim3(static_cast<unsigned>(grid)),
                       dim3(T::kThreads), T::kSmemBytes, stream, pdl, x, w, y, shape, counters, partials);
}

}  // namespace

size_t stream_workspace_bytes(int tok, int bn, int m, int n, int k) {
  const StreamShape shape = make_shape(tok, bn, 128 * 64 / bn, m, n, k);
  const int num_tiles = shape.num_m_tiles * shape.num_n_tiles;
  return counters_bytes(num_tiles) + size_t(num_tiles) * bn * tok * sizeof(float);
}

cudaError_t launch_stream(int tok, int bn, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          __nv_bfloat16* y, int m, int n, int k, void* workspace, bool pdl,
                          cudaStream_t stream) {
  const auto args = std::make_tuple(x, w, y, m, n, k, workspace, pdl, stream);
  if (bn == 128) {
    switch (tok) {
      case 16: return std::apply(launch<16, 128, 64, 1>, args);
      case 32: return std::apply(launch<32, 128, 64, 1>, args);
      case 64: return std::apply(launch<64, 128, 64, 1>, args);
    }
  } else if (bn == 64) {
    switch (tok) {
      case 16: return std::apply(launch<16, 64, 128, 1>, args);
      case 32: return std::apply(launch<32, 64, 128, 1>, args);
      case 64: return std::apply(launch<64, 64, 128, 1>, args);
    }
  } else if (bn == 32) {
    switch (tok) {
      case 16: return std::apply(launch<16, 32, 256, 2>, args);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
