// y = x · wᵀ (+ bias): the CPU backend's one GEMM, written so that every output row is bitwise
// independent of M and of the other rows (the batch invariance that DESIGN.md requires of the
// CPU backend: batched = alone, chunked prefill = unchunked).
//
// Why not OpenBLAS: Debian 12's OpenBLAS 0.3.21 fails GemmRowsAreBatchInvariant (the M=1 row
// differs from the same row computed inside M >= 2, and the result also moves with M for some
// shapes), because its kernel choice and its thread split depend on M. Here every output element
// y[m][n] is the same instruction sequence whatever M is: a dot product over K accumulated in
// 8 lanes in ascending K order (one FMA per 8 elements, a masked tail), then the lanes summed in
// a fixed tree, then the bias added. Rows and columns are only ever *grouped* into register
// tiles and thread blocks, never split along K, so grouping cannot change a value.
#pragma once

#include <cstdint>

namespace xy::backend::cpu {

class ThreadPool;

// y[m, n] = sum_k x[m, k] * w[n, k] + (bias ? bias[n] : 0)
//   x: [M, K] row-major, row stride K;  w: [N, K] row-major (a Hugging Face Linear weight);
//   bias: [N] or null;  y: [M, N] row-major.
// Columns are spread over `pool` (may be null: serial). x and y must not overlap.
void linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
            float* y, ThreadPool* pool);

// Which kernel linear() uses on this CPU: "avx2+fma" or "generic".
const char* linear_kernel_name();

// linear() forced onto the portable kernel (what a CPU without AVX2+FMA runs), so that tests
// cover it everywhere. Its values differ from the AVX2 kernel's in rounding (no FMA) but have
// the same batch invariance.
void linear_generic(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                    const float* bias, float* y, ThreadPool* pool);

}  // namespace xy::backend::cpu
