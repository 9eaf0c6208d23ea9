// The building blocks of the Hopper attention kernel (meta_attention_wgmma.cu) one at a time, so
// that a layout bug shows here before it hides inside a softmax: one warpgroup places Q, K and V
// in shared memory by sw128_offset (the kernel's layout), runs S = Q K^T with both operands by
// descriptor (K-major), packs S to bf16 as P in registers and runs O = P V with V read MN-major
// (transposed B) — the same wrappers and descriptors as the kernel — against double-precision
// host products. Q holds 128 rows and the wgmma reads the 64 starting at row 0 or 64, as the two
// consumers do. And the kernel's K/V load: one 128-key block of a paged cache fetched by TMA
// boxes through encode_kv_tensor_map, page by page, must land exactly where sw128_offset says,
// for every block size from 8 (16 boxes a block) to 256 (a box inside a page).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/device_test_util.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/kernels/meta_attention_wgmma_ptx.cuh"
#include "xyserve/backend/cuda/tensor_maps.h"
#include "xyserve/common/dtype.h"

namespace xy::cuda {
namespace {

using testing::random_bf16;
using testing::to_device;
using testing::to_host;

constexpr int kRows = 128, kKeys = 128;

// q: [128][D], k and v: [128][D] bf16; s: [64][128] fp32 (rows row_base..+63); o: [64][D] fp32.
template <int D>
__global__ void __launch_bounds__(128) wgmma_blocks_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                           const __nv_bfloat16* v, int row_base, float* s_out,
                                                           float* o_out) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* q_s = smem;
  uint8_t* k_s = q_s + kRows * D * 2;
  uint8_t* v_s = k_s + kKeys * D * 2;
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < kRows * kChunks; c += 128) {
    const int r = c / kChunks, ch = c % kChunks;
    *reinterpret_cast<uint4*>(q_s + wgmma::sw128_offset(r, ch, kRows)) = reinterpret_cast<const uint4*>(q)[c];
    *reinterpret_cast<uint4*>(k_s + wgmma::sw128_offset(r, ch, kKeys)) = reinterpret_cast<const uint4*>(k)[c];
    *reinterpret_cast<uint4*>(v_s + wgmma::sw128_offset(r, ch, kKeys)) = reinterpret_cast<const uint4*>(v)[c];
  }
  wgmma::fence_proxy_async_shared();  // plain stores, read by wgmma through the async proxy
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
  float s[64];
  for (int i = 0; i < 64; ++i) s[i] = 0.0f;
  const uint32_t q_addr = ptx::smem_addr(q_s) + row_base * 128, k_addr = ptx::smem_addr(k_s);
  ptx::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t col = (ks % 4) * 32;
    ptx::wgmma_m64n128k16_bf16(s, wgmma::desc_sw128(q_addr + (ks / 4) * kRows * 128 + col, 16),
                               wgmma::desc_sw128(k_addr + (ks / 4) * kKeys * 128 + col, 16), ks > 0 ? 1 : 0);
  }
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(s[i]);
  // Accumulator order: s[4j + e] is row warp*16 + gq (+8 for e >= 2), column 8j + 2tq (+1 for odd e).
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s_out[(warp * 16 + gq + 8 * (e / 2)) * kKeys + 8 * j + 2 * tq + (e & 1)] = s[4 * j + e];

  uint32_t p[8][4];
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    p[kk][0] = wgmma::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    p[kk][1] = wgmma::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = wgmma::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = wgmma::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
  float o[D / 2];
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  const uint32_t v_addr = ptx::smem_addr(v_s);
  ptx::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t dv = wgmma::desc_sw128(v_addr + kk * 2048, kKeys * 128);
    if constexpr (D == 128) {
      wgmma::wgmma_m64n128k16_rs_tn(o, p[kk], dv, 1);
    } else {
      wgmma::wgmma_m64n64k16_rs_tn(o, p[kk], dv, 1);
    }
  }
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < D / 2; ++i) wgmma::fence_operand(o[i]);
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_out[(warp * 16 + gq + 8 * (e / 2)) * D + 8 * j + 2 * tq + (e & 1)] = o[4 * j + e];
}

// One 128-key block of a paged K cache by TMA, as the kernel's producer loads it: the block holds
// slots [base, base + 128) of a request; box i (box_rows = min(block_size, 128) slots) comes from
// the page the block table names, into rows i * box_rows of each 64-column panel. The tile's raw
// bytes are copied out for the host to check.
template <int D>
__global__ void tma_block_kernel(const __grid_constant__ CUtensorMap map, const int32_t* table, int32_t block_size,
                                 int32_t base, int32_t kv_head, uint4* out) {
  extern __shared__ uint8_t smem_raw[];
  __shared__ uint64_t full;
  uint8_t* tile = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const int box_rows = min(block_size, kKeys), num_boxes = kKeys / box_rows;
  if (threadIdx.x == 0) {
    ptx::mbarrier_init(&full, 1);
    ptx::fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    if (threadIdx.x == 0) ptx::mbarrier_arrive_expect_tx(&full, kKeys * D * 2);
    if (int(threadIdx.x) < num_boxes) {
      const int32_t slot = base + int32_t(threadIdx.x) * box_rows;
      const int32_t row = table[slot / block_size] * block_size + slot % block_size;
      for (int p = 0; p < D / 64; ++p)
        wgmma::tma_load_3d(ptx::smem_addr(tile) + p * kKeys * 128 + threadIdx.x * box_rows * 128, &map,
                           ptx::smem_addr(&full), p * 64, kv_head, row);
    }
  }
  ptx::mbarrier_wait(&full, 0);
  for (int i = threadIdx.x; i < kKeys * D / 8; i += blockDim.x) out[i] = reinterpret_cast<const uint4*>(tile)[i];
}

class AttentionWgmmaBlocks : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(device_count(), 0) << "no CUDA device"; }

  template <int D>
  void check(int row_base) {
    std::mt19937 rng(D + row_base);
    const auto q = random_bf16(size_t(kRows) * D, rng), k = random_bf16(size_t(kKeys) * D, rng),
               v = random_bf16(size_t(kKeys) * D, rng);
    auto d_q = to_device(q), d_k = to_device(k), d_v = to_device(v);
    DeviceBuffer<float> d_s(size_t(64) * kKeys), d_o(size_t(64) * D);
    testing::poison(d_s);
    testing::poison(d_o);
    const size_t smem = 1024 + size_t(kRows + 2 * kKeys) * D * 2;
    XY_CUDA_CHECK(cudaFuncSetAttribute(wgmma_blocks_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    wgmma_blocks_kernel<D><<<1, 128, smem>>>(reinterpret_cast<const __nv_bfloat16*>(d_q.get()),
                                             reinterpret_cast<const __nv_bfloat16*>(d_k.get()),
                                             reinterpret_cast<const __nv_bfloat16*>(d_v.get()), row_base, d_s.get(),
                                             d_o.get());
    XY_CUDA_CHECK_LAUNCH();
    const std::vector<float> s = to_host(d_s, d_s.size()), o = to_host(d_o, d_o.size());
    // Bounds: products of bf16 values are exact in fp32, and D (or 128) of them summed in fp32
    // stray from the exact sum by far less than 1e-5 of the sum of their magnitudes; a misplaced
    // element costs a whole product.
    for (int r = 0; r < 64; ++r)
      for (int n = 0; n < kKeys; ++n) {
        double want = 0, mag = 0;
        for (int d = 0; d < D; ++d) {
          const double term =
              double(bf16_to_f32(q[size_t(row_base + r) * D + d])) * double(bf16_to_f32(k[size_t(n) * D + d]));
          want += term;
          mag += std::fabs(term);
        }
        const float got = s[size_t(r) * kKeys + n];
        ASSERT_TRUE(std::isfinite(got) && std::fabs(got - want) <= 1e-5 * (1 + mag))
            << "D " << D << " row_base " << row_base << " S[" << r << "][" << n << "] = " << got << ", want " << want;
      }
    // O = bf16(S) V, from the S the device computed (both round to nearest even, so P agrees).
    for (int r = 0; r < 64; ++r)
      for (int d = 0; d < D; ++d) {
        double want = 0, mag = 0;
        for (int n = 0; n < kKeys; ++n) {
          const double term = double(bf16_to_f32(f32_to_bf16(s[size_t(r) * kKeys + n]))) *
                              double(bf16_to_f32(v[size_t(n) * D + d]));
          want += term;
          mag += std::fabs(term);
        }
        const float got = o[size_t(r) * D + d];
        ASSERT_TRUE(std::isfinite(got) && std::fabs(got - want) <= 1e-5 * (1 + mag))
            << "D " << D << " row_base " << row_base << " O[" << r << "][" << d << "] = " << got << ", want " << want;
      }
  }
};

template <int D>
void check_tma_block(int32_t block_size, int32_t base) {
  constexpr int32_t kHeads = 3, kHead = 2;  // a head other than 0: the head stride counts
  std::mt19937 rng(uint32_t(D * 1000 + block_size + base));
  const int32_t num_pages = (base + kKeys) / block_size + 8;
  const auto cache = random_bf16(size_t(num_pages) * size_t(block_size) * kHeads * D, rng);
  std::vector<int32_t> table(static_cast<size_t>(num_pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  auto d_cache = to_device(cache);
  auto d_table = to_device(table);
  DeviceBuffer<uint4> d_out(size_t(kKeys) * D / 8);
  testing::poison(d_out);
  CUtensorMap map;
  ASSERT_TRUE(encode_kv_tensor_map(&map, d_cache.get(), kHeads, D, std::min(block_size, kKeys)));
  const size_t smem = 1024 + size_t(kKeys) * D * 2;
  XY_CUDA_CHECK(cudaFuncSetAttribute(tma_block_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  tma_block_kernel<D><<<1, 128, smem>>>(map, d_table.get(), block_size, base, kHead, d_out.get());
  XY_CUDA_CHECK_LAUNCH();
  const std::vector<uint4> tile = to_host(d_out, d_out.size());
  const auto* bytes = reinterpret_cast<const uint8_t*>(tile.data());
  for (int32_t kk = 0; kk < kKeys; ++kk) {
    const int32_t slot = base + kk;
    const size_t row = size_t(table[size_t(slot / block_size)]) * size_t(block_size) + size_t(slot % block_size);
    for (int ch = 0; ch < D / 8; ++ch) {
      const uint16_t* want = cache.data() + (row * kHeads + kHead) * D + size_t(ch) * 8;
      ASSERT_EQ(std::memcmp(bytes + wgmma::sw128_offset(kk, ch, kKeys), want, 16), 0)
          << "D " << D << " block_size " << block_size << " base " << base << ": key " << kk << " chunk " << ch;
    }
  }
}

TEST_F(AttentionWgmmaBlocks, TmaBoxesOfPagedKvLandInTheSwizzledLayoutAtEveryBlockSize) {
  for (int32_t block_size : {8, 16, 32, 64, 128, 256}) {
    for (int32_t base : {0, 128, 384}) {  // at 256, slot 128 and 384 start mid-page
      check_tma_block<128>(block_size, base);
      check_tma_block<64>(block_size, base);
    }
  }
}

TEST_F(AttentionWgmmaBlocks, ScoresAndWeightedValuesMatchTheHostAtHeadDim128) {
  check<128>(0);
  check<128>(64);
}

TEST_F(AttentionWgmmaBlocks, ScoresAndWeightedValuesMatchTheHostAtHeadDim64) {
  check<64>(0);
  check<64>(64);
}

}  // namespace
}  // namespace xy::cuda
