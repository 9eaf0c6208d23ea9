// The two ends of the model that tensor parallelism splits by vocabulary (parallel/shard.h): a
// rank holds the embedding and LM head rows [vocab_begin, vocab_begin + V'), V' = ceil(V / N),
// the rows past V zero. Its embedding gives a token row only when the token is one of its rows
// (zeros otherwise), so an all-reduce of the ranks' outputs is the whole embedding, exactly
// (one rank's values plus zeros). Its LM head gives the logits slice [rows, V'], and an
// all-gather of the slices stacks them [N, rows, V']; assemble_gathered_logits lays them side by
// side into [rows, V]. Used by CudaBackend when it runs a rank (cuda_backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "xyserve/backend/cuda/kernels/kernels.h"

namespace xy::cuda {

// out[i, :] = float(table[ids[i] - begin, :]) when ids[i] is in [begin, begin + rows), else 0.
//   table: [rows, hidden] bf16 (the rank's vocabulary rows);  ids: [m];  out: [m, hidden] fp32.
void launch_vocab_parallel_embedding(const bf16* table, int64_t begin, int64_t rows, int64_t hidden,
                                     const int32_t* ids, int32_t m, float* out, cudaStream_t stream);

// logits[i, r * per_rank + j] = gathered[r, i, j] for j < min(per_rank, vocab - r * per_rank):
// rank r's slice of every row, the padding past the vocabulary dropped. Copies only (one 2-D
// copy per rank that holds a row below `vocab`), so it can be captured in a CUDA graph.
//   gathered: [size, rows, per_rank] fp32;  logits: [rows, vocab] fp32.
void assemble_gathered_logits(const float* gathered, int32_t size, int32_t rows, int64_t per_rank,
                              int64_t vocab, float* logits, cudaStream_t stream);

}  // namespace xy::cuda
