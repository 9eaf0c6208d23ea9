#include "xyserve/backend/cuda/tensor_maps.h"

#include <cuda_runtime.h>

#include <functional>
#include <mutex>
#include <unordered_map>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

}  // namespace

bool encode_bf16_tensor_map(CUtensorMap* map, const void* base, uint32_t rank, const cuuint64_t* dims,
                            const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<void*>(base), dims, strides, box,
                elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool encode_kv_tensor_map(CUtensorMap* map, const void* cache, int num_kv_heads, int head_dim, int box_rows) {
  const cuuint64_t dims[3] = {cuuint64_t(head_dim), cuuint64_t(num_kv_heads), cuuint64_t{0x7fffffff}};
  const cuuint64_t strides[2] = {cuuint64_t(head_dim) * 2, cuuint64_t(num_kv_heads) * cuuint64_t(head_dim) * 2};
  const cuuint32_t box[3] = {64, 1, cuuint32_t(box_rows)};
  return encode_bf16_tensor_map(map, cache, 3, dims, strides, box);
}

bool encode_q_tensor_map(CUtensorMap* map, const void* q, int64_t num_rows, int64_t row_stride, int num_kv_heads,
                         int group, int head_dim, int box_tokens) {
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(group), cuuint64_t(num_kv_heads), cuuint64_t(num_rows)};
  const cuuint64_t strides[3] = {cuuint64_t(head_dim) * 2, cuuint64_t(group) * cuuint64_t(head_dim) * 2,
                                 cuuint64_t(row_stride) * 2};
  const cuuint32_t box[4] = {64, cuuint32_t(group), 1, cuuint32_t(box_tokens)};
  return encode_bf16_tensor_map(map, q, 4, dims, strides, box);
}

CUtensorMap kv_tensor_map(const void* cache, int32_t num_kv_heads, int32_t head_dim, int32_t box_rows) {
  struct Key {
    const void* cache;
    int32_t num_kv_heads, head_dim, box_rows;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<const void*>()(k.cache) ^ (size_t(k.num_kv_heads) << 20) ^ (size_t(k.head_dim) << 36) ^
             (size_t(k.box_rows) << 48);
    }
  };
  static std::mutex mutex;
  static std::unordered_map<Key, CUtensorMap, KeyHash> maps;
  const Key key{cache, num_kv_heads, head_dim, box_rows};
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = maps.find(key); it != maps.end()) return it->second;
  CUtensorMap map;
  if (!encode_kv_tensor_map(&map, cache, num_kv_heads, head_dim, box_rows))
    throw CudaError(cat("attention: no TMA tensor map for the KV cache at ", cache, " (", num_kv_heads,
                        " KV heads, head_dim ", head_dim, ", boxes of ", box_rows,
                        " slots): the driver has no cuTensorMapEncodeTiled or refused the shape"));
  // Tests make a cache per run; an engine has two per layer. Bounded all the same.
  if (maps.size() >= 4096) maps.clear();
  maps.emplace(key, map);
  return map;
}

}  // namespace xy::cuda
