// SmoothGEMM family: names, shape checks and dispatch to the compiled tiles (kernels/gemm_*.cu).
#include "xyserve/backend/cuda/gemm.h"

#include <bit>
#include <climits>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

constexpr GemmKernel kAllKernels[] = {
    GemmKernel::kGemvT8,       GemmKernel::kGemvT16,      GemmKernel::kGemvT32,
    GemmKernel::kStreamT16,    GemmKernel::kStreamT32,    GemmKernel::kStreamT64,
    GemmKernel::kStreamT16N64, GemmKernel::kStreamT32N64, GemmKernel::kStreamT64N64,
    GemmKernel::kStreamT16N32, GemmKernel::kWgmma128x256, GemmKernel::kWgmma128x128,
    GemmKernel::kWgmma128x256C2, GemmKernel::kWgmma128x128C2,
    GemmKernel::kWgmmaSk128x256, GemmKernel::kWgmmaSk128x128, GemmKernel::kWgmmaSk64x256,
    GemmKernel::kWgmmaSk128x128x2,
    GemmKernel::kWgmmaDp64x64,   GemmKernel::kWgmmaDp64x96,   GemmKernel::kWgmmaDp64x128,
    GemmKernel::kWgmmaDp64x192,  GemmKernel::kWgmmaDp128x96,  GemmKernel::kWgmmaDp128x128,
    GemmKernel::kWgmmaDp128x144, GemmKernel::kWgmmaDp128x192, GemmKernel::kWgmmaDp128x224,
    GemmKernel::kWgmmaSwap32x64N4, GemmKernel::kWgmmaSwap32x128N2, GemmKernel::kWgmmaSwap64x128N2,
    GemmKernel::kWgmmaSwap32x64M2, GemmKernel::kWgmmaSwap32x64K2,  GemmKernel::kWgmmaSwap64x64K2,
    GemmKernel::kWgmmaSwap200x192M2, GemmKernel::kWgmmaSwap200x128N2, GemmKernel::kWgmmaSwap112x256N2,
    GemmKernel::kWgmmaSwap160x192N2, GemmKernel::kWgmmaSwap136x128K2, GemmKernel::kWgmmaSwap136x192M2,
    GemmKernel::kWgmmaSwap128x192M2, GemmKernel::kWgmmaSwap104x64K2, GemmKernel::kWgmmaSwap136x64,
    GemmKernel::kWgmmaSwap72x192x3,  GemmKernel::kWgmmaSwap32x192,   GemmKernel::kWgmmaSwap32x224,
    GemmKernel::kWgmmaSwap136x256x2};

enum class Family { kGemv, kStream, kWgmma, kWgmmaSk, kWgmmaDp, kWgmmaSwap };

// The compiled tile of each kernel: tokens per tile (rows of x; 0 for the split-K wgmma kernels,
// whose tile is 128), rows of W per tile (1 for the gemv kernels: any n; for the data-parallel
// wgmma kernels not a divisor of n, which they pad virtually), columns of K per block,
// CTAs per SM (the stream-K wgmma kernels' persistent grid), CTAs per cluster (the split-K wgmma
// kernels, along M sharing W; the swapped kernels) and what they share (the swapped kernels).
struct Tile {
  Family family;
  int tokens, rows, cols;
  int ctas_per_sm = 1;
  int cluster = 1;
  gemm_detail::SwapCluster shares = gemm_detail::SwapCluster::kShareX;
  int m_blocks = 1;  // the swapped kernels: m64 blocks of W rows per consumer warpgroup
};
constexpr auto kShareX = gemm_detail::SwapCluster::kShareX;
constexpr auto kShareW = gemm_detail::SwapCluster::kShareW;
constexpr auto kSplitK = gemm_detail::SwapCluster::kSplitK;

Tile tile_of(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kGemvT8: return {Family::kGemv, 8, 1, 32};
    case GemmKernel::kGemvT16: return {Family::kGemv, 16, 1, 32};
    case GemmKernel::kGemvT32: return {Family::kGemv, 32, 1, 32};
    case GemmKernel::kStreamT16: return {Family::kStream, 16, 128, 64};
    case GemmKernel::kStreamT32: return {Family::kStream, 32, 128, 64};
    case GemmKernel::kStreamT64: return {Family::kStream, 64, 128, 64};
    case GemmKernel::kStreamT16N64: return {Family::kStream, 16, 64, 128};
    case GemmKernel::kStreamT32N64: return {Family::kStream, 32, 64, 128};
    case GemmKernel::kStreamT64N64: return {Family::kStream, 64, 64, 128};
    case GemmKernel::kStreamT16N32: return {Family::kStream, 16, 32, 256};
    case GemmKernel::kWgmma128x256: return {Family::kWgmma, 0, 256, 64};
    case GemmKernel::kWgmma128x128: return {Family::kWgmma, 0, 128, 64};
    case GemmKernel::kWgmma128x256C2: return {Family::kWgmma, 0, 256, 64, 1, 2};
    case GemmKernel::kWgmma128x128C2: return {Family::kWgmma, 0, 128, 64, 1, 2};
    case GemmKernel::kWgmmaSk128x256: return {Family::kWgmmaSk, 128, 256, 64};
    case GemmKernel::kWgmmaSk128x128: return {Family::kWgmmaSk, 128, 128, 64};
    case GemmKernel::kWgmmaSk64x256: return {Family::kWgmmaSk, 64, 256, 64};
    case GemmKernel::kWgmmaSk128x128x2: return {Family::kWgmmaSk, 128, 128, 64, 2};
    case GemmKernel::kWgmmaDp64x64: return {Family::kWgmmaDp, 64, 64, 64};
    case GemmKernel::kWgmmaDp64x96: return {Family::kWgmmaDp, 64, 96, 64};
    case GemmKernel::kWgmmaDp64x128: return {Family::kWgmmaDp, 64, 128, 64};
    case GemmKernel::kWgmmaDp64x192: return {Family::kWgmmaDp, 64, 192, 64};
    case GemmKernel::kWgmmaDp128x96: return {Family::kWgmmaDp, 128, 96, 64};
    case GemmKernel::kWgmmaDp128x128: return {Family::kWgmmaDp, 128, 128, 64};
    case GemmKernel::kWgmmaDp128x144: return {Family::kWgmmaDp, 128, 144, 64};
    case GemmKernel::kWgmmaDp128x192: return {Family::kWgmmaDp, 128, 192, 64};
    case GemmKernel::kWgmmaDp128x224: return {Family::kWgmmaDp, 128, 224, 64};
    case GemmKernel::kWgmmaSwap32x64N4: return {Family::kWgmmaSwap, 32, 64, 64, 1, 4, kShareX};
    case GemmKernel::kWgmmaSwap32x128N2: return {Family::kWgmmaSwap, 32, 128, 64, 1, 2, kShareX};
    case GemmKernel::kWgmmaSwap64x128N2: return {Family::kWgmmaSwap, 64, 128, 64, 1, 2, kShareX};
    case GemmKernel::kWgmmaSwap32x64M2: return {Family::kWgmmaSwap, 32, 64, 64, 1, 2, kShareW};
    case GemmKernel::kWgmmaSwap32x64K2: return {Family::kWgmmaSwap, 32, 64, 64, 1, 2, kSplitK};
    case GemmKernel::kWgmmaSwap64x64K2: return {Family::kWgmmaSwap, 64, 64, 64, 1, 2, kSplitK};
    case GemmKernel::kWgmmaSwap200x192M2: return {Family::kWgmmaSwap, 200, 192, 64, 1, 2, kShareW};
    case GemmKernel::kWgmmaSwap200x128N2: return {Family::kWgmmaSwap, 200, 128, 64, 1, 2, kShareX};
    case GemmKernel::kWgmmaSwap112x256N2: return {Family::kWgmmaSwap, 112, 256, 64, 1, 2, kShareX};
    case GemmKernel::kWgmmaSwap160x192N2: return {Family::kWgmmaSwap, 160, 192, 64, 1, 2, kShareX};
    case GemmKernel::kWgmmaSwap136x128K2: return {Family::kWgmmaSwap, 136, 128, 64, 1, 2, kSplitK};
    case GemmKernel::kWgmmaSwap136x192M2: return {Family::kWgmmaSwap, 136, 192, 64, 1, 2, kShareW};
    case GemmKernel::kWgmmaSwap128x192M2: return {Family::kWgmmaSwap, 128, 192, 64, 1, 2, kShareW};
    case GemmKernel::kWgmmaSwap104x64K2: return {Family::kWgmmaSwap, 104, 64, 64, 1, 2, kSplitK};
    case GemmKernel::kWgmmaSwap136x64: return {Family::kWgmmaSwap, 136, 64, 64, 1, 1, kShareX};
    case GemmKernel::kWgmmaSwap72x192x3: return {Family::kWgmmaSwap, 72, 192, 64, 1, 1, kShareW, 3};
    case GemmKernel::kWgmmaSwap32x192: return {Family::kWgmmaSwap, 32, 192, 64, 1, 1, kShareX};
    case GemmKernel::kWgmmaSwap32x224: return {Family::kWgmmaSwap, 32, 224, 64, 1, 1, kShareX};
    case GemmKernel::kWgmmaSwap136x256x2: return {Family::kWgmmaSwap, 136, 256, 64, 1, 1, kShareX, 2};
  }
  return {Family::kWgmma, 0, 0, 0};
}

}  // namespace

std::span<const GemmKernel> all_gemm_kernels() { return kAllKernels; }

const char* gemm_kernel_name(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kGemvT8: return "gemv_t8";
    case GemmKernel::kGemvT16: return "gemv_t16";
    case GemmKernel::kGemvT32: return "gemv_t32";
    case GemmKernel::kStreamT16: return "stream_t16";
    case GemmKernel::kStreamT32: return "stream_t32";
    case GemmKernel::kStreamT64: return "stream_t64";
    case GemmKernel::kStreamT16N64: return "stream_t16_n64";
    case GemmKernel::kStreamT32N64: return "stream_t32_n64";
    case GemmKernel::kStreamT64N64: return "stream_t64_n64";
    case GemmKernel::kStreamT16N32: return "stream_t16_n32";
    case GemmKernel::kWgmma128x256: return "wgmma_128x256";
    case GemmKernel::kWgmma128x128: return "wgmma_128x128";
    case GemmKernel::kWgmma128x256C2: return "wgmma_128x256_c2";
    case GemmKernel::kWgmma128x128C2: return "wgmma_128x128_c2";
    case GemmKernel::kWgmmaSk128x256: return "wgmma_sk_128x256";
    case GemmKernel::kWgmmaSk128x128: return "wgmma_sk_128x128";
    case GemmKernel::kWgmmaSk64x256: return "wgmma_sk_64x256";
    case GemmKernel::kWgmmaSk128x128x2: return "wgmma_sk_128x128_x2";
    case GemmKernel::kWgmmaDp64x64: return "wgmma_dp_64x64";
    case GemmKernel::kWgmmaDp64x96: return "wgmma_dp_64x96";
    case GemmKernel::kWgmmaDp64x128: return "wgmma_dp_64x128";
    case GemmKernel::kWgmmaDp64x192: return "wgmma_dp_64x192";
    case GemmKernel::kWgmmaDp128x96: return "wgmma_dp_128x96";
    case GemmKernel::kWgmmaDp128x128: return "wgmma_dp_128x128";
    case GemmKernel::kWgmmaDp128x144: return "wgmma_dp_128x144";
    case GemmKernel::kWgmmaDp128x192: return "wgmma_dp_128x192";
    case GemmKernel::kWgmmaDp128x224: return "wgmma_dp_128x224";
    case GemmKernel::kWgmmaSwap32x64N4: return "wgmma_swap_32x64_n4";
    case GemmKernel::kWgmmaSwap32x128N2: return "wgmma_swap_32x128_n2";
    case GemmKernel::kWgmmaSwap64x128N2: return "wgmma_swap_64x128_n2";
    case GemmKernel::kWgmmaSwap32x64M2: return "wgmma_swap_32x64_m2";
    case GemmKernel::kWgmmaSwap32x64K2: return "wgmma_swap_32x64_k2";
    case GemmKernel::kWgmmaSwap64x64K2: return "wgmma_swap_64x64_k2";
    case GemmKernel::kWgmmaSwap200x192M2: return "wgmma_swap_200x192_m2";
    case GemmKernel::kWgmmaSwap200x128N2: return "wgmma_swap_200x128_n2";
    case GemmKernel::kWgmmaSwap112x256N2: return "wgmma_swap_112x256_n2";
    case GemmKernel::kWgmmaSwap160x192N2: return "wgmma_swap_160x192_n2";
    case GemmKernel::kWgmmaSwap136x128K2: return "wgmma_swap_136x128_k2";
    case GemmKernel::kWgmmaSwap136x192M2: return "wgmma_swap_136x192_m2";
    case GemmKernel::kWgmmaSwap128x192M2: return "wgmma_swap_128x192_m2";
    case GemmKernel::kWgmmaSwap104x64K2: return "wgmma_swap_104x64_k2";
    case GemmKernel::kWgmmaSwap136x64: return "wgmma_swap_136x64";
    case GemmKernel::kWgmmaSwap72x192x3: return "wgmma_swap_72x192_x3";
    case GemmKernel::kWgmmaSwap32x192: return "wgmma_swap_32x192";
    case GemmKernel::kWgmmaSwap32x224: return "wgmma_swap_32x224";
    case GemmKernel::kWgmmaSwap136x256x2: return "wgmma_swap_136x256_x2";
  }
  return "unknown";
}

bool gemm_kernel_supports_pdl(GemmKernel kernel) { return tile_of(kernel).family != Family::kWgmma; }

const char* gemm_unsupported_reason(GemmKernel kernel, int m, int n, int k) {
  if (m < 1 || n < 1 || k < 1) return "m, n and k must be positive";
  const Tile tile = tile_of(kernel);
  // Static strings for every tile size of the family.
  static constexpr const char* kRowsReason[] = {"n must be a multiple of 16", "n must be a multiple of 32",
                                                "n must be a multiple of 64", "n must be a multiple of 128",
                                                "n must be a multiple of 256"};
  static constexpr const char* kColsReason[] = {"k must be a multiple of 32", "k must be a multiple of 64",
                                                "k must be a multiple of 128", "k must be a multiple of 256",
                                                "k must be a multiple of 512"};
  if (tile.family == Family::kWgmmaDp || tile.family == Family::kWgmmaSwap) {
    // Tiles past N are zero-filled on load and skipped on store (virtual padding of N); the
    // fragments store column pairs within 8-column groups, which 16 keeps whole (and N = 200,
    // gemm_check's bad shape for every tiled kernel, refused).
    if (n % 16 != 0) return "n must be a multiple of 16";
    // Tiles are numbered with 32-bit integers.
    if ((int64_t{m} + tile.tokens - 1) / tile.tokens * ((int64_t{n} + tile.rows - 1) / tile.rows) > INT32_MAX)
      return "m and n give more than 2^31 - 1 output tiles";
  } else if (tile.rows > 1 && n % tile.rows != 0) {
    return kRowsReason[std::countr_zero(unsigned(tile.rows)) - 4];
  }
  if (k % tile.cols != 0) return kColsReason[std::countr_zero(unsigned(tile.cols)) - 5];
  // The gemv kernels run a token tile per gridDim.y (at most 65535).
  if (tile.family == Family::kGemv && (int64_t{m} + tile.tokens - 1) / tile.tokens > 65535)
    return "m must be at most 65535 token tiles";
  // The stream-K wgmma kernels number their (tile, K block) iterations with 32-bit integers.
  if (tile.family == Family::kWgmmaSk &&
      (int64_t{m} + tile.tokens - 1) / tile.tokens * (n / tile.rows) * (k / tile.cols) > INT32_MAX)
    return "m, n and k give more than 2^31 - 1 (tile, K block) iterations";
  return "";
}

size_t gemm_workspace_bytes(GemmKernel kernel, int m, int n, int k) {
  const Tile tile = tile_of(kernel);
  switch (tile.family) {
    case Family::kGemv: return 0;
    case Family::kStream: return gemm_detail::stream_workspace_bytes(tile.tokens, tile.rows, m, n, k);
    case Family::kWgmma: return gemm_detail::wgmma_workspace_bytes(tile.rows, tile.cluster, m, n, k);
    case Family::kWgmmaSk:
      return gemm_detail::wgmma_sk_workspace_bytes(tile.tokens, tile.rows, tile.ctas_per_sm, m, n, k);
    case Family::kWgmmaDp: return 0;
    case Family::kWgmmaSwap: return 0;
  }
  return 0;
}

void gemm_launch(GemmKernel kernel, const GemmArgs& a, cudaStream_t stream) {
  const char* reason = gemm_unsupported_reason(kernel, a.m, a.n, a.k);
  if (*reason != '\0') {
    throw InvalidArgument(cat("gemm ", gemm_kernel_name(kernel), ": shape m=", a.m, " n=", a.n,
                              " k=", a.k, " not supported: ", reason));
  }
  // 16-byte vector and TMA accesses need 16-byte aligned rows.
  for (const void* p : {static_cast<const void*>(a.x), static_cast<const void*>(a.w),
                        static_cast<const void*>(a.y)}) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
      throw InvalidArgument(cat("gemm ", gemm_kernel_name(kernel),
                                ": x, w and y must be 16-byte aligned, found ", p));
    }
  }
  const size_t need = gemm_workspace_bytes(kernel, a.m, a.n, a.k);
  if (need > 0 && (a.workspace == nullptr || a.workspace_bytes < need)) {
    throw InvalidArgument(cat("gemm ", gemm_kernel_name(kernel), ": workspace of ", need,
                              " bytes needed for m=", a.m, " n=", a.n, ", found ",
                              a.workspace_bytes));
  }
  const Tile tile = tile_of(kernel);
  switch (tile.family) {
    case Family::kGemv:
      XY_CUDA_CHECK(gemm_detail::launch_gemv(tile.tokens, a.x, a.w, a.y, a.m, a.n, a.k, a.pdl, stream));
      break;
    case Family::kStream:
      XY_CUDA_CHECK(gemm_detail::launch_stream(tile.tokens, tile.rows, a.x, a.w, a.y, a.m, a.n, a.k,
                                               a.workspace, a.pdl, stream));
      break;
    case Family::kWgmma:  // not PDL-aware: a plain launch whatever a.pdl says
      XY_CUDA_CHECK(gemm_detail::launch_wgmma(tile.rows, tile.cluster, a.x, a.w, a.y, a.m, a.n, a.k, a.workspace,
                                              stream));
      break;
    case Family::kWgmmaSk:
      XY_CUDA_CHECK(gemm_detail::launch_wgmma_sk(tile.tokens, tile.rows, tile.ctas_per_sm, a.x, a.w, a.y, a.m,
                                                 a.n, a.k, a.workspace, a.pdl, stream));
      break;
    case Family::kWgmmaDp:
      XY_CUDA_CHECK(gemm_detail::launch_wgmma_dp(tile.tokens, tile.rows, a.x, a.w, a.y, a.m, a.n, a.k, a.pdl, stream));
      break;
    case Family::kWgmmaSwap:
      XY_CUDA_CHECK(gemm_detail::launch_wgmma_swap(tile.tokens, tile.rows, tile.cluster, tile.shares, tile.m_blocks,
                                                   a.x, a.w, a.y, a.m, a.n, a.k, a.pdl, stream));
      break;
  }
}

}  // namespace xy::cuda
