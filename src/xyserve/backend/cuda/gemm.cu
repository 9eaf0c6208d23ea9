// SmoothGEMM family: names, shape checks and dispatch to the compiled tiles (kernels/gemm_*.cu).
#include "xyserve/backend/cuda/gemm.h"

#include <bit>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

constexpr GemmKernel kAllKernels[] = {
    GemmKernel::kStreamT16,    GemmKernel::kStreamT32,    GemmKernel::kStreamT64,
    GemmKernel::kStreamT16N64, GemmKernel::kStreamT32N64, GemmKernel::kStreamT64N64,
    GemmKernel::kStreamT16N32, GemmKernel::kWgmma128x256, GemmKernel::kWgmma128x128};

// The compiled tile of each kernel: tokens per tile (0 for the wgmma kernels), rows of W per
// tile, columns of K per block.
struct Tile {
  int tokens, rows, cols;
};

Tile tile_of(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kStreamT16: return {16, 128, 64};
    case GemmKernel::kStreamT32: return {32, 128, 64};
    case GemmKernel::kStreamT64: return {64, 128, 64};
    case GemmKernel::kStreamT16N64: return {16, 64, 128};
    case GemmKernel::kStreamT32N64: return {32, 64, 128};
    case GemmKernel::kStreamT64N64: return {64, 64, 128};
    case GemmKernel::kStreamT16N32: return {16, 32, 256};
    case GemmKernel::kWgmma128x256: return {0, 256, 64};
    case GemmKernel::kWgmma128x128: return {0, 128, 64};
  }
  return {0, 0, 0};
}

}  // namespace

std::span<const GemmKernel> all_gemm_kernels() { return kAllKernels; }

const char* gemm_kernel_name(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kStreamT16: return "stream_t16";
    case GemmKernel::kStreamT32: return "stream_t32";
    case GemmKernel::kStreamT64: return "stream_t64";
    case GemmKernel::kStreamT16N64: return "stream_t16_n64";
    case GemmKernel::kStreamT32N64: return "stream_t32_n64";
    case GemmKernel::kStreamT64N64: return "stream_t64_n64";
    case GemmKernel::kStreamT16N32: return "stream_t16_n32";
    case GemmKernel::kWgmma128x256: return "wgmma_128x256";
    case GemmKernel::kWgmma128x128: return "wgmma_128x128";
  }
  return "unknown";
}

const char* gemm_unsupported_reason(GemmKernel kernel, int m, int n, int k) {
  if (m < 1 || n < 1 || k < 1) return "m, n and k must be positive";
  const Tile tile = tile_of(kernel);
  // Static strings for every tile size of the family.
  static constexpr const char* kRowsReason[] = {"n must be a multiple of 16", "n must be a multiple of 32",
                                                "n must be a multiple of 64", "n must be a multiple of 128",
                                                "n must be a multiple of 256"};
  static constexpr const char* kColsReason[] = {"k must be a multiple of 64", "k must be a multiple of 128",
                                                "k must be a multiple of 256", "k must be a multiple of 512"};
  if (n % tile.rows != 0) return kRowsReason[std::countr_zero(unsigned(tile.rows)) - 4];
  if (k % tile.cols != 0) return kColsReason[std::countr_zero(unsigned(tile.cols)) - 6];
  return "";
}

size_t gemm_workspace_bytes(GemmKernel kernel, int m, int n, int k) {
  const Tile tile = tile_of(kernel);
  return tile.tokens == 0 ? gemm_detail::wgmma_workspace_bytes(tile.rows, m, n, k)
                          : gemm_detail::stream_workspace_bytes(tile.tokens, tile.rows, m, n, k);
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
  if (tile.tokens != 0) {
    XY_CUDA_CHECK(gemm_detail::launch_stream(tile.tokens, tile.rows, a.x, a.w, a.y, a.m, a.n,
                                             a.k, a.workspace, stream));
  } else {
    XY_CUDA_CHECK(gemm_detail::launch_wgmma(tile.rows, a.x, a.w, a.y, a.m, a.n, a.k, a.workspace,
                                            stream));
  }
}

}  // namespace xy::cuda
