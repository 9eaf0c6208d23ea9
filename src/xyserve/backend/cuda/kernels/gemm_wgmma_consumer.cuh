// The ring of shared-memory stages shared by the TMA + wgmma GEMM kernels (gemm_wgmma.cu,
// gemm_wgmma_sk.cu, gemm_wgmma_dp.cu, gemm_wgmma_swap.cu): a producer fills stages by TMA,
// completing on "full" mbarriers, and consumers release them on "empty" ones. Here: the barriers'
// initialisation, the consumer warpgroup's main loop and its store of a tile through shared memory.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>

#include <cstdint>

#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_ptx.cuh"

namespace xy::cuda::ptx {

// One thread, before any use: each stage's "full" barrier completes on the producer's one arrival
// (with its transaction bytes), its "empty" barrier on `empty_arrivals` consumer releases. The
// caller fences (fence_mbarrier_init) once it has initialised any barriers of its own too.
template <int kStages>
__device__ __forceinline__ void init_ring_barriers(uint64_t* full_bar, uint64_t* empty_bar, uint32_t empty_arrivals) {
  for (int s = 0; s < kStages; ++s) {
    mbarrier_init(&full_bar[s], 1);
    mbarrier_init(&empty_bar[s], empty_arrivals);
  }
}

// Releases a stage of the ring to every producer that writes it: with kSharers > 1 (the stage holds
// rows multicast by the other CTAs of the cluster, ranks 0 .. kSharers - 1) an arrival on that
// stage's "empty" barrier in each of those CTAs, else on this CTA's own. Arrivals at CTA scope, as
// CUTLASS's cluster pipelines make them: the stage's reads are done (wgmma wait) and nothing written
// needs publishing. (Arrivals at cluster scope with cluster-scope acquire waits, the swapped
// kernel's first version, cost ~1 us per K block: qkv at M = 1 on 32 x 64 in clusters of 2, 65 us
// against 19.5 after.) Made once per consumer thread; used as wgmma_ring_k_blocks' release.
template <int kSharers>
struct RingRelease {
  uint64_t* empty_bar;
  uint32_t empty_addr[kSharers];  // the stage-0 "empty" barrier of each sharing CTA, shared::cluster

  __device__ __forceinline__ explicit RingRelease(uint64_t* bar) : empty_bar(bar) {
    if constexpr (kSharers > 1) {
#pragma unroll
      for (int r = 0; r < kSharers; ++r) empty_addr[r] = map_to_rank(smem_addr(bar), r);
    }
  }
  __device__ __forceinline__ void operator()(int s) const {
    if constexpr (kSharers > 1) {
#pragma unroll
      for (int r = 0; r < kSharers; ++r) mbarrier_arrive_remote(empty_addr[r] + 8 * s);
    } else {
      mbarrier_arrive(&empty_bar[s]);
    }
  }
};

// The producer's last step when other CTAs arrive on its "empty" barriers (RingRelease with
// sharers): after filling ring positions 0 .. g - 1, it waits for the last round of releases of
// each stage, so that no arrival lands in a CTA that has exited.
template <int kStages>
__device__ __forceinline__ void wait_last_releases(uint64_t* empty_bar, uint32_t g) {
  for (uint32_t last = g > uint32_t{kStages} ? g - kStages : 0; last < g; ++last) {
    mbarrier_wait(&empty_bar[last % kStages], (last / kStages) & 1);
  }
}

// Adds `iters` K blocks into d: ring position g (stage g % kStages, phase g / kStages; g counts on
// across the CTA's tiles and is advanced here) holds x rows at a_tiles + stage * kATileBytes and W
// rows at b_tiles + stage * kBTileBytes; this consumer's operands start a_row and b_row rows
// (128-byte, swizzled) into them, and it owns kMB m64 blocks of a (a_row.. a_row + 64 kMB - 1)
// against the same kN rows of b: one consumer of three blocks reads the same shared-memory bytes
// as three consumers of one, with a third of the barrier waits and releases. Each block's wgmmas
// stay in flight while the next block's are issued, and a stage goes back to the producer
// (release(stage) by the leader; by default its arrival on empty_bar[stage]) once its wgmmas are
// done. The last block's wgmmas are left in flight and its stage held: the caller waits
// (wgmma_wait<0>) and then, when iters > 0, releases stage (g - 1) % kStages, with other work in
// between if it likes (the stream-K fix-up reads its counter there). (The swapped kernel,
// gemm_wgmma_swap.cu, passes W as a and x as b.) Stage 0's descriptors are made once and a stage's
// are these plus its offset (in 16-byte units; shared memory ends below 2^18 bytes, so the 14-bit
// address field never carries): the per-block generic-to-shared conversion showed in ncu's stall
// samples (ninth session), and hoisting it gained 0-3% on the swapped tiles (tenth session).
// `stamp(it, event)` (an instrument's; none by default) runs before the wait for block it's data
// (event 0), after it (1) and after the block's wgmma_wait<1> (2).
struct NoRingStamps {
  __device__ __forceinline__ void operator()(int, int) const {}
};
template <int kN, int kBK, int kStages, int kATileBytes, int kBTileBytes, int kMB, class Release,
          class Stamp = NoRingStamps>
__device__ __forceinline__ void wgmma_ring_k_blocks(float (&d)[kMB][kN / 2], const unsigned char* a_tiles,
                                                    const unsigned char* b_tiles, int a_row, int b_row,
                                                    uint64_t* full_bar, Release&& release, uint32_t& g, int iters,
                                                    bool leader, const Stamp& stamp = Stamp{}) {
  const uint64_t desc_a0 = wgmma_desc_sw128(a_tiles + a_row * 128);
  const uint64_t desc_b0 = wgmma_desc_sw128(b_tiles + b_row * 128);
  int s = static_cast<int>(g % kStages);
  uint32_t phase = (g / kStages) & 1;
  for (int it = 0; it < iters; ++it, ++g) {
    stamp(it, 0);
    mbarrier_wait(&full_bar[s], phase);
    stamp(it, 1);
    wgmma_k_block<kN, kBK, kMB>(d, desc_a0 + s * (kATileBytes >> 4), desc_b0 + s * (kBTileBytes >> 4));
    wgmma_wait<1>();
    stamp(it, 2);
    if (it > 0 && leader) release(s == 0 ? kStages - 1 : s - 1);
    if (++s == kStages) s = 0, phase ^= 1;
  }
}
// One accumulator (kMB = 1).
template <int kN, int kBK, int kStages, int kATileBytes, int kBTileBytes, class Release>
__device__ __forceinline__ void wgmma_ring_k_blocks(float (&d)[kN / 2], const unsigned char* a_tiles,
                                                    const unsigned char* b_tiles, int a_row, int b_row,
                                                    uint64_t* full_bar, Release&& release, uint32_t& g, int iters,
                                                    bool leader) {
  wgmma_ring_k_blocks<kN, kBK, kStages, kATileBytes, kBTileBytes, 1>(reinterpret_cast<float(&)[1][kN / 2]>(d),
                                                                     a_tiles, b_tiles, a_row, b_row, full_bar, release,
                                                                     g, iters, leader);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Columns of the TMA store boxes of store_tile_by_slabs for a consumer kN columns wide: 64 with
// 128-byte swizzle when kN is a multiple of 64, else 16 unswizzled (32-byte rows), so any width
// that is a multiple of 16 (the data-parallel tiles' 48, 96, 144, 224) is stored whole.
template <int kN>
inline constexpr int kOutBoxCols = kN % 64 == 0 ? 64 : 16;
// Shared memory store_tile_by_slabs needs per consumer: two 8 KB chunk buffers.
inline constexpr int kOutStagingBytes = 2 * 64 * 64 * 2;

// Stores one consumer's 64 x kN accumulators (m64nkNk16 fragment order, PTX 9.7.15.5.1.1: d[4j + r]
// at row warp*16 + lane/4 (+8 for r >= 2), column 8j + 2*(lane%4) (+1 for odd r)) as bf16 at rows
// row0.., columns col0.. of `map_y` (a [M, N] map with boxes of kOutBoxCols<kN> columns x 64 rows:
// TMA drops what lies past M or N): chunks of up to 64 columns converted into `slabs` (two 8 KB
// buffers, 1024-byte aligned), then stored by TMA, so that a chunk's conversion overlaps the
// previous one's store and the consumer goes on to its next tile while the last ones drain. A
// chunk is one 128-byte-swizzled [64 rows][64] box, where 16-byte piece c of row r sits at c ^ (r %
// 8) and the 8 rows a warp writes at once hit 32 different banks; or up to four [64 rows][16]
// boxes, 2-way bank conflicts. slabs_stored (the consumer's chunks so far: buffer slabs_stored % 2
// is next) counts on across tiles; `barrier` is a named barrier of the consumer's 128 threads
// alone. Before the CTA exits, the leader waits for its stores (bulk_wait_group<0>): shared memory
// must outlive them.
template <int kN>
__device__ __forceinline__ void store_tile_by_slabs(const float (&d)[kN / 2], unsigned char* slabs,
                                                    uint32_t& slabs_stored, const CUtensorMap* map_y, int col0,
                                                    int row0, int barrier, bool leader) {
  constexpr int kBox = kOutBoxCols<kN>;
  constexpr int kSlabBytes = kOutStagingBytes / 2;
  static_assert(kN % 16 == 0, "whole 16-column boxes");
  const int t = threadIdx.x % 128;
  const int warp = t / 32, lane = t % 32;
  // One loop over the 8-column groups j, unrolled whole, so that every index into d is a constant
  // (an inner loop bounded by the chunk's width left d in local memory). Chunk j / 8 starts at j % 8
  // == 0 and ends at its 8th group or the last.
  uint32_t slab_addr = 0;
  unsigned char* slab = nullptr;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
    const int jj = j % 8;  // group within the chunk
    if (jj == 0) {
      slab = slabs + (slabs_stored & 1) * kSlabBytes;
      slab_addr = smem_addr(slab);
      if (leader) bulk_wait_group_read<1>();  // this buffer's previous stores have read it
      named_barrier_sync(barrier, 128);
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp * 16 + half * 8 + (lane >> 2);
      const int offset = kBox == 64 ? row * 128 + ((jj ^ (row & 7)) << 4) + (lane & 3) * 4
                                    : (jj / 2) * (64 * 16 * 2) + row * 32 + (jj & 1) * 16 + (lane & 3) * 4;
      st_shared_b32(slab_addr + offset, pack_bf16x2(d[4 * j + 2 * half], d[4 * j + 2 * half + 1]));
    }
    if (jj == 7 || j == kN / 8 - 1) {
      fence_proxy_async_smem();  // the TMA stores below read what this thread wrote
      named_barrier_sync(barrier, 128);
      if (leader) {
        const int chunk_col = j / 8 * 64;
#pragma unroll
        for (int b = 0; b < (jj + 1) * 8 / kBox; ++b) {
          tma_store_2d(map_y, slab + b * kBox * 64 * 2, col0 + chunk_col + b * kBox, row0);
        }
        bulk_commit_group();
      }
      ++slabs_stored;
    }
  }
}

// The swapped kernel's form of store_tile_by_slabs (gemm_wgmma_swap.cu): one consumer's 64 x kN
// accumulators hold yᵀ, W rows as wgmma's m (y's columns col0 + 0..63) and x rows as its n (y's rows
// row0 + 0..kN - 1), in the fragment order above. Chunks of 64 x rows go transposed into `slabs`
// (kSlabs buffers of 8 KB, 1024-byte aligned) as 128-byte-swizzled [64 x rows][64] boxes, then out
// by TMA in boxes of 8 rows (`map_y`: [M, N], 64 x 8 boxes, 128-byte swizzle): the tile ends at a
// multiple of 8 rows, not of 64, and a 64-row box would overwrite the next tile's first rows; groups
// at or past row m are not stored. Lanes l and l ^ 4 hold W rows c and c + 1 (c even) for the same
// two x rows and swap one value each, so every thread writes 4-byte pairs along y's rows: the 8 x
// rows and 4 pairs a warp writes at once land in 32 different banks. slabs_stored, `barrier`,
// `leader` and the final bulk_wait_group<0> as for store_tile_by_slabs.
template <int kN, int kSlabs>
__device__ __forceinline__ void store_tile_transposed_by_slabs(const float (&d)[kN / 2], unsigned char* slabs,
                                                               uint32_t& slabs_stored, const CUtensorMap* map_y,
                                                               int col0, int row0, int m, int barrier, bool leader) {
  constexpr int kSlabBytes = 64 * 64 * 2;
  static_assert(kN % 8 == 0 && (kSlabs == 1 || kSlabs == 2), "whole 8-row groups; one or two buffers");
  const int t = threadIdx.x % 128;
  const int warp = t / 32, lane = t % 32;
  const bool odd = (lane >> 2) & 1;
  const int pair_col = warp * 16 + ((lane >> 2) & ~1);  // the W-row pair's first (+8 for the second half)
  const int group_row = 2 * (lane & 3) + (odd ? 1 : 0);  // the x row within an 8-row group
  uint32_t slab_addr = 0;
  unsigned char* slab = nullptr;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
    const int jj = j % 8;  // group within the chunk (as in store_tile_by_slabs: one loop, constant indices)
    if (jj == 0) {
      slab = slabs + (slabs_stored % kSlabs) * kSlabBytes;
      slab_addr = smem_addr(slab);
      if (leader) bulk_wait_group_read<kSlabs - 1>();  // this buffer's previous stores have read it
      named_barrier_sync(barrier, 128);
    }
    const int row = 8 * jj + group_row;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float v0 = d[4 * j + 2 * h], v1 = d[4 * j + 2 * h + 1];
      const float other = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
      const int col = pair_col + 8 * h;
      st_shared_b32(slab_addr + row * 128 + (((col >> 3) ^ (row & 7)) << 4) + (col & 7) * 2,
                    odd ? pack_bf16x2(other, v1) : pack_bf16x2(v0, other));
    }
    if (jj == 7 || j == kN / 8 - 1) {
      fence_proxy_async_smem();  // the TMA stores below read what this thread wrote
      named_barrier_sync(barrier, 128);
      if (leader) {
        const int first = j / 8 * 8;  // the chunk's first group
#pragma unroll
        for (int g = first; g <= j; ++g) {
          if (row0 + 8 * g < m) tma_store_2d(map_y, slab + (g - first) * 1024, col0, row0 + 8 * g);
        }
        bulk_commit_group();
      }
      ++slabs_stored;
    }
  }
}

}  // namespace xy::cuda::ptx
