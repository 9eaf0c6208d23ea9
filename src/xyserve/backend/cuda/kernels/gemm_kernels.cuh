// Launchers of the GEMM kernel family, one per compiled tile; gemm.cu dispatches to them after
// checking shapes. Each returns the CUDA launch error (never throws).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace xy::cuda::gemm_detail {

// Stream-K weight-streaming kernel with `tok` rows of x per tile and W blocks of `bn` rows x
// 8192 / bn columns: (tok, bn) in {16, 32, 64} x {128, 64} and (16, 32).
// Preconditions: n % bn == 0, k % (8192 / bn) == 0, pointers 16-byte aligned, workspace of
// stream_workspace_bytes() bytes, zero-filled.
size_t stream_workspace_bytes(int tok, int bn, int m, int n, int k);
cudaError_t launch_stream(int tok, int bn, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          __nv_bfloat16* y, int m, int n, int k, void* workspace,
                          cudaStream_t stream);

// TMA + wgmma kernel, 128 x `bn` output tile (bn = 128 or 256), split along K into
// wgmma_splits() parts when there are too few tiles to fill the GPU. Preconditions:
// n % bn == 0, k % 64 == 0, pointers 16-byte aligned, workspace of wgmma_workspace_bytes()
// bytes (none when unsplit), zero-filled.
int wgmma_splits(int bn, int m, int n, int k);
size_t wgmma_workspace_bytes(int bn, int m, int n, int k);
cudaError_t launch_wgmma(int bn, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                         int m, int n, int k, void* workspace, cudaStream_t stream);

}  // namespace xy::cuda::gemm_detail
