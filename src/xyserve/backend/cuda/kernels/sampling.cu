// GPU sampling (kernels/sampling.h): meta/sampling_plan.h's rules, choosing the token that
// backend::cpu::sample_rows chooses up to float rounding at a boundary, without sorting the
// vocabulary. One CTA of 1024 threads per logits row.
//
// - "Most likely first, ties to the lower id" is the order (penalised logit descending, id
//   ascending). order_key() maps a float to a uint32 of the same order, so each cut point (the
//   k-th largest for top-k; the token at which the cumulative mass reaches a target, for top-p
//   and for the draw) is found by a radix descent over that key: three levels (digits of 11,
//   11 and 10 bits), each a pass that fills a 2048-bin histogram in shared memory and one warp
//   that picks the bin holding the target. Ties at the cut key are broken by the same descent
//   over the ids.
// - Mass is fixed point: a token weighs floor(2^40 * exp((l - l_max) / T)), its probability
//   relative to the most likely token's. Integer sums are exact whatever order threads add in,
//   so the outcome does not depend on scheduling: same inputs, bitwise the same outputs. A token
//   under 2^-40 of the most likely one weighs nothing and is never drawn (all of them together
//   hold under vocab * 2^-40, ~1e-7 of the mass at 128k).
// - Only tokens of nonzero weight can be cut points. When they fit kSamplingListCapacity they
//   are listed in shared memory and every later pass runs over the list. When not (flat rows),
//   passes re-read the row; after top-k the kept set is listed when it fits.
// - Penalties: the row is only ever read raw. A bitmap in shared memory marks the penalised
//   ids; passes skip them and take them from the row's penalty list with penalised values, so
//   no penalised copy of the row is written.
// - Logprobs are of the raw row: log-sum-exp as an online (max, sum) per thread in a fixed
//   order, combined in a fixed order; the top n from per-thread sorted lists merged by n rounds
//   of block argmax.
#include "xyserve/backend/cuda/kernels/sampling.h"

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// A key is cut into three digits of 11, 11 and 10 bits, one descent level each. Three passes
// per descent, and a first digit (sign, exponent, two mantissa bits: quarter binades) fine
// enough to spread a row's logits over dozens of bins: an 8-bit first digit (sign and seven
// exponent bits) puts most of a row in a handful, whose shared-memory atomics then serialise.
constexpr int kLevels = 3;
constexpr int kBins = 2048;
__device__ __forceinline__ int digit_shift(int level) {
  return level == 0 ? 21 : level == 1 ? 10 : 0;
}
// The key bits above level `level`'s digit.
__device__ __forceinline__ uint32_t bits_above(int level) {
  return level == 0 ? 0u : ~0u << (level == 1 ? 21 : 10);
}
// Level `level`'s digit of `key` (at the last level, bit 10 too: it is fixed by the prefix).
__device__ __forceinline__ uint32_t digit_of(uint32_t key, int level) {
  return (key >> digit_shift(level)) & uint32_t(kBins - 1);
}

// The tie-breaking select finds the j-th smallest id as the j-th largest of kIdFlip - id.
constexpr uint32_t kIdFlip = 0xffffffu;
static_assert(kMaxSamplingVocab - 1 <= int64_t(kIdFlip));

// 2^40 per unit of relative probability: a row weighs at most vocab * 2^40, within 64 bits.
constexpr float kWeightScale = 0x1p40f;
constexpr float kMinRelativeProb = 0x1p-40f;
static_assert(kMaxSamplingVocab <= (int64_t(1) << 23));

constexpr size_t kListBytes =
    size_t(kSamplingListCapacity) * (sizeof(uint32_t) + sizeof(int32_t));
constexpr size_t kMaxBitmapBytes = size_t(kMaxSamplingVocab) / 8;

__device__ __forceinline__ uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }
__device__ __forceinline__ uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
struct MinOp {
  __device__ __forceinline__ uint64_t operator()(uint64_t a, uint64_t b) const {
    return min_u64(a, b);
  }
};
struct MaxOp {
  __device__ __forceinline__ uint64_t operator()(uint64_t a, uint64_t b) const {
    return max_u64(a, b);
  }
};
struct SumOp {
  __device__ __forceinline__ uint64_t operator()(uint64_t a, uint64_t b) const { return a + b; }
};

// ---- Keys: floats as uint32 of the same order.

// NaN below everything; -0 equal to +0 (the CPU compares them equal).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x != x) return 0u;
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// (key, id) in one word whose unsigned order is "larger key, then lower id"; 0 is below any.
__device__ __forceinline__ uint64_t pack_best(uint32_t key, int32_t id) {
  return (uint64_t(key) << 32) | uint64_t(0xffffffffu - uint32_t(id));
}
__device__ __forceinline__ int32_t packed_id(uint64_t p) {
  return int32_t(0xffffffffu - uint32_t(p));
}
__device__ __forceinline__ uint32_t packed_key(uint64_t p) { return uint32_t(p >> 32); }

// ---- Shared state of a CTA.

// (No member initialisers: it lives in __shared__.)
struct BinChoice {
  uint32_t digit;
  uint32_t min_id;  // lowest id in the chosen bin (last level of a mass cut)
  uint64_t before;  // value of the bins above it (larger digits) at this level
  uint64_t bin;     // value of the chosen bin
  uint64_t need;    // the target unit, counted from the first element of this level's set
};

struct SamplingShared {
  uint32_t bins[kBins];     // counts, or the low 32 bits of weights
  uint32_t bins_hi[kBins];  // the high 32 bits of weights
  uint32_t min_id[kBins];
  uint64_t reduce[kWarps];
  float lse_max[kWarps];
  float lse_sum[kWarps];
  BinChoice choice;
  uint32_t num_listed;
  int32_t error;
};
static_assert(kListBytes + kMaxBitmapBytes + sizeof(SamplingShared) <= 227 * 1024,
              "shared memory of one CTA (H100/H200)");

// ---- Reading a row.

// Calls f(value, id) for every element of row[0, n); each thread takes its share in ascending
// id order, a fixed order (the per-thread float reductions are deterministic). Four loads are
// issued before any is used: a single CTA streams the row, and only enough bytes in flight
// let it approach one SM's share of L2 bandwidth.
template <class F>
__device__ __forceinline__ void for_each_value(const float* __restrict__ row, int32_t n, F&& f) {
  const int32_t t = threadIdx.x;
  int32_t scalar_from = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15u) == 0) {
    const float4* v = reinterpret_cast<const float4*>(row);
    const int32_t n4 = n / 4;
    int32_t i = t;
    for (; i + 3 * kThreads < n4; i += 4 * kThreads) {
      float4 a[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = __ldg(v + i + u * kThreads);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int32_t j = 4 * (i + u * kThreads);
        f(a[u].x, j);
        f(a[u].y, j + 1);
        f(a[u].z, j + 2);
        f(a[u].w, j + 3);
      }
    }
    for (; i < n4; i += kThreads) {
      const float4 a = __ldg(v + i);
      f(a.x, 4 * i);
      f(a.y, 4 * i + 1);
      f(a.z, 4 * i + 2);
      f(a.w, 4 * i + 3);
    }
    scalar_from = 4 * n4;
  }
  int32_t j = scalar_from + t;
  for (; j + 3 * kThreads < n; j += 4 * kThreads) {
    float a[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) a[u] = __ldg(row + j + u * kThreads);
#pragma unroll
    for (int u = 0; u < 4; ++u) f(a[u], j + u * kThreads);
  }
  for (; j < n; j += kThreads) f(__ldg(row + j), j);
}

// backend::cpu::apply_penalties on one logit, with the same roundings (no FMA contraction).
struct Penalties {
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;

  __device__ __forceinline__ float apply(float l, int32_t output_count) const {
    if (repetition != 1.0f) l = l > 0.0f ? __fdiv_rn(l, repetition) : __fmul_rn(l, repetition);
    if (output_count > 0)
      l = __fsub_rn(l, __fadd_rn(__fmul_rn(frequency, float(output_count)), presence));
    return l;
  }
};

// The row as sampling sees it, as (order key, id) pairs: raw logits, except the penalised ids,
// which come from the penalty list with their penalised values.
struct RowSource {
  const float* row = nullptr;
  int32_t vocab = 0;
  const uint32_t* penalised = nullptr;  // bitmap of the ids in `penalties`; null when none
  const meta::PenaltyToken* penalties = nullptr;
  int32_t num_penalties = 0;
  Penalties rules;

  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
    for_each_value(row, vocab, [&](float x, int32_t id) {
      if (penalised && ((penalised[id >> 5] >> (id & 31)) & 1u)) return;
      f(order_key(x), id);
    });
    for (int32_t j = threadIdx.x; j < num_penalties; j += kThreads) {
      const meta::PenaltyToken e = penalties[j];
      f(order_key(rules.apply(__ldg(row + e.token), e.output_count)), e.token);
    }
  }
};

// Candidates listed in shared memory, in no particular order (nothing that reads them depends
// on it).
struct ListSource {
  const uint32_t* keys = nullptr;
  const int32_t* ids = nullptr;
  int32_t size = 0;

  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
    for (int32_t i = threadIdx.x; i < size; i += kThreads) f(keys[i], ids[i]);
  }
};

// Fixed-point weights of a sampled row: temperature T, most likely (penalised) logit l_max.
struct Weigher {
  float max_logit = 0.0f;
  float inv_temperature = 1.0f;

  // exp((l - l_max) / T) in (0, 1]: the probability relative to the most likely token's, a
  // function of the key (tied tokens weigh the same). __expf (ex2.approx, relative error
  // ~2^-21 near the top of the distribution) rather than expf: one pass evaluates it per token,
  // and one SM's instruction rate, not memory, bounds a CTA's pass over a row.
  __device__ __forceinline__ float relative_prob(uint32_t key) const {
    return __expf(__fmul_rn(__fsub_rn(key_value(key), max_logit), inv_temperature));
  }
  __device__ __forceinline__ static uint64_t weight_of(float p) {
    return p >= kMinRelativeProb ? uint64_t(__fmul_rn(p, kWeightScale)) : 0;
  }
  __device__ __forceinline__ uint64_t weight(uint32_t key) const {
    return weight_of(relative_prob(key));
  }
};

// ---- Block reductions (fixed order: the same result on every run).

template <class Op>
__device__ __forceinline__ uint64_t block_reduce(uint64_t v, Op op, SamplingShared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  __syncthreads();  // sh.reduce may still be read by a previous call
  if (threadIdx.x % 32 == 0) sh.reduce[threadIdx.x / 32] = v;
  __syncthreads();
  uint64_t r = sh.reduce[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, sh.reduce[w]);
  return r;
}

// Online log-sum-exp: sum of exp(x - max) over the values seen. max starts at -FLT_MAX, not
// -inf, so that -inf values add exp(-inf) = 0 with no special case (and a row of them gets
// sum 0: lse -inf). __expf: its error grows with |x - max|, where the terms are small, and
// the log-sum-exp stays within 1e-6 of the double one.
struct LogSumExp {
  float max = -FLT_MAX;
  float sum = 0.0f;

  __device__ __forceinline__ void add(float x) {
    if (x > max) {
      sum = __fadd_rn(__fmul_rn(sum, __expf(max - x)), 1.0f);
      max = x;
    } else {
      sum = __fadd_rn(sum, __expf(x - max));
    }
  }
  // Commutative bit for bit (no contraction), so both lanes of a butterfly agree.
  __device__ __forceinline__ static LogSumExp merge(LogSumExp a, LogSumExp b) {
    const float m = fmaxf(a.max, b.max);
    return {m, __fadd_rn(__fmul_rn(a.sum, __expf(a.max - m)), __fmul_rn(b.sum, __expf(b.max - m)))};
  }
};

__device__ __forceinline__ float block_log_sum_exp(LogSumExp v, SamplingShared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    LogSumExp other;
    other.max = __shfl_xor_sync(kFullMask, v.max, o);
    other.sum = __shfl_xor_sync(kFullMask, v.sum, o);
    v = LogSumExp::merge(v, other);
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    sh.lse_max[threadIdx.x / 32] = v.max;
    sh.lse_sum[threadIdx.x / 32] = v.sum;
  }
  __syncthreads();
  LogSumExp r{sh.lse_max[0], sh.lse_sum[0]};
  for (int w = 1; w < kWarps; ++w) r = LogSumExp::merge(r, {sh.lse_max[w], sh.lse_sum[w]});
  return r.max + logf(r.sum);
}

// ---- Radix descents.

// Warp inclusive prefix sum (lane 0 first).
__device__ __forceinline__ uint64_t warp_inclusive_sum(uint64_t v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t up = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += up;
  }
  return v;
}

// Warp 0: the bin, digits scanned from the largest down, holding unit `need` (1-based) of the
// level's values; need_of(total) gives it from the level's total and must lie in [1, total].
// Writes sh.choice (min_id is the caller's). Each lane sums a run of 64 bins (reading them in
// a lane-skewed order, free of bank conflicts), the warp scans the sums, then walks the run
// that holds the unit 32 bins at a time.
template <class Value, class Need>
__device__ __forceinline__ void choose_bin(Value value, Need need_of, BinChoice& out) {
  constexpr int kPerLane = kBins / 32;
  const int lane = threadIdx.x;
  const int top = kBins - 1 - lane * kPerLane;  // this lane's run: bins top, top - 1, ...
  uint64_t sum = 0;
#pragma unroll 4
  for (int p = 0; p < kPerLane; ++p) sum += value(top - ((p + lane) & (kPerLane - 1)));
  const uint64_t inclusive = warp_inclusive_sum(sum);
  const uint64_t need = need_of(__shfl_sync(kFullMask, inclusive, 31));
  const unsigned holds = __ballot_sync(kFullMask, inclusive - sum < need && need <= inclusive);
  const int owner = __ffs(int(holds)) - 1;  // exactly one lane: runs partition [1, total]
  uint64_t before = __shfl_sync(kFullMask, inclusive - sum, owner);
  const int run_top = kBins - 1 - owner * kPerLane;
#pragma unroll 1
  for (int part = 0; part < kPerLane / 32; ++part) {
    const int b = run_top - part * 32 - lane;
    const uint64_t v = value(b);
    const uint64_t in = before + warp_inclusive_sum(v);
    const bool here = in - v < need && need <= in;
    if (here) {
      out.digit = uint32_t(b);
      out.before = in - v;
      out.bin = v;
      out.need = need;
    }
    if (__ballot_sync(kFullMask, here)) break;
    before = __shfl_sync(kFullMask, in, 31);
  }
}

// The first descent level not fixed by lo <= key <= hi (all such keys share lo's digits above
// it). The last level always runs: it yields the tie group's weight and lowest id.
__device__ __forceinline__ int first_free_level(uint32_t lo, uint32_t hi) {
  const uint32_t diff = lo ^ hi;
  if (diff == 0) return kLevels - 1;
  const int top_bit = 31 - __clz(int(diff));
  return top_bit >= 21 ? 0 : top_bit >= 10 ? 1 : 2;
}

struct Kth {
  uint32_t key = 0;     // the k-th largest digit key
  uint32_t num_ge = 0;  // elements of the set whose digit key is >= it
};

// The k-th largest digit key dkey(key, id) among the elements of `src` in the set (in_set),
// 1 <= k <= their number; every such digit key lies in [lo, hi].
template <class Source, class InSet, class DigitKey>
__device__ Kth select_kth(const Source& src, InSet in_set, DigitKey dkey, uint32_t lo, uint32_t hi,
                          uint32_t k, SamplingShared& sh) {
  const int first = first_free_level(lo, hi);
  uint32_t prefix = lo & bits_above(first);
  uint64_t need = k, above = 0, last_bin = 0;
  for (int level = first; level < kLevels; ++level) {
    const uint32_t fixed = bits_above(level);
    for (int b = threadIdx.x; b < kBins; b += kThreads) sh.bins[b] = 0;
    __syncthreads();
    src.for_each([&](uint32_t key, int32_t id) {
      if (!in_set(key, id)) return;
      const uint32_t d = dkey(key, id);
      if ((d ^ prefix) & fixed) return;
      atomicAdd(&sh.bins[digit_of(d, level)], 1u);
    });
    __syncthreads();
    if (threadIdx.x < 32)
      choose_bin([&](int b) { return uint64_t(sh.bins[b]); }, [&](uint64_t) { return need; },
                 sh.choice);
    __syncthreads();
    const BinChoice c = sh.choice;
    prefix |= c.digit << digit_shift(level);
    need -= c.before;
    above += c.before;
    last_bin = c.bin;
  }
  return {prefix, uint32_t(above + last_bin)};
}

// bins/bins_hi[b] += w, a 64-bit sum kept as two 32-bit words: an add that carries out of the
// low word sees it in the old value atomicAdd returns. 32-bit shared atomics are single
// instructions; a 64-bit add may become a compare-and-swap loop, which hot bins serialise.
__device__ __forceinline__ void add_weight(SamplingShared& sh, uint32_t b, uint64_t w) {
  const uint32_t low = uint32_t(w), high = uint32_t(w >> 32);
  const uint32_t old = atomicAdd(&sh.bins[b], low);
  const uint32_t carried = high + (old + low < old ? 1u : 0u);
  if (carried) atomicAdd(&sh.bins_hi[b], carried);
}

struct Cut {
  uint32_t key = 0;
  int32_t id = 0;
};

// Over the elements of `src` in the set, most likely first (key descending, id ascending):
// the element at which the cumulative weight first reaches need_of(total weight of the set),
// need_of in [1, total]. Every key of the set lies in [lo, hi]; ids lie in [0, vocab).
template <class Source, class InSet, class Need>
__device__ Cut mass_cut(const Source& src, InSet in_set, const Weigher& wt, uint32_t lo,
                        uint32_t hi, Need need_of, int32_t vocab, SamplingShared& sh) {
  const int first = first_free_level(lo, hi);
  uint32_t prefix = lo & bits_above(first);
  uint64_t need = 0;
  for (int level = first; level < kLevels; ++level) {
    const uint32_t fixed = bits_above(level);
    const bool last = level == kLevels - 1;
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      sh.bins[b] = 0;
      sh.bins_hi[b] = 0;
      sh.min_id[b] = 0xffffffffu;
    }
    __syncthreads();
    src.for_each([&](uint32_t key, int32_t id) {
      if (!in_set(key, id) || ((key ^ prefix) & fixed)) return;
      const uint64_t w = wt.weight(key);
      if (w == 0) return;
      const uint32_t b = digit_of(key, level);
      add_weight(sh, b, w);
      if (last) atomicMin(&sh.min_id[b], uint32_t(id));
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      choose_bin([&](int b) { return (uint64_t(sh.bins_hi[b]) << 32) | sh.bins[b]; },
                 [&](uint64_t total) { return level == first ? need_of(total) : need; }, sh.choice);
      __syncwarp();
      if (last && threadIdx.x == 0) sh.choice.min_id = sh.min_id[sh.choice.digit];
    }
    __syncthreads();
    const BinChoice c = sh.choice;
    prefix |= c.digit << digit_shift(level);
    need = c.need - c.before;
  }
  // Every element of key `prefix` weighs the same w > 0 (the bin holds the target), so the cut
  // is the j-th of them by ascending id, j = ceil(need / w) <= their number.
  const uint64_t w = wt.weight(prefix);
  const uint64_t j = (need + w - 1) / w;
  if (j == 1) return {prefix, int32_t(sh.choice.min_id)};
  const Kth t = select_kth(
      src, [&](uint32_t key, int32_t id) { return key == prefix && in_set(key, id); },
      [](uint32_t, int32_t id) { return kIdFlip - uint32_t(id); }, kIdFlip - uint32_t(vocab - 1),
      kIdFlip, uint32_t(j), sh);
  return {prefix, int32_t(kIdFlip - t.key)};
}

// ---- Sampling a row.

// Per thread: keepers counted past a full list, and whether this thread has seen it full.
struct Overflow {
  uint32_t count = 0;
  bool full = false;
};

// Appends (key, id) to the list when `keep`; a warp's keepers take their slots with one atomic.
// Once a thread has seen the list full it only counts its keepers: a flat row keeps every token,
// and the warp votes and the atomic on one counter would otherwise cost every element.
__device__ __forceinline__ void append_if(bool keep, uint32_t key, int32_t id, uint32_t* keys,
                                          int32_t* ids, uint32_t capacity, Overflow& overflow,
                                          SamplingShared& sh) {
  constexpr uint32_t kFull = 0xffffffffu;
  if (overflow.full) {
    overflow.count += keep ? 1u : 0u;
    return;
  }
  const unsigned active = __activemask();
  const unsigned keepers = __ballot_sync(active, keep);
  if (keepers == 0) return;
  const int lane = threadIdx.x % 32;
  const int leader = __ffs(int(keepers)) - 1;
  uint32_t base = kFull;
  // A stale read only sends the leader to the atomic, whose slots then fall past capacity.
  if (lane == leader && *static_cast<volatile uint32_t*>(&sh.num_listed) < capacity)
    base = atomicAdd(&sh.num_listed, uint32_t(__popc(int(keepers))));
  base = __shfl_sync(active, base, leader);
  if (base == kFull) {
    overflow.full = true;
    overflow.count += keep ? 1u : 0u;
    return;
  }
  if (!keep) return;
  const uint32_t slot = base + uint32_t(__popc(int(keepers & ((1u << lane) - 1u))));
  if (slot < capacity) {
    keys[slot] = key;
    ids[slot] = id;
  }
}

struct List {
  uint32_t* keys = nullptr;
  int32_t* ids = nullptr;
  uint32_t capacity = 0;
};

// Lists the elements of `src` for which keep(key, id) holds; returns how many there are (the
// list holds them all only if that is <= list.capacity).
template <class Source, class Keep>
__device__ uint32_t compact(const Source& src, Keep keep, const List& list, SamplingShared& sh) {
  __syncthreads();  // the previous count has been read
  if (threadIdx.x == 0) sh.num_listed = 0;
  __syncthreads();
  Overflow overflow;
  src.for_each([&](uint32_t key, int32_t id) {
    append_if(keep(key, id), key, id, list.keys, list.ids, list.capacity, overflow, sh);
  });
  __syncthreads();  // the list and sh.num_listed are complete
  return uint32_t(block_reduce(overflow.count, SumOp{}, sh)) + sh.num_listed;
}

// What the descents need of a sampled row besides its source.
struct RowCuts {
  Weigher wt;
  uint32_t max_key = 0;    // the most likely token's key
  uint32_t min_p_lo = 0;   // the lowest key that min-p keeps
  int32_t vocab = 0;
};

// Top-p over the tokens of key >= lo (the top-k set), then min-p, then the draw.
template <class Source>
__device__ int32_t top_p_min_p_draw(const Source& src, const SamplingRow& row, const RowCuts& rc,
                                    uint32_t lo, SamplingShared& sh) {
  // Without top-p every key of the set is > 0 (key 0 is NaN, which weighs nothing), so this
  // cut lets all of it through.
  uint32_t cut_key = 0;
  int32_t cut_id = INT_MAX;
  if (row.top_p < 1.0f) {
    const double top_p = row.top_p;
    // The shortest prefix whose mass reaches top_p of the set's (at least one token).
    const Cut c = mass_cut(
        src, [=](uint32_t key, int32_t) { return key >= lo; }, rc.wt, lo, rc.max_key,
        [=](uint64_t total) {
          const double t = ceil(top_p * double(total));
          return t <= 1.0 ? uint64_t(1) : min_u64(uint64_t(t), total);
        },
        rc.vocab, sh);
    cut_key = c.key;
    cut_id = c.id;
  }
  const uint32_t draw_lo = max_u32(lo, rc.min_p_lo);
  const double uniform = row.uniform;
  // The token at which the cumulative mass first exceeds uniform x the kept mass.
  const Cut d = mass_cut(
      src,
      [=](uint32_t key, int32_t id) {
        return key >= draw_lo && (key > cut_key || (key == cut_key && id <= cut_id));
      },
      rc.wt, draw_lo, rc.max_key,
      [=](uint64_t total) {
        const double x = floor(uniform * double(total));
        return (x > 0.0 ? min_u64(uint64_t(x), total - 1) : uint64_t(0)) + 1;
      },
      rc.vocab, sh);
  return d.id;
}

// Top-k over the listed candidates (all of them have key >= lo), then the rest.
__device__ int32_t sample_listed(const ListSource& list, const SamplingRow& row, const RowCuts& rc,
                                 uint32_t lo, SamplingShared& sh) {
  const uint32_t n = uint32_t(list.size);
  if (row.top_k > 0 && uint32_t(row.top_k) < n) {
    lo = select_kth(
             list, [](uint32_t, int32_t) { return true; },
             [](uint32_t key, int32_t) { return key; }, lo, rc.max_key, uint32_t(row.top_k), sh)
             .key;
  }
  return top_p_min_p_draw(list, row, rc, lo, sh);
}

// Temperature > 0: the drawn token, or kSamplingNoFiniteLogit.
__device__ int32_t sample_row(const RowSource& rs, const SamplingRow& row, uint32_t max_key,
                              const List& list, SamplingShared& sh) {
  RowCuts rc;
  rc.wt = Weigher{key_value(max_key), __frcp_rn(row.temperature)};
  rc.max_key = max_key;
  rc.vocab = rs.vocab;
  // The candidates are the tokens of nonzero weight: keys [lo, max_key]. A token that weighs
  // nothing cannot be drawn, and top-k over the candidates keeps the same ones as over the
  // vocabulary (its k-th is a candidate, or every candidate is kept).
  uint32_t lo = ~0u, min_p_lo = ~0u;
  const float min_p = row.min_p;
  const Weigher wt = rc.wt;
  const uint32_t num_candidates = compact(
      rs,
      [&](uint32_t key, int32_t) {
        const float p = wt.relative_prob(key);
        if (Weigher::weight_of(p) == 0) return false;
        lo = min_u32(lo, key);
        if (p >= min_p) min_p_lo = min_u32(min_p_lo, key);
        return true;
      },
      list, sh);
  if (num_candidates == 0) return kSamplingNoFiniteLogit;  // uniform across the block
  lo = uint32_t(block_reduce(lo, MinOp{}, sh));
  // min-p always keeps the most likely token (relative probability 1; min_p > 1 keeps it alone).
  rc.min_p_lo = min_u32(uint32_t(block_reduce(min_p_lo, MinOp{}, sh)), max_key);
  if (num_candidates <= list.capacity)
    return sample_listed(ListSource{list.keys, list.ids, int32_t(num_candidates)}, row, rc, lo,
                         sh);

  // Too many candidates to list: top-k from the row, then list what it keeps if that fits.
  if (row.top_k > 0 && uint32_t(row.top_k) < num_candidates) {
    const Kth kth = select_kth(
        rs, [=](uint32_t key, int32_t) { return key >= lo; },
        [](uint32_t key, int32_t) { return key; }, lo, max_key, uint32_t(row.top_k), sh);
    lo = kth.key;
    if (kth.num_ge <= list.capacity) {
      const uint32_t n = compact(rs, [=](uint32_t key, int32_t) { return key >= lo; }, list, sh);
      return top_p_min_p_draw(ListSource{list.keys, list.ids, int32_t(n)}, row, rc, lo, sh);
    }
  }
  return top_p_min_p_draw(rs, row, rc, lo, sh);
}

// The n largest raw logits (ties to the lower id) as (id, logprob); returns how many (n, or
// the vocabulary when smaller). Written by thread 0 to out[0, found).
__device__ int32_t top_logprobs(const float* row, int32_t vocab, int32_t n, float lse,
                                meta::TokenLogprob* out, SamplingShared& sh) {
  // Each thread's n best, sorted; it meets its ids in ascending order, so a tie never enters.
  uint32_t keys[kMaxTopLogprobs] = {};
  int32_t ids[kMaxTopLogprobs] = {};
  int32_t count = 0;
  for_each_value(row, vocab, [&](float x, int32_t id) {
    const uint32_t key = order_key(x);
    if (count == n && key <= keys[n - 1]) return;
    int32_t p = count < n ? count++ : n - 1;
    while (p > 0 && keys[p - 1] < key) {
      keys[p] = keys[p - 1];
      ids[p] = ids[p - 1];
      --p;
    }
    keys[p] = key;
    ids[p] = id;
  });
  int32_t head = 0, found = 0;
  for (; found < n; ++found) {
    const uint64_t mine = head < count ? pack_best(keys[head], ids[head]) : 0;
    const uint64_t best = block_reduce(mine, MaxOp{}, sh);
    if (best == 0) break;  // every list is spent: n > vocab
    if (mine == best) ++head;  // ids are distinct: one thread owns the winner
    if (threadIdx.x == 0)
      out[found] =
          meta::TokenLogprob{packed_id(best), __fsub_rn(key_value(packed_key(best)), lse)};
  }
  return found;
}

__device__ void write_row(const SamplingArgs& a, int32_t r, int32_t token, float logprob,
                          int32_t num_top_found) {
  a.tokens[r] = token;
  a.logprobs[r] = logprob;
  for (int32_t j = num_top_found; j < a.top_n; ++j)
    a.top_logprobs[int64_t(r) * a.top_n + j] = meta::TokenLogprob{-1, 0.0f};
}

__global__ void __launch_bounds__(kThreads, 1) sampling_kernel(const SamplingArgs a) {
  extern __shared__ __align__(16) uint32_t dynamic_smem[];
  __shared__ SamplingShared sh;
  const int32_t r = int32_t(blockIdx.x);
  const SamplingRow row = a.rows[r];
  if (row.return_logits) {
    if (threadIdx.x == 0) write_row(a, r, kSamplingReturnedLogits, 0.0f, 0);
    return;
  }
  const int32_t vocab = int32_t(a.vocab);
  const float* logits = a.logits + int64_t(r) * a.vocab;
  // Dynamic shared memory: [capacity] list keys, [capacity] list ids, the penalty bitmap.
  const uint32_t capacity = a.any_sampled ? uint32_t(kSamplingListCapacity) : 0u;
  const List list{dynamic_smem, reinterpret_cast<int32_t*>(dynamic_smem + capacity), capacity};
  uint32_t* bitmap = dynamic_smem + 2 * capacity;

  RowSource rs;
  rs.row = logits;
  rs.vocab = vocab;
  rs.penalties = a.penalties + row.penalties_begin;
  rs.num_penalties = row.penalties_end - row.penalties_begin;
  rs.rules = Penalties{row.repetition_penalty, row.frequency_penalty, row.presence_penalty};
  if (threadIdx.x == 0) sh.error = 0;
  if (rs.num_penalties > 0) {
    for (int32_t w = threadIdx.x; w < (vocab + 31) / 32; w += kThreads) bitmap[w] = 0;
    __syncthreads();
    for (int32_t j = threadIdx.x; j < rs.num_penalties; j += kThreads) {
      const int32_t t = rs.penalties[j].token;
      const uint32_t bit = 1u << (t & 31);
      if (atomicOr(&bitmap[t >> 5], bit) & bit) sh.error = kSamplingDuplicatePenalty;
    }
    rs.penalised = bitmap;
  }
  __syncthreads();

  // One pass over the raw row: its log-sum-exp, and the most likely penalised token. A thread
  // meets its ids in ascending order, so a strict > keeps its lowest id among equal values, as
  // backend::cpu::argmax does (and never takes a NaN or a -inf). No token above -inf: best 0.
  LogSumExp lse_part;
  float best_value = -INFINITY;
  int32_t best_id = -1;
  for_each_value(logits, vocab, [&](float x, int32_t id) {
    lse_part.add(x);
    if (rs.penalised && ((rs.penalised[id >> 5] >> (id & 31)) & 1u)) return;
    if (x > best_value) {
      best_value = x;
      best_id = id;
    }
  });
  uint64_t best = best_id < 0 ? 0 : pack_best(order_key(best_value), best_id);
  for (int32_t j = threadIdx.x; j < rs.num_penalties; j += kThreads) {
    const meta::PenaltyToken e = rs.penalties[j];
    const float penalised = rs.rules.apply(__ldg(logits + e.token), e.output_count);
    if (penalised > -INFINITY) best = max_u64(best, pack_best(order_key(penalised), e.token));
  }
  const float lse = block_log_sum_exp(lse_part, sh);
  best = block_reduce(best, MaxOp{}, sh);
  if (sh.error != 0) {
    if (threadIdx.x == 0) write_row(a, r, sh.error, 0.0f, 0);
    return;
  }

  // A row with nothing above -inf: the CPU's argmax takes id 0; sampling finds no candidate.
  int32_t token = best == 0 ? 0 : packed_id(best);
  if (row.temperature > 0.0f) token = sample_row(rs, row, packed_key(best), list, sh);
  if (token < 0) {
    if (threadIdx.x == 0) write_row(a, r, token, 0.0f, 0);
    return;
  }
  const float logprob = __fsub_rn(__ldg(logits + token), lse);
  int32_t found = 0;
  if (row.num_top_logprobs > 0)
    found = top_logprobs(logits, vocab, min(row.num_top_logprobs, a.top_n), lse,
                         a.top_logprobs + int64_t(r) * a.top_n, sh);
  if (threadIdx.x == 0) write_row(a, r, token, logprob, found);
}

}  // namespace

void launch_sampling(const SamplingArgs& a, cudaStream_t stream) {
  if (a.num_rows == 0) return;
  if (a.vocab <= 0 || a.vocab > kMaxSamplingVocab)
    throw InvalidArgument(cat("sampling: vocabulary of ", a.vocab, " outside [1, ",
                              kMaxSamplingVocab, "] (the GPU sampler's limit)"));
  if (a.top_n < 0 || a.top_n > kMaxTopLogprobs)
    throw InvalidArgument(cat("sampling: ", a.top_n,
                              " top logprobs asked; the GPU sampler returns at most ",
                              kMaxTopLogprobs));
  // The shared-memory allowance, per device (a rank of tensor parallelism may sample too).
  resident_ctas_per_sm(reinterpret_cast<const void*>(sampling_kernel), kThreads, kListBytes + kMaxBitmapBytes,
                       "sampling: the sampling kernel");
  const size_t smem = (a.any_sampled ? kListBytes : 0) +
                      (a.any_penalties ? size_t((a.vocab + 31) / 32) * sizeof(uint32_t) : 0);
  sampling_kernel<<<a.num_rows, kThreads, smem, stream>>>(a);
  XY_CUDA_CHECK_LAUNCH();
}

}  // namespace xy::cuda
