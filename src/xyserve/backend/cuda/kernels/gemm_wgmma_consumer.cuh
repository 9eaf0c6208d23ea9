// The ring of shared-memory stages shared by the TMA + wgmma GEMM kernels (gemm_wgmma.cu,
// gemm_wgmma_sk.cu, gemm_wgmma_dp.cu, gemm_wgmma_swap.cu): a producer fills stages by TMA,
// completing on "full" mbarriers, and consumers release them on "empty" ones. Here: the barriers'
// initialisation and the consumer warpgroup's main loop.
#pragma once

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

// Adds `iters` K blocks into d: ring position g (stage g % kStages, phase g / kStages; g counts on
// across the CTA's tiles and is advanced here) holds x rows at a_tiles + stage * kATileBytes and W
// rows at b_tiles + stage * kBTileBytes; this consumer's operands start a_row and b_row rows
// (128-byte, swizzled) into them. Each block's wgmmas stay in flight while the next block's are
// issued, and a stage goes back to the producer (release(stage) by the leader; by default its
// arrival on empty_bar[stage]) once its wgmmas are done. The last block's wgmmas are left in flight
// and its stage held: the caller waits (wgmma_wait<0>) and then, when iters > 0, releases stage
// (g - 1) % kStages, with other work in between if it likes (the stream-K fix-up reads its counter
// there). (The swapped kernel, gemm_wgmma_swap.cu, passes W as a and x as b.)
template <int kN, int kBK, int kStages, int kATileBytes, int kBTileBytes, class Release>
__device__ __forceinline__ void wgmma_ring_k_blocks(float (&d)[kN / 2], const unsigned char* a_tiles,
                                                    const unsigned char* b_tiles, int a_row, int b_row,
                                                    uint64_t* full_bar, Release&& release, uint32_t& g, int iters,
                                                    bool leader) {
  for (int it = 0; it < iters; ++it, ++g) {
    const int s = g % kStages;
    mbarrier_wait(&full_bar[s], (g / kStages) & 1);
    const uint64_t desc_a = wgmma_desc_sw128(a_tiles + s * kATileBytes + a_row * 128);
    const uint64_t desc_b = wgmma_desc_sw128(b_tiles + s * kBTileBytes + b_row * 128);
    wgmma_k_block<kN, kBK>(d, desc_a, desc_b);
    wgmma_wait<1>();
    if (it > 0 && leader) release(int((g - 1) % kStages));
  }
}
template <int kN, int kBK, int kStages, int kATileBytes, int kBTileBytes>
__device__ __forceinline__ void wgmma_ring_k_blocks(float (&d)[kN / 2], const unsigned char* a_tiles,
                                                    const unsigned char* b_tiles, int a_row, int b_row,
                                                    uint64_t* full_bar, uint64_t* empty_bar, uint32_t& g, int iters,
                                                    bool leader) {
  wgmma_ring_k_blocks<kN, kBK, kStages, kATileBytes, kBTileBytes>(
      d, a_tiles, b_tiles, a_row, b_row, full_bar, [empty_bar](int s) { mbarrier_arrive(&empty_bar[s]); }, g, iters,
      leader);
}

}  // namespace xy::cuda::ptx
