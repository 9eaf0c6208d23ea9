// A first, correct attention kernel over the meta work list (speed is the Meta-Attention issue):
// one CTA per task, 8 warps, each warp owning up to 8 of the tile's 64 GQA-packed query rows.
// K and V tiles of 32 keys are staged in shared memory once and used by every row of the tile;
// each lane scores one key, then every lane accumulates its share of head_dim. Softmax in base 2,
// fp32 throughout. A row is reduced by one warp over key tiles at absolute multiples of 32
// positions, so its order never depends on the rest of its tile (kernels.h).
#include <algorithm>
#include <cfloat>
#include <map>
#include <mutex>
#include <tuple>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/launch.cuh"
#include "xyserve/backend/cuda/kernels/attention_mask.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/reduce.cuh"

namespace xy::cuda {
namespace {

template <int kHeadDim>
struct AttentionTraits {
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = kAttentionTileRows / kWarps;
  static constexpr int kKeys = 32;  // keys per shared-memory tile: one per lane
  static constexpr int kWords = kHeadDim / 2;          // bf16 pairs per head vector
  static constexpr int kKvStrideWords = kWords + 1;    // padded: lane-per-key reads hit distinct banks
  static constexpr int kDimsPerLane = (kHeadDim + 31) / 32;
  static constexpr int kChunks = kHeadDim / 8;         // 16-byte chunks per head vector
  static constexpr size_t kSmemBytes =
      size_t(kAttentionTileRows) * kWords * 4 + 2 * size_t(kKeys) * kKvStrideWords * 4;
  static_assert(kHeadDim % 8 == 0, "head_dim must be a multiple of 8 (16-byte loads)");
  static_assert(kAttentionTileRows % kWarps == 0);
};

// Per-key metadata of the staged key tile.
template <int kKeys>
struct KeyTile {
  int64_t addr[kKeys];  // element offset of (slot, kv_head) in the cache; -1: none
  int32_t pos[kKeys];
  int32_t tree[kKeys];  // tree row index of the key, -1 for a computed key
};

// One task, by the whole CTA. Leaves shared memory in use: the caller syncs before the next.
template <int kHeadDim>
__device__ __forceinline__ void attention_task(const AttentionArgs& a, const meta::AttentionTask& task,
                                               uint32_t* smem, KeyTile<AttentionTraits<kHeadDim>::kKeys>& keys) {
  using T = AttentionTraits<kHeadDim>;
  uint32_t* q_s = smem;                                       // [64][kWords]
  uint32_t* k_s = q_s + kAttentionTileRows * T::kWords;       // [kKeys][kKvStrideWords]
  uint32_t* v_s = k_s + T::kKeys * T::kKvStrideWords;
  int64_t* key_addr = keys.addr;
  int32_t* key_pos = keys.pos;
  int32_t* key_tree = keys.tree;

  const PlanRequest req = a.requests[task.request];
  const int32_t* table = a.block_tables + req.block_table;
  const int32_t* parents = req.tree_parents >= 0 ? a.tree_parents + req.tree_parents : nullptr;
  const int32_t rows = task.q_count * a.group;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int32_t first_row = req.first_row + task.q_begin;

  // Q tile: tile row r is query token r / group, head kv_head * group + r % group.
  for (int idx = threadIdx.x; idx < rows * T::kWords; idx += T::kThreads) {
    const int r = idx / T::kWords, w = idx % T::kWords;
    const uint32_t* src = reinterpret_cast<const uint32_t*>(
        a.q + int64_t(first_row + r / a.group) * a.q_row_stride +
        int64_t(task.kv_head * a.group + r % a.group) * kHeadDim);
    q_s[idx] = src[w];
  }
  // This warp's rows: position and request-local new-row index.
  int32_t row_pos[T::kRowsPerWarp], row_new[T::kRowsPerWarp];
  float m[T::kRowsPerWarp], l[T::kRowsPerWarp], acc[T::kRowsPerWarp][T::kDimsPerLane];
#pragma unroll
  for (int i = 0; i < T::kRowsPerWarp; ++i) {
    const int r = warp + T::kWarps * i;
    row_new[i] = task.q_begin + r / a.group;
    row_pos[i] = r < rows ? a.positions[req.first_row + row_new[i]] : 0;
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int t = 0; t < T::kDimsPerLane; ++t) acc[i][t] = 0.0f;
  }
  const float scale_log2 = a.scale * 1.4426950408889634f;
  const bool tree = task.mask == meta::MaskKind::kTree;
  // Keys: range A by position (slot = position) then, for a tree task, range B over the step's
  // rows by slot, keeping those whose position lies in the span (each key is in one span).
  // Range A starts at the multiple of kKeys at or below kv_begin (keys before kv_begin are
  // absent), so a key always sits in the same tile and lane whatever the span's start, which
  // a window makes depend on the tile's other rows.
  const int32_t a_end = tree ? min(task.kv_end, req.num_computed) : task.kv_end;
  const int32_t a_base = task.kv_begin / T::kKeys * T::kKeys;
  const int32_t num_a = a_end > task.kv_begin ? a_end - a_base : 0;
  const int32_t num_keys = num_a + (tree ? req.num_new : 0);

  for (int32_t k0 = 0; k0 < num_keys; k0 += T::kKeys) {
    __syncthreads();  // the previous tile (and the metadata) is consumed
    if (threadIdx.x < T::kKeys) {
      const int32_t kk = k0 + threadIdx.x;
      int64_t addr = -1;
      int32_t pos = 0, tree_row = -1;
      if (kk < num_a) {
        pos = a_base + kk;
        if (pos >= task.kv_begin) {
          const int64_t block = table[pos / a.block_size];
          addr = ((block * a.block_size + pos % a.block_size) * a.num_kv_heads + task.kv_head) * kHeadDim;
        }
      } else if (kk < num_keys) {
        tree_row = kk - num_a;
        pos = a.positions[req.first_row + tree_row];
        const int32_t slot = req.num_computed + tree_row;
        if (pos >= task.kv_begin && pos < task.kv_end) {
          const int64_t block = table[slot / a.block_size];
          addr = ((block * a.block_size + slot % a.block_size) * a.num_kv_heads + task.kv_head) * kHeadDim;
        }
      }
      key_addr[threadIdx.x] = addr;
      key_pos[threadIdx.x] = pos;
      key_tree[threadIdx.x] = tree_row;
    }
    __syncthreads();
    // K and V tile: 16-byte loads from the cache, 4-byte stores into padded rows.
    for (int c = threadIdx.x; c < T::kKeys * T::kChunks; c += T::kThreads) {
      const int key = c / T::kChunks, ch = c % T::kChunks;
      const int64_t addr = key_addr[key];
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (addr >= 0) {
        kv = *reinterpret_cast<const uint4*>(a.k_cache + addr + ch * 8);
        vv = *reinterpret_cast<const uint4*>(a.v_cache + addr + ch * 8);
      }
      uint32_t* kd = k_s + key * T::kKvStrideWords + ch * 4;
      uint32_t* vd = v_s + key * T::kKvStrideWords + ch * 4;
      kd[0] = kv.x; kd[1] = kv.y; kd[2] = kv.z; kd[3] = kv.w;
      vd[0] = vv.x; vd[1] = vv.y; vd[2] = vv.z; vd[3] = vv.w;
    }
    __syncthreads();

    const int64_t my_addr = key_addr[lane];
    const int32_t my_pos = key_pos[lane], my_tree = key_tree[lane];
#pragma unroll
    for (int i = 0; i < T::kRowsPerWarp; ++i) {
      const int r = warp + T::kWarps * i;
      if (r >= rows) break;  // uniform over the warp
      bool visible = my_addr >= 0;
      const int32_t p = row_pos[i];
      if (task.mask != meta::MaskKind::kNone) {
        visible = visible && my_pos <= p;
        if (a.window > 0) visible = visible && my_pos > p - a.window;
        if (my_tree >= 0) visible = visible && attn::tree_visible(parents, my_tree, row_new[i]);
      }
      float s = -INFINITY;
      if (visible) {
        const __nv_bfloat162* qv = reinterpret_cast<const __nv_bfloat162*>(q_s + r * T::kWords);
        const __nv_bfloat162* kv = reinterpret_cast<const __nv_bfloat162*>(k_s + lane * T::kKvStrideWords);
        float dot = 0.0f;
#pragma unroll 8
        for (int w = 0; w < T::kWords; ++w) {
          const float2 qf = __bfloat1622float2(qv[w]);
          const float2 kf = __bfloat1622float2(kv[w]);
          dot = fmaf(qf.x, kf.x, dot);
          dot = fmaf(qf.y, kf.y, dot);
        }
        s = dot * scale_log2;
      }
      const float tile_max = warp_max(s);
      if (tile_max == -INFINITY) continue;  // no key of this tile is visible to the row
      const float m_new = fmaxf(m[i], tile_max);
      const float factor = exp2f(m[i] - m_new);  // 0 when m[i] is -inf
      const float pk = visible ? exp2f(s - m_new) : 0.0f;
      l[i] = l[i] * factor + warp_sum(pk);
      m[i] = m_new;
#pragma unroll
      for (int t = 0; t < T::kDimsPerLane; ++t) acc[i][t] *= factor;
      const bf16* vrow = reinterpret_cast<const bf16*>(v_s);
#pragma unroll 4
      for (int k = 0; k < T::kKeys; ++k) {
        const float pkk = __shfl_sync(0xffffffffu, pk, k);
#pragma unroll
        for (int t = 0; t < T::kDimsPerLane; ++t) {
          const int d = lane + 32 * t;
          if (d < kHeadDim) acc[i][t] = fmaf(pkk, __bfloat162float(vrow[k * 2 * T::kKvStrideWords + d]), acc[i][t]);
        }
      }
    }
  }

  // Write out: normalised rows, or the partial (o, max, sum) of a split task.
#pragma unroll
  for (int i = 0; i < T::kRowsPerWarp; ++i) {
    const int r = warp + T::kWarps * i;
    if (r >= rows) break;
    if (task.partial < 0) {
      const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
      bf16* o = a.out + int64_t(first_row + r / a.group) * (int64_t(a.group) * a.num_kv_heads * kHeadDim) +
                int64_t(task.kv_head * a.group + r % a.group) * kHeadDim;
#pragma unroll
      for (int t = 0; t < T::kDimsPerLane; ++t) {
        const int d = lane + 32 * t;
        if (d < kHeadDim) o[d] = __float2bfloat16(acc[i][t] * inv);
      }
    } else {
      const int64_t prow = int64_t(task.partial) * a.partial_rows + r;
      float* o = a.partial_out + prow * kHeadDim;
#pragma unroll
      for (int t = 0; t < T::kDimsPerLane; ++t) {
        const int d = lane + 32 * t;
        if (d < kHeadDim) o[d] = acc[i][t];
      }
      if (lane == 0) {
        a.partial_max[prow] = m[i];
        a.partial_sum[prow] = l[i];
      }
    }
  }
}

// One CTA per task, or (task_count set: CUDA graphs) a persistent grid striding over them.
template <int kHeadDim>
__global__ void __launch_bounds__(AttentionTraits<kHeadDim>::kThreads)
    attention_kernel(AttentionArgs a) {
  using T = AttentionTraits<kHeadDim>;
  extern __shared__ uint32_t smem[];
  __shared__ KeyTile<T::kKeys> keys;
  // The o GEMM after attention may be launched with PDL (GemmArgs::pdl): it may start streaming
  // weights now; it still waits for this grid's completion before reading the output.
  cudaTriggerProgrammaticLaunchCompletion();
  const int32_t num_tasks = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  for (int32_t i = blockIdx.x; i < num_tasks; i += gridDim.x) {
    attention_task<kHeadDim>(a, a.tasks[i], smem, keys);
    __syncthreads();  // every warp is done with the tile before the next task loads its own
  }
}

// One merge group, one warp per tile row: partials folded in split order by log-sum-exp (base
// 2, as the attention kernels store them). An empty partial (max -inf: the row sees no key of
// that span) is skipped, so a row with one non-empty partial gets o * (1 / sum) of it exactly,
// the bits a direct write of the same span gives.
template <int kHeadDim>
__device__ __forceinline__ void merge_group(const AttentionArgs& a, const meta::MergeGroup& mg) {
  constexpr int kDimsPerLane = (kHeadDim + 31) / 32;
  // Partials whose loads are in flight together: a row's fold is a chain over its partials, and
  // one L2 round trip per partial made a 64-group merge of 8 splits take ~14 us (decode 8 x 32k).
  // 8: the decode kernel's usual split of a long context (8 x 32k: 8 spans) in one round trip.
  constexpr int kBatch = 8;
  const PlanRequest req = a.requests[mg.request];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int32_t end = mg.first_partial + mg.num_partials;
  for (int r = warp; r < mg.q_count * a.group; r += num_warps) {
    float m = -INFINITY, l = 0.0f, acc[kDimsPerLane];
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) acc[t] = 0.0f;
    for (int32_t p0 = mg.first_partial; p0 < end; p0 += kBatch) {
      float pm[kBatch], ps[kBatch], po[kBatch][kDimsPerLane];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const bool valid = p0 + b < end;
        const int64_t prow = int64_t(valid ? p0 + b : p0) * a.partial_rows + r;
        pm[b] = valid ? a.partial_max[prow] : -INFINITY;
        ps[b] = a.partial_sum[prow];
#pragma unroll
        for (int t = 0; t < kDimsPerLane; ++t) {
          const int d = lane + 32 * t;
          po[b][t] = d < kHeadDim ? a.partial_out[prow * kHeadDim + d] : 0.0f;
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (pm[b] == -INFINITY) continue;
        const float m_new = fmaxf(m, pm[b]);
        const float fa = exp2f(m - m_new), fb = exp2f(pm[b] - m_new);
#pragma unroll
        for (int t = 0; t < kDimsPerLane; ++t) acc[t] = acc[t] * fa + po[b][t] * fb;
        l = l * fa + ps[b] * fb;
        m = m_new;
      }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    bf16* o = a.out + int64_t(req.first_row + mg.q_begin + r / a.group) * (int64_t(a.group) * a.num_kv_heads * kHeadDim) +
              int64_t(mg.kv_head * a.group + r % a.group) * kHeadDim;
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < kHeadDim) o[d] = __float2bfloat16(acc[t] * inv);
    }
  }
}

// One block per merge group, or (merge_count set: CUDA graphs) a persistent grid striding over them.
template <int kHeadDim>
__global__ void attention_merge_kernel(AttentionArgs a, const meta::MergeGroup* merges, int32_t num_merges,
                                       const int32_t* merge_count) {
  cudaTriggerProgrammaticLaunchCompletion();  // as in attention_kernel: the o GEMM may start early
  // Launched with PDL (launch_attention_merge): the attention grid's partials are complete and
  // visible only past this wait.
  cudaGridDependencySynchronize();
  const int32_t n = merge_count ? min(*merge_count, num_merges) : num_merges;
  for (int32_t g = blockIdx.x; g < n; g += gridDim.x) merge_group<kHeadDim>(a, merges[g]);
}

template <int kHeadDim>
void run_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = AttentionTraits<kHeadDim>;
  const int blocks_per_sm = resident_ctas_per_sm(reinterpret_cast<const void*>(attention_kernel<kHeadDim>),
                                                  T::kThreads, T::kSmemBytes, "attention: the CUDA-core kernel");
  const int32_t grid = a.task_count ? persistent_grid(a.num_tasks, blocks_per_sm) : a.num_tasks;
  attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
}

// Runtime head_dim to a compile-time constant, in one place (STYLE.md habit 5).
template <typename F>
void dispatch_head_dim(int32_t head_dim, F&& f) {
  switch (head_dim) {
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    case 256: f(std::integral_constant<int, 256>{}); return;
  }
  throw InvalidArgument(cat("attention: unsupported head_dim ", head_dim, " (16, 32, 64, 128, 256)"));
}

}  // namespace

void launch_attention_cuda_core(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tasks == 0) return;
  if (a.group < 1 || a.group > kAttentionTileRows)
    throw InvalidArgument(cat("attention: GQA group ", a.group, " outside [1, ", kAttentionTileRows, "]"));
  dispatch_head_dim(a.head_dim, [&](auto hd) { run_attention<decltype(hd)::value>(a, stream); });
}

void launch_attention_merge(const AttentionArgs& a, const meta::MergeGroup* merges,
                            int32_t num_merges, cudaStream_t stream, const int32_t* merge_count) {
  if (num_merges == 0) return;
  // 256 threads and no shared memory: 8 blocks fill an SM's 2048 threads.
  const int32_t grid = merge_count ? persistent_grid(num_merges, 8) : num_merges;
  // As a programmatic dependent launch: the merge's launch and CTA start-up overlap the tail of the
  // attention kernel (which allows it at its start), not after its last CTA.
  dispatch_head_dim(a.head_dim, [&](auto hd) {
    XY_CUDA_CHECK(launch_kernel(attention_merge_kernel<decltype(hd)::value>, dim3(unsigned(grid)), dim3(256), 0,
                                stream, true, a, merges, num_merges, merge_count));
  });
}

int resident_ctas_per_sm(const void* kernel, int threads, size_t smem_bytes, const char* what) {
  int device = 0;
  XY_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, size_t>, int> known;  // (kernel, device, threads, smem)
  const auto key = std::tuple(kernel, device, threads, smem_bytes);
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  XY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  int n = 0;
  XY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem_bytes));
  if (n < 1)
    throw CudaError(cat(what, " (", threads, " threads, ", smem_bytes,
                        " bytes of shared memory) does not fit an SM of this device"));
  known.emplace(key, n);
  return n;
}

int32_t persistent_grid(int32_t max_items, int blocks_per_sm) {
  int device = 0, num_sms = 0;
  XY_CUDA_CHECK(cudaGetDevice(&device));
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(1, std::min(max_items, std::max(1, blocks_per_sm) * num_sms));
}

}  // namespace xy::cuda
