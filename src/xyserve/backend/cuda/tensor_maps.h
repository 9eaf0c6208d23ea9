// TMA tensor maps (host side) for the Hopper kernels: the driver's cuTensorMapEncodeTiled,
// reached through the runtime so that nothing links libcuda, for bf16 tensors read in boxes of
// 64 elements (128 bytes) with 128-byte swizzle, the layout wgmma reads.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>

namespace xy::cuda {

// A bf16 tensor of `rank` dimensions (dims[0] innermost, contiguous; strides in bytes of the
// other rank - 1), boxes of `box` elements with 128-byte swizzle (or `swizzle`), L2 promotion
// 256 B, reads past the dims returning zeros. False where the driver has no encoder or refuses the
// shape.
bool encode_bf16_tensor_map(CUtensorMap* map, const void* base, uint32_t rank, const cuuint64_t* dims,
                            const cuuint64_t* strides, const cuuint32_t* box,
                            CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B);

// One layer's paged K (or V) cache [slots][num_kv_heads][head_dim] as a 3-D tensor (head_dim
// innermost), read in boxes of [64 elements][1 head][box_rows slots]: a box lands as box_rows
// consecutive rows of one 64-column block of a 128B-swizzled tile, so a key block is assembled
// page by page at row offsets that are multiples of box_rows (>= 8, so the swizzle phase, row % 8,
// is the tile's). The number of slots is not known here (AttentionArgs does not carry it); the
// slot extent is 2^31 - 1, the range of the int32 coordinate, and the kernel only asks for boxes
// inside pages of its block tables.
bool encode_kv_tensor_map(CUtensorMap* map, const void* cache, int num_kv_heads, int head_dim, int box_rows);

// The query rows [num_rows][num_kv_heads][group][head_dim] (row stride row_stride elements) as a
// 4-D tensor (head_dim innermost), read in boxes of [64 elements][group heads][1 KV head][box_tokens
// rows]: a box lands as the box_tokens * group rows of a GQA-packed query tile (row token * group +
// head) in one 64-column block of a 128B-swizzled tile. Rows past num_rows read as zeros.
bool encode_q_tensor_map(CUtensorMap* map, const void* q, int64_t num_rows, int64_t row_stride, int num_kv_heads,
                         int group, int head_dim, int box_tokens);

// encode_kv_tensor_map, made once per (cache, shape) and kept: the backend passes one cache
// pointer per layer, so after the first step no launch calls the driver (CUDA graphs capture the
// maps with the launch's parameters). Throws CudaError where no map can be made. Thread-safe.
CUtensorMap kv_tensor_map(const void* cache, int32_t num_kv_heads, int32_t head_dim, int32_t box_rows);

}  // namespace xy::cuda
