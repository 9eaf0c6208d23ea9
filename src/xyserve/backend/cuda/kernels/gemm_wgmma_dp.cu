// Data-parallel GEMM for Hopper, mid M: y[M, N] = x[M, K] · W[N, K]ᵀ with TMA loads and wgmma
// (sm_90a), one whole output tile per CTA step, no split of K, no workspace, no fix-up.
//
// Why: at mid M (128..1024) on Llama-3-8B shapes the stream-K kernel (gemm_wgmma_sk.cu) spent
// 20-32% of each CTA's time in the split-tile fix-up (fp32 reductions at L2; timeline of
// wgmma_sk_128x128 at M = 128) and ended on a tail of the CTAs that complete tiles, while
// cuBLASLt, 1.1-1.6x faster there, runs data-parallel tiles whose width is chosen so that the tile
// count is just under one wave of 132 SMs (gemm_bench --lt-algos; N x M: qkv M = 128 96 x 64,
// M = 256 96 x 128, M = 384 144 x 128, M = 512 192 x 128; o M = 128 64 x 64, M = 256 128 x 64,
// M = 512 128 x 128). So the tile widths here are not powers of two: any kBN whose consumer width
// (kBN, or kBN / 2 at kBM = 64) is a multiple of 8 with a wgmma wrapper (gemm_wgmma_ptx.cuh);
// e.g. qkv (N = 6144) at M = 384 takes 128 x 144: 3 x 43 = 129 tiles, the last n-tile 96 columns
// wide.
//
// Tile: kBM rows of x by kBN rows of W. Warpgroup 0 is the producer: one thread issues TMA loads of
// x and W blocks (64 columns of K, 128-byte swizzle) into a kStages ring completing on "full"
// mbarriers by transaction count. Warpgroups 1 and 2 are consumers: with kBM = 128 they split the
// tile's rows (64 x kBN each, m64nkBNk16), with kBM = 64 its columns (64 x kBN / 2 each), so a
// 64-row tile still has two warpgroups issuing MMAs; each releases a stage on its "empty"
// mbarrier. The producer gives its registers to the consumers (setmaxnreg).
//
// Grid: persistent, min(tiles, SMs) CTAs; CTA b runs tiles b, b + grid, ... (the producer fills
// the ring for the next tile while the consumers store the current one). Raster: m-tiles vary
// fastest (tile = n_tile * num_m_tiles + m_tile), so the CTAs that share a W tile run together:
// it comes from HBM once and the other m-tiles find it in L2 (x, at most 8 row tiles at mid M,
// stays in L2).
//
// Virtual padding both ways: x's and W's tensor maps are exactly [M, K] and [N, K], so TMA
// zero-fills rows past M and W rows past N (with one m-tile, x's box stops at M rounded up to 8
// rows: x_box_rows, gemm_kernels.cuh); y is stored only where row < M and column < N. N need
// not be a multiple of kBN, only of 16 (wgmma's n is a multiple of 8; 16 also keeps gemm_check's
// N = 200 refused), and K a multiple of 64.
//
// Epilogue, 128-row tiles: bf16 through shared memory and TMA stores (store_tile_by_slabs,
// gemm_wgmma_consumer.cuh; 16-column boxes for consumer widths that are not multiples of 64), which
// drop what lies past M or N. 64-row tiles: bf16 pairs straight from the fragments (4-byte stores,
// rows past M skipped). Measured (H200, 2026-11-25, full sweep against the eighth session's,
// normalised by cuBLASLt in each run): staging won 5-19% at M >= 777 on every tile and 5-11% on
// 128 x 192 and 128 x 224 from M = 64 up, but lost 3-13% at M <= 128 on the others (64 x 64,
// 64 x 96, 64 x 192, 128 x 96, 128 x 144), whose tiles there are mostly rows past M: the staged
// store still writes and waits for whole boxes, a tail the fragment stores skip. The 64-row tiles
// are the ones that win at small M, the 128-row ones at mid and large M.
//
// Programmatic dependent launch: the producer requests the first kStages blocks of W before
// griddepcontrol.wait (no kernel writes W), x only after it; the consumers wait before they
// write y.
//
// Next steps, not done: clusters of CTAs along M with TMA multicast of the W tile (one L2 read
// per cluster instead of one per m-tile, as gemm_wgmma.cu's C2 tiles), and two CTAs per SM for the
// narrow tiles. Stages: as many as fit in 227 KB beside the output staging, at most 8; not tuned.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_consumer.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_ptx.cuh"

namespace xy::cuda::gemm_detail {
namespace {

constexpr int kMaxSmemBytes = 227 * 1024;  // per block, sm_90

template <int kBM_, int kBN_>
struct DpTraits {
  static constexpr int kBM = kBM_;
  static constexpr int kBN = kBN_;
  static constexpr int kBK = 64;  // 128 bytes: one swizzle row
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Each consumer owns 64 rows x kConsumerN columns of the tile, at (kRowStep, kColStep) x its index.
  static constexpr bool kSplitRows = kBM == 128;
  static constexpr int kConsumerN = kSplitRows ? kBN : kBN / 2;
  static constexpr int kRowStep = kSplitRows ? 64 : 0;
  static constexpr int kColStep = kSplitRows ? 0 : kConsumerN;
  static constexpr int kAcc = kConsumerN / 2;  // fp32 accumulators per consumer thread
  static constexpr int kATileBytes = kBM * kBK * 2;
  static constexpr int kBTileBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kATileBytes + kBTileBytes;
  // Output staging (128-row tiles): per consumer two 8 KB chunk buffers (store_tile_by_slabs).
  static constexpr bool kStagedOut = kBM == 128;
  static constexpr int kOutBytes = kStagedOut ? kConsumers * ptx::kOutStagingBytes : 0;
  // As many stages as fit beside it (+1024 for aligning to the swizzle atom, +1024 for the static
  // barriers), at most 8: e.g. 8 for 64 x 96, 5 for 128 x 144, 4 for 128 x 192 and 128 x 224.
  static constexpr int kStages = std::min(8, (kMaxSmemBytes - 2048 - kOutBytes) / kStageBytes);
  static constexpr int kSmemBytes = kStages * kStageBytes + kOutBytes + 1024;
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static_assert(kBM == 64 || kBM == 128, "64 rows per consumer warpgroup, split by rows or columns");
  static_assert(kConsumerN % 8 == 0 && kConsumerN <= 256, "wgmma n: a multiple of 8 up to 256");
  // Every tile and every consumer's part of W is a whole number of 8-row (1024-byte) swizzle atoms,
  // so each stays 1024-byte aligned, as the descriptors' zero base offset needs.
  static_assert(kBTileBytes % 1024 == 0 && (kColStep * 128) % 1024 == 0, "swizzle atoms");
  static_assert(kBN <= 256, "TMA box of at most 256 rows");
  static_assert(kStages >= 3, "pipeline depth");
  static_assert(kSmemBytes + 1024 <= kMaxSmemBytes, "shared memory per block");
  static_assert(128 * kProducerRegs + kConsumers * 128 * kConsumerRegs <= 65536, "register file");
};

template <int kBM, int kBN>
__global__ void __launch_bounds__(DpTraits<kBM, kBN>::kThreads, 1)
    wgmma_dp_kernel(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w,
                    const __grid_constant__ CUtensorMap map_y, __nv_bfloat16* __restrict__ y, int m, int n, int k,
                    int stage_tx_bytes) {
  using T = DpTraits<kBM, kBN>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[T::kStages];
  __shared__ __align__(8) uint64_t empty_bar[T::kStages];
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* a_tiles = smem;                                // [stage][kBM rows][64] of x
  unsigned char* b_tiles = smem + T::kStages * T::kATileBytes;  // [stage][kBN rows][64] of W
  unsigned char* out_slabs = smem + T::kStages * T::kStageBytes;  // [consumer][2][8 KB] bf16

  const int num_m_tiles = (m + kBM - 1) / kBM;
  const int num_tiles = num_m_tiles * ((n + kBN - 1) / kBN);
  const int k_iters = k / T::kBK;

  // Both roles count K blocks over all of this CTA's tiles (g): stage g % kStages, phase
  // g / kStages, so the ring runs on across tiles.
  if (threadIdx.x == 0) {
    // At mid M a CTA runs one or two tiles of 64-224 K blocks; the first fill is started first
    // thing, with W only: it may be requested before griddepcontrol.wait (no kernel writes W).
    ptx::prefetch_tensor_map(&map_w);
    ptx::init_ring_barriers<T::kStages>(full_bar, empty_bar, T::kConsumers);
    ptx::fence_mbarrier_init();
    uint32_t g = 0;
    for (int tile = blockIdx.x; tile < num_tiles && g < T::kStages; tile += gridDim.x) {
      const int n_tile = tile / num_m_tiles;
      for (int kb = 0; kb < k_iters && g < T::kStages; ++kb, ++g) {
        ptx::mbarrier_arrive_expect_tx(&full_bar[g], stage_tx_bytes);
        ptx::tma_load_2d(b_tiles + g * T::kBTileBytes, &map_w, &full_bar[g], kb * T::kBK, n_tile * kBN);
      }
    }
    ptx::prefetch_tensor_map(&map_x);
    if constexpr (T::kStagedOut) ptx::prefetch_tensor_map(&map_y);
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    ptx::setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x != 0) return;
    ptx::griddep_wait();  // x from here on
    uint32_t g = 0;
    for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
      const int m_tile = tile % num_m_tiles;
      const int n_tile = tile / num_m_tiles;
      for (int kb = 0; kb < k_iters; ++kb, ++g) {
        const int s = g % T::kStages;
        if (g >= T::kStages) {  // stage s is refilled once both consumers released it
          ptx::mbarrier_wait(&empty_bar[s], ((g / T::kStages) - 1) & 1);
          ptx::mbarrier_arrive_expect_tx(&full_bar[s], stage_tx_bytes);
          ptx::tma_load_2d(b_tiles + s * T::kBTileBytes, &map_w, &full_bar[s], kb * T::kBK, n_tile * kBN);
        }
        ptx::tma_load_2d(a_tiles + s * T::kATileBytes, &map_x, &full_bar[s], kb * T::kBK, m_tile * kBM);
      }
    }
    // Every load is issued: the next kernel may start on the SMs this grid frees (a hint; it still
    // waits for this grid's completion). The consumers issue it too, at their last tile.
    ptx::griddep_launch_dependents();
    return;
  }

  ptx::setmaxnreg_inc<T::kConsumerRegs>();
  ptx::griddep_wait();  // y from here on
  const int consumer = threadIdx.x / 128 - 1;
  const int t = threadIdx.x % 128;  // thread within this consumer
  const bool leader = t == 0;
  const int warp = t / 32, lane = t % 32;
  const int row_base = consumer * T::kRowStep;  // this consumer's rows and columns in the tile
  const int col_base = consumer * T::kColStep;
  uint32_t g = 0;
  uint32_t slabs_stored = 0;
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    if (tile + static_cast<int>(gridDim.x) >= num_tiles) ptx::griddep_launch_dependents();
    // acc[64 rows][kConsumerN columns] of this consumer = x rows · W rowsᵀ over all of K, in wgmma
    // fragment order.
    float d[T::kAcc];
#pragma unroll
    for (int j = 0; j < T::kAcc; ++j) d[j] = 0.f;
    ptx::wgmma_ring_k_blocks<T::kConsumerN, T::kBK, T::kStages, T::kATileBytes, T::kBTileBytes>(
        d, a_tiles, b_tiles, row_base, col_base, full_bar, ptx::RingRelease<1>(empty_bar), g, k_iters,
        leader);
    ptx::wgmma_wait<0>();
    if (k_iters > 0 && leader) ptx::mbarrier_arrive(&empty_bar[(g - 1) % T::kStages]);

    const int m_tile = tile % num_m_tiles;
    const int n_tile = tile / num_m_tiles;
    if constexpr (T::kStagedOut) {
      // Nothing to store where this consumer's rows all lie past M or its columns past N.
      const int row0 = m_tile * kBM + row_base;
      const int col0 = n_tile * kBN + col_base;
      if (row0 >= m || col0 >= n) continue;
      ptx::store_tile_by_slabs<T::kConsumerN>(d, out_slabs + consumer * ptx::kOutStagingBytes, slabs_stored, &map_y,
                                              col0, row0, 2 + consumer, leader);
    } else {
      // Fragment order of m64nNk16 (PTX 9.7.15.5.1.1): d[4j + r] is at row warp*16 + lane/4 (+8 for
      // r >= 2), column 8j + 2*(lane%4) (+1 for odd r). N % 16 == 0, so a column pair is either
      // wholly inside y or wholly past N.
      const int row0 = m_tile * kBM + row_base + warp * 16 + (lane >> 2);
      const int tile_col = n_tile * kBN + col_base;  // this consumer's first column
      const int col0 = tile_col + (lane & 3) * 2;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = row0 + half * 8;
        if (row < m) {
          __nv_bfloat16* dst = y + int64_t{row} * n + col0;
#pragma unroll
          for (int j = 0; j < T::kConsumerN / 8; ++j) {
            if (tile_col + 8 * j < n) {
              *reinterpret_cast<__nv_bfloat162*>(dst + j * 8) =
                  __floats2bfloat162_rn(d[4 * j + 2 * half], d[4 * j + 2 * half + 1]);
            }
          }
        }
      }
    }
  }
  if (T::kStagedOut && leader) ptx::bulk_wait_group<0>();  // shared memory must outlive the stores
}

template <int kBM, int kBN>
cudaError_t launch(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int m, int n, int k,
                   bool pdl, cudaStream_t stream) {
  using T = DpTraits<kBM, kBN>;
  const void* kernel = reinterpret_cast<const void*>(wgmma_dp_kernel<kBM, kBN>);
  CUtensorMap map_x, map_w, map_y{};  // y's map: staged tiles only (the others store through y)
  const int x_rows = x_box_rows(m, kBM);
  if (!make_map(&map_x, x, m, k, x_rows) || !make_map(&map_w, w, n, k, kBN) ||
      (T::kStagedOut && !make_out_map(&map_y, y, m, n, ptx::kOutBoxCols<T::kConsumerN>))) {
    return cudaErrorInvalidValue;
  }
  const int stage_tx_bytes = T::kBTileBytes + x_rows * T::kBK * 2;
  static std::atomic<uint64_t> smem_allowed{0};
  if (const cudaError_t err = allow_dynamic_smem(kernel, T::kSmemBytes, smem_allowed); err != cudaSuccess) {
    return err;
  }
  const int64_t tiles = int64_t{(m + kBM - 1) / kBM} * ((n + kBN - 1) / kBN);
  const int grid = static_cast<int>(std::min<int64_t>(tiles, num_sms()));  // 1 CTA per SM (shared memory)
  return launch_kernel(wgmma_dp_kernel<kBM, kBN>, dim3(static_cast<unsigned>(grid)), dim3(T::kThreads),
                       T::kSmemBytes, stream, pdl, map_x, map_w, map_y, y, m, n, k, stage_tx_bytes);
}

}  // namespace

cudaError_t launch_wgmma_dp(int bm, int bn, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                            int m, int n, int k, bool pdl, cudaStream_t stream) {
  if (bm == 64) {
    switch (bn) {
      case 64: return launch<64, 64>(x, w, y, m, n, k, pdl, stream);
      case 96: return launch<64, 96>(x, w, y, m, n, k, pdl, stream);
      case 128: return launch<64, 128>(x, w, y, m, n, k, pdl, stream);
      case 192: return launch<64, 192>(x, w, y, m, n, k, pdl, stream);
    }
  } else if (bm == 128) {
    switch (bn) {
      case 96: return launch<128, 96>(x, w, y, m, n, k, pdl, stream);
      case 128: return launch<128, 128>(x, w, y, m, n, k, pdl, stream);
      case 144: return launch<128, 144>(x, w, y, m, n, k, pdl, stream);
      case 192: return launch<128, 192>(x, w, y, m, n, k, pdl, stream);
      case 224: return launch<128, 224>(x, w, y, m, n, k, pdl, stream);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace xy::cuda::gemm_detail
