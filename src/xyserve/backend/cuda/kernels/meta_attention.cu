// Tensor-core attention over the meta work list (issue 6, first version): one CTA of 4 warps
// per task, each warp owning 16 of the tile's 64 GQA-packed query rows (one mma M).
//   Q tile [64, D] -> shared memory once (cp.async, zero rows past the tile)
//   for each block of 64 keys of the span (K, V gathered through the block table with
//   cp.async into a 2-stage ring, so block b+1 loads while block b computes):
//     S = Q K^T                     mma.sync m16n8k16 bf16, fp32 accumulate
//     mask S per element            only on blocks the tile does not see whole
//     online softmax (base 2, fp32) row max / sum across the 4 lanes sharing a row
//     O += P V                      P re-packed from the S accumulators as the A operand
// and the same epilogue as the CUDA-core kernel (attention.cu): normalised bf16 rows, or the
// (o, max, sum) partial that launch_attention_merge folds. Shared rows are XOR-swizzled by
// 16-byte chunk so that ldmatrix reads hit 8 distinct bank groups.
//
// Reduction order of a row (kernels.h: it must not depend on the rest of the tile): key blocks
// start at absolute multiples of 64 positions, so a row meets each key in the same block and
// fragment slot whatever the span start or the tile's window start; masked and absent keys add
// exact zeros. The one tile-dependent choice is the key split of small tiles (rows <= 16: each
// warp a quarter of every block, four states merged at the end, a different order from one warp
// taking whole blocks); batch_invariant turns it off, so a decode row and the same row inside a
// prefill chunk or a verify are reduced alike.
#include <cmath>
#include <type_traits>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/attention_mask.cuh"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/backend/cuda/kernels/meta_attention_ptx.cuh"
#include "xyserve/backend/cuda/kernels/mma_softmax.cuh"

namespace xy::cuda {
namespace {

using namespace attn;

template <int kHeadDim>
struct MetaAttentionTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kAttentionTileRows;  // query rows per task
  static constexpr int kKeys = 64;                  // keys per KV block
  static constexpr int kStages = 2;
  static constexpr int kChunks = kHeadDim / 8;      // 16-byte chunks per head vector
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kQBytes = kRows * kRowBytes;
  static constexpr int kKvBytes = kKeys * kRowBytes;  // one of K or V of one stage
  static constexpr size_t kSmemBytes = size_t(kQBytes) + size_t(kStages) * 2 * kKvBytes;
  static constexpr int kScoreTiles = kKeys / 8;   // n8 tiles of S per warp
  static constexpr int kOutTiles = kHeadDim / 8;  // n8 tiles of O per warp
  static_assert(kRows == kWarps * 16, "one m16 slab of rows per warp");
  static_assert(kHeadDim % 64 == 0, "the swizzle permutes 8 chunks of a row");
  static_assert(kKeys % 16 == 0 && kScoreTiles % 2 == 0);
  static_assert((kKeys * kChunks) % kThreads == 0 && (kRows * kChunks) % kThreads == 0);
};

// Byte offset of 16-byte chunk `ch` of row `r` in a swizzled [rows][kHeadDim] bf16 tile.
template <int kHeadDim>
__device__ __forceinline__ int swizzle(int r, int ch) {
  return r * (kHeadDim * 2) + ((ch ^ (r & 7)) << 4);
}

constexpr int32_t kNoKey = -2;  // key_tree value of a slot past the span (zero-filled, masked)

// Positions and tree rows of the keys of each stage of the K/V ring.
template <int kStages, int kKeys>
struct KeyRing {
  int32_t pos[kStages][kKeys];
  int32_t tree[kStages][kKeys];  // tree row, -1 computed key, kNoKey
};

// One task, by the whole CTA (a warp may return early, once its part is done and it has passed
// every barrier the others wait at). Leaves shared memory in use: the caller syncs before the next.
template <int kHeadDim>
__device__ __forceinline__ void meta_attention_task(
    const AttentionArgs& a, const meta::AttentionTask& task, uint8_t* smem,
    KeyRing<MetaAttentionTraits<kHeadDim>::kStages, MetaAttentionTraits<kHeadDim>::kKeys>& ring) {
  using T = MetaAttentionTraits<kHeadDim>;
  uint8_t* const q_s = smem;                   // [64][D] swizzled
  uint8_t* const kv_s = smem + T::kQBytes;     // stage s: K [64][D], then V [64][D]
  auto& key_pos = ring.pos;
  auto& key_tree = ring.tree;

  const PlanRequest req = a.requests[task.request];
  const int32_t* table = a.block_tables + req.block_table;
  const int32_t* parents = req.tree_parents >= 0 ? a.tree_parents + req.tree_parents : nullptr;
  const int32_t rows = task.q_count * a.group;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  const bool tree = task.mask == meta::MaskKind::kTree;
  const bool masked = task.mask != meta::MaskKind::kNone;
  const int32_t window = masked ? a.window : 0;

  // Positions of the tile's tokens: [pos_lo, pos_hi] bounds the keys any row can see.
  const auto [pos_lo, pos_hi] = tile_positions(a.positions + req.first_row + task.q_begin, task.q_count, lane);
  // Keys: range A by position (slot = position), clipped to what the mask can show, then for a
  // tree task range B over the step's rows by slot, kept when their position is in the span.
  // Range A is listed from a_base, the multiple of kKeys at or below a_begin (keys before
  // a_begin are absent): the window start depends on the tile's lowest row, and the blocks must
  // not move with it.
  int32_t a_begin = task.kv_begin;
  int32_t a_end = tree ? min(task.kv_end, req.num_computed) : task.kv_end;
  if (masked) a_end = min(a_end, pos_hi + 1);
  if (window > 0) a_begin = max(a_begin, pos_lo - window + 1);
  const int32_t a_base = a_begin / T::kKeys * T::kKeys;
  const int32_t num_a = a_end > a_begin ? a_end - a_base : 0;
  const int32_t num_keys = num_a + (tree ? req.num_new : 0);
  const int32_t num_blocks = (num_keys + T::kKeys - 1) / T::kKeys;

  // Key kk of the list: its cache element offset (-1: none), position and tree row.
  auto locate = [&](int32_t kk, int32_t& pos, int32_t& tree_row) -> int64_t {
    int32_t slot;
    if (kk < num_a) {
      pos = a_base + kk;
      slot = pos;
      tree_row = pos < a_begin ? kNoKey : -1;
    } else if (kk < num_keys) {
      tree_row = kk - num_a;
      pos = a.positions[req.first_row + tree_row];
      slot = req.num_computed + tree_row;
      if (pos < task.kv_begin || pos >= task.kv_end) tree_row = kNoKey;
    } else {
      pos = 0;
      tree_row = kNoKey;
    }
    if (tree_row == kNoKey) return -1;
    const int64_t block = table[slot / a.block_size];
    return ((block * a.block_size + slot % a.block_size) * a.num_kv_heads + task.kv_head) * kHeadDim;
  };
  auto load_kv = [&](int32_t b, int stage) {
    uint8_t* k_dst = kv_s + stage * 2 * T::kKvBytes;
    uint8_t* v_dst = k_dst + T::kKvBytes;
#pragma unroll
    for (int c = tid; c < T::kKeys * T::kChunks; c += T::kThreads) {
      const int key = c / T::kChunks, ch = c % T::kChunks;
      int32_t pos, tree_row;
      const int64_t addr = locate(b * T::kKeys + key, pos, tree_row);
      const bool valid = addr >= 0;
      const int64_t off = valid ? addr + ch * 8 : 0;
      cp_async_16(smem_u32(k_dst + swizzle<kHeadDim>(key, ch)), a.k_cache + off, valid);
      cp_async_16(smem_u32(v_dst + swizzle<kHeadDim>(key, ch)), a.v_cache + off, valid);
    }
    if (tid < T::kKeys) {
      int32_t pos, tree_row;
      locate(b * T::kKeys + tid, pos, tree_row);
      key_pos[stage][tid] = pos;
      key_tree[stage][tid] = tree_row;
    }
  };

  // Q tile: tile row r is query token r / group, head kv_head * group + r % group.
  const int32_t first_row = req.first_row + task.q_begin;
#pragma unroll
  for (int c = tid; c < T::kRows * T::kChunks; c += T::kThreads) {
    const int r = c / T::kChunks, ch = c % T::kChunks;
    const bool valid = r < rows;
    const bf16* src = valid ? a.q + int64_t(first_row + r / a.group) * a.q_row_stride +
                                  int64_t(task.kv_head * a.group + r % a.group) * kHeadDim + ch * 8
                            : a.q;
    cp_async_16(smem_u32(q_s + swizzle<kHeadDim>(r, ch)), src, valid);
  }
  if (num_blocks > 0) load_kv(0, 0);
  cp_async_commit();

  // A tile of at most 16 rows (a decode, a small verify) is one m16 slab: rather than leave 3
  // warps idle, every warp takes that slab against its own quarter of each key block, and the 4
  // partial softmax states are merged through shared memory at the end. Not when batch
  // invariant: the same row in a larger tile would be reduced in another order.
  const bool key_split = rows <= 16 && !a.batch_invariant;
  const int slab = key_split ? 0 : warp;
  // This thread's two rows (g and g + 8 of the slab): position, new-row index.
  const int row0 = slab * 16 + g;
  int32_t row_pos[2], row_new[2];
  bool row_live[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    row_live[h] = r < rows;
    row_new[h] = task.q_begin + r / a.group;
    row_pos[h] = row_live[h] ? a.positions[req.first_row + row_new[h]] : 0;
  }
  const bool warp_live = slab * 16 < rows;  // a warp past the tile only helps load
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[T::kOutTiles][4];
#pragma unroll
  for (int i = 0; i < T::kOutTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  const float scale_log2 = a.scale * 1.4426950408889634f;
  const uint32_t q_base = smem_u32(q_s);

  // One key block for this warp's slab: keys [key_offset, key_offset + 8 * kTiles) of the block.
  auto step = [&](auto tiles, int key_offset, int stage, int32_t k0) {
    constexpr int kTiles = decltype(tiles)::value;
    const uint32_t k_base = smem_u32(kv_s + stage * 2 * T::kKvBytes);
    const uint32_t v_base = k_base + T::kKvBytes;
    // S = Q K^T over the slab's 16 rows and the keys.
    float s[kTiles][4];
#pragma unroll
    for (int i = 0; i < kTiles; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kd = 0; kd < kHeadDim / 16; ++kd) {
      uint32_t qa[4];
      ldmatrix_x4(q_base + swizzle<kHeadDim>(slab * 16 + lane % 8 + ((lane / 8) & 1) * 8, 2 * kd + lane / 16), qa);
#pragma unroll
      for (int nt = 0; nt < kTiles; nt += 2) {
        uint32_t kb[4];
        ldmatrix_x4(k_base + swizzle<kHeadDim>(key_offset + nt * 8 + lane % 8 + (lane / 16) * 8,
                                               2 * kd + ((lane / 8) & 1)), kb);
        mma_16816(s[nt], qa, kb[0], kb[1]);
        mma_16816(s[nt + 1], qa, kb[2], kb[3]);
      }
    }
    // Mask per element only where some (row, key) pair of the block may be hidden.
    const bool whole = a_base + k0 >= a_begin && k0 + T::kKeys <= num_a &&
                       (!masked || (a_base + k0 + T::kKeys - 1 <= pos_lo &&
                                    (window == 0 || a_base + k0 > pos_hi - window)));
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[nt][e] * scale_log2;
        if (!whole) {
          const int key = key_offset + nt * 8 + 2 * t + (e & 1), h = e / 2;
          const int32_t kt = key_tree[stage][key], kp = key_pos[stage][key];
          bool visible = kt != kNoKey && row_live[h];
          if (masked) {
            visible = visible && kp <= row_pos[h];
            if (window > 0) visible = visible && kp > row_pos[h] - window;
            if (kt >= 0) visible = visible && attn::tree_visible(parents, kt, row_new[h]);
          }
          if (!visible) v = -INFINITY;
        }
        s[nt][e] = v;
      }
    }
    online_softmax_step(s, m, l, o);  // p = exp2(s - max), O and l rescaled (mma_softmax.cuh)
    // O += P V: the S accumulators of key tiles 2kk, 2kk+1 are the A fragment of 16 keys.
#pragma unroll
    for (int kk = 0; kk < kTiles / 2; ++kk) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < T::kOutTiles; dt += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(v_base + swizzle<kHeadDim>(key_offset + kk * 16 + lane % 8 + ((lane / 8) & 1) * 8,
                                                     dt + lane / 16), vb);
        mma_16816(o[dt], pa, vb[0], vb[1]);
        mma_16816(o[dt + 1], pa, vb[2], vb[3]);
      }
    }
  };

  for (int32_t b = 0; b < num_blocks; ++b) {
    const int stage = b % T::kStages;
    if (b + 1 < num_blocks) {
      load_kv(b + 1, (b + 1) % T::kStages);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // block b (and Q) landed for every thread
    if (key_split) {
      step(std::integral_constant<int, T::kScoreTiles / T::kWarps>{}, warp * (T::kKeys / T::kWarps), stage, b * T::kKeys);
    } else if (warp_live) {
      step(std::integral_constant<int, T::kScoreTiles>{}, 0, stage, b * T::kKeys);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();  // nothing in flight at exit (no blocks: only the Q group)

  if (!warp_live) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  if (key_split) {
    // Merge the 4 warps' (m, l, o) of the same fragment positions by log-sum-exp, in warp
    // order, into warp 0. The K/V ring is free now (the loop ended on a barrier); layout
    // [warp][value][lane] so that each access of a warp is 32 consecutive words.
    constexpr int kValues = T::kOutTiles * 4 + 4;
    static_assert(size_t(T::kWarps) * kValues * 32 * 4 <= size_t(T::kStages) * 2 * T::kKvBytes);
    float* state = reinterpret_cast<float*>(kv_s);
    if (warp > 0) {
      float* mine = state + warp * kValues * 32 + lane;
#pragma unroll
      for (int i = 0; i < T::kOutTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[(i * 4 + e) * 32] = o[i][e];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mine[(T::kOutTiles * 4 + h) * 32] = m[h];
        mine[(T::kOutTiles * 4 + 2 + h) * 32] = l[h];
      }
    }
    __syncthreads();
    if (warp > 0) return;
#pragma unroll 1
    for (int w = 1; w < T::kWarps; ++w) {
      const float* theirs = state + w * kValues * 32 + lane;
      float fa[2], fb[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float mw = theirs[(T::kOutTiles * 4 + h) * 32], lw = theirs[(T::kOutTiles * 4 + 2 + h) * 32];
        const float m_new = fmaxf(m[h], mw);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        fa[h] = exp2f(m[h] - m_use);
        fb[h] = exp2f(mw - m_use);
        l[h] = l[h] * fa[h] + lw * fb[h];
        m[h] = m_new;
      }
#pragma unroll
      for (int i = 0; i < T::kOutTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = o[i][e] * fa[e / 2] + theirs[(i * 4 + e) * 32] * fb[e / 2];
    }
  }
  // Write out: normalised rows, or the partial (o, max, sum) of a split task.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    if (!row_live[h]) continue;
    if (task.partial < 0) {
      const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
      bf16* out = a.out + int64_t(first_row + r / a.group) * (int64_t(a.group) * a.num_kv_heads * kHeadDim) +
                  int64_t(task.kv_head * a.group + r % a.group) * kHeadDim;
#pragma unroll
      for (int dt = 0; dt < T::kOutTiles; ++dt)
        *reinterpret_cast<uint32_t*>(out + dt * 8 + 2 * t) = pack_bf16(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
    } else {
      const int64_t prow = int64_t(task.partial) * a.partial_rows + r;
      float* out = a.partial_out + prow * kHeadDim;
#pragma unroll
      for (int dt = 0; dt < T::kOutTiles; ++dt)
        *reinterpret_cast<float2*>(out + dt * 8 + 2 * t) = make_float2(o[dt][2 * h], o[dt][2 * h + 1]);
      if (t == 0) {
        a.partial_max[prow] = m[h];
        a.partial_sum[prow] = l[h];
      }
    }
  }
}

// Two CTAs fit an SM by shared memory (80 KB each at d=128); saying so lets the compiler use the
// registers that leaves (234 at d=128) instead of spilling at its default cap. One CTA per task,
// or (task_count set: CUDA graphs) a persistent grid striding over them.
template <int kHeadDim>
__global__ void __launch_bounds__(MetaAttentionTraits<kHeadDim>::kThreads, 2)
    meta_attention_kernel(AttentionArgs a) {
  using T = MetaAttentionTraits<kHeadDim>;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ KeyRing<T::kStages, T::kKeys> ring;
  cudaTriggerProgrammaticLaunchCompletion();  // the o GEMM may be PDL-launched (attention.cu)
  const int32_t num_tasks = a.task_count ? min(*a.task_count, a.num_tasks) : a.num_tasks;
  for (int32_t i = blockIdx.x; i < num_tasks; i += gridDim.x) {
    meta_attention_task<kHeadDim>(a, a.tasks[i], smem, ring);
    __syncthreads();  // every warp is done with Q, the K/V ring and the merge state
  }
}

template <int kHeadDim>
void run_meta_attention(const AttentionArgs& a, cudaStream_t stream) {
  using T = MetaAttentionTraits<kHeadDim>;
  const int blocks_per_sm = resident_ctas_per_sm(
      reinterpret_cast<const void*>(meta_attention_kernel<kHeadDim>), T::kThreads, T::kSmemBytes,
      "attention: the tensor-core kernel");
  const int32_t grid = a.task_count ? persistent_grid(a.num_tasks, blocks_per_sm) : a.num_tasks;
  meta_attention_kernel<kHeadDim><<<grid, T::kThreads, T::kSmemBytes, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
}

bool tensor_core_head_dim(int32_t head_dim) { return head_dim == 64 || head_dim == 128; }

}  // namespace

void launch_attention(const AttentionArgs& a, cudaStream_t stream, AttentionKernel kernel) {
  if (a.num_tasks == 0) return;
  if (a.group < 1 || a.group > kAttentionTileRows)
    throw InvalidArgument(cat("attention: GQA group ", a.group, " outside [1, ", kAttentionTileRows, "]"));
  if (kernel == AttentionKernel::kWgmma) return launch_attention_wgmma(a, stream);
  if (kernel == AttentionKernel::kDecode) return launch_attention_decode(a, stream);
  if (kernel == AttentionKernel::kCudaCore ||
      (kernel == AttentionKernel::kAuto && !tensor_core_head_dim(a.head_dim))) {
    launch_attention_cuda_core(a, stream);
    return;
  }
  if (a.head_dim == 64) return run_meta_attention<64>(a, stream);
  if (a.head_dim == 128) return run_meta_attention<128>(a, stream);
  throw InvalidArgument(cat("attention: the tensor-core kernel has no head_dim ", a.head_dim, " (64, 128)"));
}

}  // namespace xy::cuda
