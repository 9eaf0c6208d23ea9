// Attention over the meta work list on the device: the Hopper wgmma kernel
// (meta_attention_wgmma.cu, lists of 128-row tiles), the tensor-core kernel (meta_attention.cu)
// and the first CUDA-core kernel (attention.cu), each followed by the split merge, on
// Llama-3-8B heads (32 query, 8 KV, head_dim 128) over paged bf16 KV (--block-size, 16 by default: pages dealt
// from a shuffled pool). Prints one line per (case, kernel): time, TFLOP/s (4 * head_dim *
// query heads * visible (query, key) pairs; a causal prefill of L counts L^2 / 2 pairs) and,
// for decode and the hybrid mixes, TB/s of KV read (K and V of every context token, once per KV
// head). The PyTorch SDPA baselines are tools/attention_baseline.py, run beside it in the same
// device command.
//   attention_bench [--iters N] [--only SUBSTRING] [--block-size N (KV page size, 16)]
// Prefill and hybrid cases run twice: with the backend's first split rule (512 positions, halved
// while the step has fewer tasks than SMs) and with split 8192 (no split at these lengths, as the
// backend's current rule gives them), to show what splitting costs. Kernel column:
//   wgmma         one eager launch: CTAs take tasks from a device counter, largest first (greedy)
//   wgmma-rr      one graph-style launch (task count on the device): tasks dealt to the CTAs in a
//                 symmetric round-robin (XY-Serve's deal), fixed before the launch
//   wgmma-2x      two eager launches, the prefill tasks then the decode tasks (what one launch buys)
// The "mix" cases sweep the step from all decode (256 decodes at 2k) to all prefill (8 chunks of
// 1024 on 1024 cached): "pN" takes N% of the 8 chunks and (100 - N)% of the 256 decodes, each
// pure step about 0.4-0.5 ms at cuDNN's rates, so p50 is the issue's hybrid step.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_plan.h"
#include "xyserve/backend/cuda/decode_split.h"
#include "xyserve/backend/cuda/kernels/kernels.h"

namespace {

using xy::cuda::AttentionArgs;
using xy::cuda::AttentionKernel;
using xy::cuda::bf16;
using xy::cuda::DeviceBuffer;

constexpr int32_t kHeads = 32, kKvHeads = 8, kHeadDim = 128;
int32_t g_block_size = 16;  // KV page size: --block-size

// Uniform bf16 in [-1, 1) from a hash of the index: no host upload of gigabytes.
__global__ void fill_random(bf16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed ^ uint32_t(i >> 32) * 40503u;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    p[i] = __float2bfloat16(float(x >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

struct Seq {
  int32_t computed = 0;  // tokens already in the cache
  int32_t fresh = 0;     // query tokens this step
};
struct Case {
  std::string name;
  std::vector<Seq> seqs;
  bool report_kv = false;     // report TB/s of KV read (decode, mixes)
  double causal_pairs = -1;   // pairs to count for TFLOP/s; < 0: the exact visible pairs
  bool mixed = false;         // also run the wgmma deal variants (round-robin, two launches)
};

namespace meta = xy::meta;

meta::StepPlan make_plan(const std::vector<Seq>& seqs, std::mt19937& rng, int32_t& num_blocks) {
  meta::StepPlan plan;
  plan.block_size = g_block_size;
  num_blocks = 0;
  for (const Seq& s : seqs) num_blocks += (s.computed + s.fresh + g_block_size - 1) / g_block_size;
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  size_t next = 0;
  for (size_t r = 0; r < seqs.size(); ++r) {
    meta::ScheduledRequest req;
    req.request_id = int64_t(r);
    req.num_computed_tokens = seqs[r].computed;
    req.num_new_tokens = seqs[r].fresh;
    req.first_row = plan.num_rows();
    req.num_logits_rows = 1;
    for (int32_t j = 0; j < seqs[r].fresh; ++j) {
      plan.positions.push_back(seqs[r].computed + j);
      plan.token_ids.push_back(0);
    }
    const int32_t need = (seqs[r].computed + seqs[r].fresh + g_block_size - 1) / g_block_size;
    for (int32_t b = 0; b < need; ++b) req.block_table.push_back(pool[next++]);
    plan.requests.push_back(req);
  }
  return plan;
}

// The backend's first split rule, kept so that lines compare across runs, for tiles of
// `tile_rows`: 512 positions, halved down to 64 while the step has fewer tasks than SMs. (The
// backend now starts at 16k positions, cuda_backend.cu plan_attention: the split-8192 lines.)
int32_t choose_split(const std::vector<Seq>& seqs, int num_sms, int32_t tile_rows) {
  const int32_t tile_tokens = tile_rows / (kHeads / kKvHeads);
  int32_t split = 512;
  while (split > 64) {
    int64_t tasks = 0;
    for (const Seq& s : seqs)
      tasks += int64_t((s.fresh + tile_tokens - 1) / tile_tokens) * ((s.computed + s.fresh + split - 1) / split);
    if (tasks * kKvHeads >= num_sms) break;
    split /= 2;
  }
  return split;
}

// One kernel line of a case: which kernel, the work list's tile rows, and how it is launched.
enum class Deal { kEager, kGraph, kTwoLaunches };
struct Variant {
  const char* name;
  AttentionKernel kernel;
  int32_t tile_rows;
  Deal deal = Deal::kEager;
  bool l2_sections = true;  // the backend's L2 sections (meta::WorkListOptions); false: sorted by cost only
  bool interleave = false;  // meta::WorkListOptions::interleave_small_tiles
  bool merge = true;        // false: the partials are not merged (times the attention launch alone)
};

// The tasks of `list` whose request is (decode) or is not (prefill) a single new token; partial
// slots keep their numbers, so the full list's merges fold them.
meta::AttentionWorkList tasks_of_kind(const meta::AttentionWorkList& list, const meta::StepPlan& plan, bool decode) {
  meta::AttentionWorkList part;
  part.num_partials = list.num_partials;
  part.max_tile_tokens = list.max_tile_tokens;
  for (const meta::AttentionTask& t : list.tasks)
    if ((plan.requests[size_t(t.request)].num_new_tokens == 1) == decode) part.tasks.push_back(t);
  return part;
}

#if XY_ATTENTION_TIMELINE
// Where consumer 0's time goes, from the wgmma kernel's timeline (kernels.h): per task, the wait
// for the task to be published (from the end of the previous one), for its query tile, for its
// first K block, then its blocks, then the write-out; means in us at the device's clock, and
// shares of the consumer's time from its first task to its last.
void print_timeline(const std::vector<long long>& v) {
  namespace x = xy::cuda;
  int khz = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  const double us_per_cycle = 1e3 / double(khz);
  for (const int max_blocks : {1 << 30, 2}) {
    double phase[7] = {}, blocks = 0, span = 0;
    int64_t staged_tasks = 0;  // tasks whose rows were written out (not partials): phases 5 and 6
    int64_t tasks = 0;
    for (int cta = 0; cta < x::kTimelineCtas; ++cta) {
      const long long* row = v.data() + size_t(cta) * x::kTimelineTasks * x::kTimelineFields;
      long long prev_end = -1, first = -1, last = -1;
      for (int t = 0; t < x::kTimelineTasks; ++t) {
        const long long* e = row + size_t(t) * x::kTimelineFields;
        if (e[x::kTaskIndex] < 0) break;
        if (first < 0) first = e[x::kTaskIn];
        last = e[x::kWrittenOut];
        const bool counted = e[x::kNumBlocks] <= max_blocks && e[x::kNumBlocks] > 0;
        if (counted) {
          phase[0] += prev_end >= 0 ? double(e[x::kTaskIn] - prev_end) : 0.0;
          phase[1] += double(e[x::kQueryIn] - e[x::kTaskIn]);
          phase[2] += double(e[x::kFirstKeysIn] - e[x::kQueryIn]);
          phase[3] += double(e[x::kBlocksDone] - e[x::kFirstKeysIn]);
          phase[4] += double(e[x::kWrittenOut] - e[x::kBlocksDone]);
          if (e[x::kStaged] > 0) {  // rows written out (not a partial): its three parts
            phase[5] += double(e[x::kStaged] - e[x::kBlocksDone]);
            phase[6] += double(e[x::kReleased] - e[x::kStaged]);
            ++staged_tasks;
          }
          blocks += double(e[x::kNumBlocks]);
          ++tasks;
        }
        prev_end = e[x::kWrittenOut];
      }
      if (first >= 0 && max_blocks > 1000) span += double(last - first);
    }
    if (tasks == 0) continue;
    const double total = phase[0] + phase[1] + phase[2] + phase[3] + phase[4];
    std::printf("    timeline %-10s tasks %6lld, blocks/task %5.2f, us/task: wait task %.3f, wait Q %.3f, wait first K "
                "%.3f, blocks %.3f (%.3f a block), write-out %.3f; shares %.0f/%.0f/%.0f/%.0f/%.0f%%",
                max_blocks > 1000 ? "all" : "<=2 blocks", (long long)tasks, blocks / tasks,
                phase[0] / tasks * us_per_cycle, phase[1] / tasks * us_per_cycle, phase[2] / tasks * us_per_cycle,
                phase[3] / tasks * us_per_cycle, phase[3] / blocks * us_per_cycle, phase[4] / tasks * us_per_cycle,
                100 * phase[0] / total, 100 * phase[1] / total, 100 * phase[2] / total, 100 * phase[3] / total,
                100 * phase[4] / total);
    if (max_blocks > 1000) std::printf(", consumer span %.1f us a CTA", span / x::kTimelineCtas * us_per_cycle);
    if (staged_tasks > 0)
      std::printf(", rows' write-out = stage %.3f + fence/release %.3f + rest", phase[5] / staged_tasks * us_per_cycle,
                  phase[6] / staged_tasks * us_per_cycle);
    std::printf("\n");
  }
}
#endif

// split > 0 overrides the backend's rule (to measure what the split costs a long prefill).
void run_case(const Case& c, int iters, int num_sms, int l2_bytes, int32_t split_override,
              const std::vector<Variant>& variants) {
  std::mt19937 rng(1);
  int32_t num_blocks = 0;
  const meta::StepPlan plan = make_plan(c.seqs, rng, num_blocks);
  const int32_t m = plan.num_rows();
  const size_t kv_elems = size_t(num_blocks) * g_block_size * kKvHeads * kHeadDim;
  DeviceBuffer<bf16> q(size_t(m) * kHeads * kHeadDim), k(kv_elems), v(kv_elems), out(q.size());
  fill_random<<<1024, 256>>>(q.get(), q.size(), 1);
  fill_random<<<1024, 256>>>(k.get(), k.size(), 2);
  fill_random<<<1024, 256>>>(v.get(), v.size(), 3);
  XY_CUDA_CHECK_LAUNCH();

  double pairs = 0, kv_tokens = 0;
  for (const Seq& s : c.seqs) {
    kv_tokens += s.computed + s.fresh;
    for (int32_t j = 0; j < s.fresh; ++j) pairs += s.computed + j + 1;
  }
  if (c.causal_pairs >= 0) pairs = c.causal_pairs;
  const double flops = 4.0 * kHeadDim * kHeads * pairs;
  const double kv_bytes = kv_tokens * kKvHeads * kHeadDim * 2 * 2;

  cudaEvent_t e0, e1;
  XY_CUDA_CHECK(cudaEventCreate(&e0));
  XY_CUDA_CHECK(cudaEventCreate(&e1));
  DeviceBuffer<int32_t> task_count(1);
  for (const Variant& var : variants) {
    // The decode kernel's lists: its own split rule (decode_split.h) unless overridden.
    const int32_t split =
        split_override > 0           ? split_override
        : var.kernel == AttentionKernel::kDecode
            ? xy::cuda::decode_kv_split(plan, var.tile_rows / (kHeads / kKvHeads), {kKvHeads, g_block_size, 0, num_sms})
            : choose_split(c.seqs, num_sms, var.tile_rows);
    meta::WorkListOptions options{var.tile_rows, split};
    if (var.l2_sections && var.kernel != AttentionKernel::kDecode)
      options.l2_section_positions = xy::cuda::attention_l2_section_positions(l2_bytes, kHeadDim);
    options.interleave_small_tiles = var.interleave;
    const meta::AttentionWorkList list = meta::build_attention_work_list(plan, {kHeads, kKvHeads, 0}, options);
    // Uploaded: the list, then (two launches) its prefill and its decode tasks.
    xy::cuda::WorkLists lists{{0, list}};
    if (var.deal == Deal::kTwoLaunches) {
      lists.push_back({0, tasks_of_kind(list, plan, false)});
      lists.push_back({0, tasks_of_kind(list, plan, true)});
    }
    xy::cuda::DevicePlan dplan;
    const xy::cuda::DevicePlanView& view = dplan.upload(plan, lists, nullptr);
    const size_t np = size_t(std::max(list.num_partials, 1));
    DeviceBuffer<float> po(np * size_t(var.tile_rows) * kHeadDim), ps(np * size_t(var.tile_rows) * 2);
    const int32_t num_tasks = int32_t(list.tasks.size());
    XY_CUDA_CHECK(cudaMemcpy(task_count.get(), &num_tasks, sizeof(num_tasks), cudaMemcpyHostToDevice));

    AttentionArgs aa;
    aa.q = q.get();
    aa.q_row_stride = kHeads * kHeadDim;
    aa.num_q_rows = m;
    aa.k_cache = k.get();
    aa.v_cache = v.get();
    aa.block_size = g_block_size;
    aa.num_kv_heads = kKvHeads;
    aa.head_dim = kHeadDim;
    aa.group = kHeads / kKvHeads;
    aa.scale = float(1.0 / std::sqrt(double(kHeadDim)));
    xy::cuda::bind_attention_plan(aa, view, view.attention[0]);
    if (var.deal == Deal::kGraph) aa.task_count = task_count.get();
    aa.out = out.get();
    aa.partial_rows = var.tile_rows;
    aa.partial_out = po.get();
    aa.partial_max = ps.get();
    aa.partial_sum = ps.get() + np * size_t(var.tile_rows);

    auto once = [&] {
      if (var.deal == Deal::kTwoLaunches) {
        for (size_t part = 1; part <= 2; ++part) {
          AttentionArgs pa = aa;
          xy::cuda::bind_attention_plan(pa, view, view.attention[part]);
          xy::cuda::launch_attention(pa, nullptr, var.kernel);  // no tasks of a kind: no launch
        }
      } else {
        xy::cuda::launch_attention(aa, nullptr, var.kernel);
      }
      if (var.merge) xy::cuda::launch_attention_merge(aa, view.attention[0].merges, view.attention[0].num_merges, nullptr);
    };
    for (int i = 0; i < 10; ++i) once();  // warm-up: clocks, L2, the first launch's set-up
    XY_CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < iters; ++i) once();
    XY_CUDA_CHECK(cudaEventRecord(e1));
    XY_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    const double sec = ms / 1e3 / iters;
    std::printf("%-28s %-12s tasks %6d split %5d  %9.1f us  %7.1f TFLOP/s", c.name.c_str(), var.name, num_tasks,
                split, sec * 1e6, flops / sec / 1e12);
    if (c.report_kv) std::printf("  %5.2f TB/s KV", kv_bytes / sec / 1e12);
    std::printf("\n");
#if XY_ATTENTION_TIMELINE
    if (var.kernel == AttentionKernel::kWgmma && var.deal != Deal::kTwoLaunches) {
      xy::cuda::take_attention_timeline();  // clears it
      xy::cuda::launch_attention(aa, nullptr, var.kernel);
      print_timeline(xy::cuda::take_attention_timeline());
    }
#endif
    std::fflush(stdout);
  }
  XY_CUDA_CHECK(cudaEventDestroy(e0));
  XY_CUDA_CHECK(cudaEventDestroy(e1));
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 20;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--block-size") && i + 1 < argc) g_block_size = std::atoi(argv[++i]);
  }
  int num_sms = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
  int l2_bytes = 0;
  XY_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, 0));
  std::vector<Case> cases;
  for (int32_t L : {512, 2048, 8192}) {
    const int32_t batch = 16384 / L;
    cases.push_back({"prefill causal L=" + std::to_string(L) + " x" + std::to_string(batch),
                     std::vector<Seq>(size_t(batch), Seq{0, L}), false, double(batch) * L * L / 2});
  }
  for (auto [batch, ctx] : std::vector<std::pair<int32_t, int32_t>>{{64, 1024}, {64, 4096}, {256, 2048}, {8, 32768}})
    cases.push_back({"decode " + std::to_string(batch) + " x " + std::to_string(ctx),
                     std::vector<Seq>(size_t(batch), Seq{ctx - 1, 1}), true, -1});
  Case hybrid{"hybrid 4x1024@1024 + 128x2k", std::vector<Seq>(4, Seq{1024, 1024}), false, -1, true};
  for (int i = 0; i < 128; ++i) hybrid.seqs.push_back(Seq{2047, 1});
  cases.push_back(hybrid);
  for (int share : {0, 25, 50, 75, 100}) {
    const int chunks = 8 * share / 100, decodes = 256 * (100 - share) / 100;
    Case mix{"mix p" + std::to_string(share) + " " + std::to_string(chunks) + "x1k@1k+" + std::to_string(decodes) + "x2k",
             std::vector<Seq>(size_t(chunks), Seq{1024, 1024}), true, -1, true};
    for (int i = 0; i < decodes; ++i) mix.seqs.push_back(Seq{2047, 1});
    cases.push_back(mix);
  }
  std::printf("attention_bench: %d query heads, %d KV heads, head_dim %d, block %d, %d SMs, L2 %d MB, %d iters\n",
              kHeads, kKvHeads, kHeadDim, g_block_size, num_sms, l2_bytes >> 20, iters);
  const Variant wgmma{"wgmma", AttentionKernel::kWgmma, 128};
  const Variant wgmma_flat{"wgmma-cost", AttentionKernel::kWgmma, 128, Deal::kEager, false};
  const Variant wgmma_rr{"wgmma-rr", AttentionKernel::kWgmma, 128, Deal::kGraph};
  const Variant wgmma_mix{"wgmma-mix", AttentionKernel::kWgmma, 128, Deal::kEager, true, true};
  const Variant wgmma_mix_rr{"wgmma-mix-rr", AttentionKernel::kWgmma, 128, Deal::kGraph, true, true};
  const Variant wgmma_2x{"wgmma-2x", AttentionKernel::kWgmma, 128, Deal::kTwoLaunches};
  const Variant tensor_core{"tensor-core", AttentionKernel::kTensorCore, xy::cuda::kAttentionTileRows};
  const Variant cuda_core{"cuda-core", AttentionKernel::kCudaCore, xy::cuda::kAttentionTileRows};
  const Variant decode{"decode", AttentionKernel::kDecode, xy::cuda::kDecodeMaxRows};
  for (const Case& c : cases) {
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    const bool sweep = c.name.rfind("mix", 0) == 0;
    const bool decode_only = c.name.rfind("decode", 0) == 0 || c.name.rfind("mix p0 ", 0) == 0;
    if (sweep) {
      run_case(c, iters, num_sms, l2_bytes, 0, {wgmma, wgmma_rr, wgmma_2x, tensor_core});
      run_case(c, iters, num_sms, l2_bytes, 8192, {wgmma, wgmma_mix, wgmma_mix_rr, wgmma_2x});  // the backend's split
      if (decode_only) run_case(c, iters, num_sms, l2_bytes, 0, {decode});
      continue;
    }
    if (decode_only) {
      // The decode-specialised kernel at its rule's split, then at fixed splits around it.
      Variant decode_no_merge = decode;
      decode_no_merge.name = "decode-nomerge";
      decode_no_merge.merge = false;
      run_case(c, iters, num_sms, l2_bytes, 0, {decode, decode_no_merge});
      for (int32_t split : {1024, 2048, 4096, 8192, 16384}) run_case(c, iters, num_sms, l2_bytes, split, {decode, decode_no_merge});
    }
    std::vector<Variant> variants{wgmma, wgmma_flat};
    if (c.mixed) variants.insert(variants.end(), {wgmma_mix, wgmma_rr, wgmma_mix_rr, wgmma_2x});
    variants.insert(variants.end(), {tensor_core, cuda_core});
    run_case(c, iters, num_sms, l2_bytes, 0, variants);
    if (!c.report_kv && c.mixed) {
      run_case(c, iters, num_sms, l2_bytes, 8192, {wgmma, wgmma_flat, wgmma_mix, wgmma_mix_rr, wgmma_2x, tensor_core});
    } else if (!c.report_kv) {
      run_case(c, iters, num_sms, l2_bytes, 8192, {wgmma, wgmma_flat, tensor_core});
    }  // the same without the 512 split
  }
  return 0;
}
