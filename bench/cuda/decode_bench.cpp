// Baseline of the CUDA backend on a real model shape (default: the llama3-8b preset, random
// weights): decode step time and MBU at several batch sizes, prefill tokens/s and MFU at several
// lengths, and the device's copy bandwidth measured in the same run (the MBU ceiling).
//
//   decode_bench [--model DIR] [--preset llama3-8b] [--context 512] [--batches 1,8,32,128,256]
//                [--prefill 1024,4096,8192] [--steps 20] [--cuda-graphs 0|1|both]
//                [--deterministic 0|1] [--gemm smooth|cublas|both] [--gemm-table FILE]
//                [--attention auto|tensor-core] [--pdl 0|1]   (CudaBackendOptions::attention, pdl)
//                [--block-size N]   (KV page size; default 64, as `xyserve serve` picks on a GPU)
// Without --model, writes the preset's random checkpoint to /tmp/xy-<preset> (once).
// --cuda-graphs both (the default) times the decode steps eagerly and with CUDA graphs, one
// backend after the other (two would not fit beside each other's KV cache), side by side.
// --gemm picks the backend's GEMM path as `xyserve serve --gemm` does: cublas (the default, as
// before the flag existed) runs cuBLASLt alone; smooth runs the SmoothGEMM table of the model
// directory (or --gemm-table; written by `xyserve tune --model DIR`, which must have run first:
// without a table it stops rather than measure cuBLASLt twice); both measures the two, one
// backend after the other in the order cublas, smooth, smooth, cublas (each time the mean of its
// two runs), and prints the speedup of SmoothGEMM (cuBLASLt's step time over SmoothGEMM's, each
// in its fastest graph mode).
//
// Decode steps are B requests with `context` tokens already in the KV cache and one new row
// each, built as StepPlans directly (no scheduler). The KV cache is zero-filled, not
// prefilled: attention's cost does not depend on the values. A step is timed with CUDA events
// around CudaBackend::run_step, so host planning and the plan upload are inside the figure;
// the median of `steps` runs after 3 warm-ups is reported (with graphs, the first warm-up of a
// batch runs eagerly and captures the graph; the timed runs replay it).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bench_util.h"
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/smooth_gemm.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/presets.h"
#include "xyserve/model/weights.h"

namespace {

using namespace xy;
namespace fs = std::filesystem;

// Median milliseconds of `steps` runs of the plan (after 3 warm-ups), timed with events.
double time_step(backend::cuda::CudaBackend& be, const meta::StepPlan& plan, int steps) {
  cudaEvent_t e0, e1;
  XY_CUDA_CHECK(cudaEventCreate(&e0));
  XY_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < steps + 3; ++i) {
    XY_CUDA_CHECK(cudaEventRecord(e0, be.stream()));
    be.run_step(plan);
    XY_CUDA_CHECK(cudaEventRecord(e1, be.stream()));
    XY_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    XY_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// B decode requests with `context` tokens cached each (blocks r * blocks_per .. of request r).
meta::StepPlan decode_plan(int b, int context, int bs, int64_t vocab) {
  const int blocks_per = (context + 1 + bs - 1) / bs;
  meta::StepPlan plan;
  plan.block_size = bs;
  for (int r = 0; r < b; ++r) {
    meta::ScheduledRequest req;
    req.request_id = r;
    req.num_computed_tokens = context;
    req.num_new_tokens = 1;
    req.first_row = r;
    req.num_logits_rows = 1;
    for (int k = 0; k < blocks_per; ++k) req.block_table.push_back(r * blocks_per + k);
    plan.token_ids.push_back(int32_t((int64_t(r) * 7919) % vocab));
    plan.positions.push_back(context);
    plan.requests.push_back(req);
  }
  return plan;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, preset = "llama3-8b", graphs = "both", gemm = "cublas", gemm_table_path;
  int context = 512, steps = 20;
  bool deterministic = false;
  std::string attention = "auto";  // CudaBackendOptions::attention: auto | tensor-core
  bool pdl = true;                 // CudaBackendOptions::pdl
  int block_size = 64;             // CudaBackendOptions::block_size
  std::vector<int> batches{1, 8, 32, 128, 256}, prefills{1024, 4096, 8192};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model_dir = v;
    else if (k == "--preset") preset = v;
    else if (k == "--context") context = std::stoi(v);
    else if (k == "--batches") batches = xy::bench::parse_int_list(v);
    else if (k == "--prefill") prefills = xy::bench::parse_int_list(v);
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--cuda-graphs") graphs = v;
    else if (k == "--deterministic") deterministic = v == "1";
    else if (k == "--gemm") gemm = v;
    else if (k == "--gemm-table") gemm_table_path = v;
    else if (k == "--attention") attention = v;
    else if (k == "--pdl") pdl = v == "1";
    else if (k == "--block-size") block_size = std::stoi(v);
    else { std::fprintf(stderr, "decode_bench: unknown flag %s\n", k.c_str()); return 2; }
  }
  std::vector<bool> modes;  // cuda_graphs of each backend, in order
  if (graphs == "0") modes = {false};
  else if (graphs == "1") modes = {true};
  else if (graphs == "both") modes = {false, true};
  else { std::fprintf(stderr, "decode_bench: --cuda-graphs takes 0, 1 or both, not %s\n", graphs.c_str()); return 2; }
  std::vector<std::string> gemms;  // the GEMM path of each group of backends, in order
  if (gemm == "cublas" || gemm == "smooth") gemms = {gemm};
  else if (gemm == "both") gemms = {"cublas", "smooth"};
  else { std::fprintf(stderr, "decode_bench: --gemm takes smooth, cublas or both, not %s\n", gemm.c_str()); return 2; }
  if (cuda::device_count() == 0) { std::fprintf(stderr, "decode_bench: no CUDA device\n"); return 1; }
  const cuda::DeviceInfo info = cuda::device_info(0);
  if (model_dir.empty()) {
    model_dir = "/tmp/xy-" + preset;
    if (!fs::exists(fs::path(model_dir) / "config.json")) {
      const auto t0 = std::chrono::steady_clock::now();
      model::write_random_checkpoint(model::preset_config("", preset), model_dir, 1);
      std::printf("wrote %s in %.1f s\n", model_dir.c_str(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  // --gemm smooth runs the tuned table (as `xyserve serve --gemm smooth` does); without one every
  // GEMM would be cuBLASLt's and the comparison empty.
  meta::GemmTable smooth_table;
  if (std::find(gemms.begin(), gemms.end(), "smooth") != gemms.end()) {
    smooth_table = cuda::find_gemm_table(model_dir, gemm_table_path, 0);
    if (smooth_table.empty()) {
      std::fprintf(stderr, "decode_bench: --gemm %s needs a SmoothGEMM table: run `xyserve tune --model %s` "
                   "or pass --gemm-table FILE\n", gemm.c_str(), model_dir.c_str());
      return 1;
    }
    std::printf("SmoothGEMM table: %s (measured on %s)\n", smooth_table.source().c_str(), smooth_table.device().c_str());
  }
  const double bw = xy::bench::copy_bandwidth();
  model::LoadOptions lo;
  lo.prefault = true;
  const auto weights = model::load_model(model_dir, lo);
  backend::cuda::CudaBackendOptions opt;
  opt.max_num_tokens = std::max(8192, *std::max_element(prefills.begin(), prefills.end()));
  opt.max_logits_rows = std::max(256, *std::max_element(batches.begin(), batches.end()));
  opt.deterministic = deterministic;
  opt.pdl = pdl;
  opt.block_size = block_size;
  if (attention != "auto" && attention != "tensor-core") {
    std::fprintf(stderr, "decode_bench: --attention takes auto or tensor-core, not %s\n", attention.c_str());
    return 2;
  }
  opt.attention = attention == "auto" ? cuda::AttentionKernel::kAuto : cuda::AttentionKernel::kTensorCore;

  // (gemm, graphs, batch) -> median step ms; absent: skipped. (gemm, tokens) -> prefill step ms.
  std::map<std::tuple<std::string, bool, int>, double> decode_ms;
  std::map<std::pair<std::string, int>, double> prefill_ms;
  size_t weight_bytes = 0, kv_bytes_per_token = 0;
  bool printed_header = false;
  // With both GEMM paths, each is measured twice in the order cublas, smooth, smooth, cublas and
  // the two times averaged, so that a drift over the run (the H200's clock moved between 1.5 and
  // 1.98 GHz in one GEMM timeline) weighs on both alike. It does not remove the run-to-run
  // spread: with a table that routes every decode GEMM to cuBLASLt, as the cublas path does,
  // "smooth" still measured 0.978-0.983x in some runs (H200, 2026-11-25): read differences
  // under ~2% as noise.
  std::vector<std::string> run_order = gemms;
  if (gemms.size() == 2) run_order = {gemms[0], gemms[1], gemms[1], gemms[0]};
  std::map<std::tuple<std::string, bool, int>, int> decode_runs;
  std::map<std::pair<std::string, int>, int> prefill_runs;
  for (const std::string& g : run_order) {
    opt.gemm_table = g == "smooth" ? smooth_table : meta::GemmTable();
    for (size_t m = 0; m < modes.size(); ++m) {
      opt.cuda_graphs = modes[m];
      const auto t_load = std::chrono::steady_clock::now();
      backend::cuda::CudaBackend be(*weights, opt);
      const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
      const auto& c = be.config();
      const int bs = be.block_size();
      weight_bytes = be.weight_bytes();
      kv_bytes_per_token = be.kv_bytes_per_token();
      if (!printed_header) {
        printed_header = true;
        std::printf("device %s, %d SMs; model %s (%s): %.2f GB of bf16 weights, uploaded in %.1f s; "
                    "%d KV blocks of %d tokens; copy bandwidth %.0f GB/s (read + write)%s; attention %s\n",
                    info.name.c_str(), info.num_sms, model_dir.c_str(), c.architecture.c_str(),
                    double(be.weight_bytes()) / 1e9, load_s, be.num_kv_blocks(), bs, bw / 1e9,
                    deterministic ? "; deterministic mode" : "", attention.c_str());
      }
      for (int b : batches) {
        const int blocks_per = (context + 1 + bs - 1) / bs;
        if (int64_t(b) * blocks_per > be.num_kv_blocks()) continue;
        decode_ms[{g, modes[m], b}] += time_step(be, decode_plan(b, context, bs, c.vocab_size), steps);
        ++decode_runs[{g, modes[m], b}];
      }
      if (modes[m]) {
        std::printf("--gemm %s, graphs: %lld replays, %lld captures\n", g.c_str(), (long long)be.cuda_graph_replays(),
                    (long long)be.cuda_graph_captures());
      }
      if (m + 1 < modes.size()) continue;
      for (int t : prefills) {  // prefill is never a graph step: timed once per GEMM path, with its last backend
        meta::StepPlan plan;
        plan.block_size = bs;
        meta::ScheduledRequest req;
        req.num_new_tokens = t;
        req.num_logits_rows = 1;
        for (int k = 0; k * bs < t; ++k) req.block_table.push_back(k);
        for (int i = 0; i < t; ++i) {
          plan.token_ids.push_back((i * 7919) % int(c.vocab_size));
          plan.positions.push_back(i);
        }
        plan.requests.push_back(req);
        prefill_ms[{g, t}] += time_step(be, plan, std::max(3, steps / 4));
        ++prefill_runs[{g, t}];
      }
    }
  }

  for (auto& [key, ms] : decode_ms) ms /= decode_runs[key];
  for (auto& [key, ms] : prefill_ms) ms /= prefill_runs[key];

  const model::ModelConfig& c = weights->config;
  // Parameters that every token multiplies (all but the embedding table): 2 FLOP each.
  const double matmul_params = double(weight_bytes) / 2.0 - double(c.vocab_size * c.hidden_size);
  auto fixed = [](const char* format, double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, format, v);
    return std::string(buf);
  };
  auto find_ms = [&](const std::string& g, bool graphs_on, int b) -> double {
    const auto it = decode_ms.find({g, graphs_on, b});
    return it == decode_ms.end() ? 0.0 : it->second;
  };
  // The fastest graph mode of one GEMM path at batch b (0: not measured).
  auto best_ms = [&](const std::string& g, int b) {
    double ms = 0;
    for (bool m : modes)
      if (const double t = find_ms(g, m, b); t > 0) ms = ms == 0 ? t : std::min(ms, t);
    return ms;
  };
  const bool both_graphs = modes.size() == 2, both_gemms = gemms.size() == 2;
  std::string header = "| batch | context |", rule = "|---|---|";
  for (const std::string& g : gemms)
    for (bool m : modes) {
      header += cat(" ", g, m ? " graphs" : " eager", " ms |");
      rule += "---|";
    }
  if (both_graphs) header += " graphs speedup |", rule += "---|";
  if (both_gemms) header += " smooth speedup |", rule += "---|";
  header += " tokens/s | bytes read (GB) | MBU |";
  rule += "---|---|---|";
  std::printf("\n%s\n%s\n", header.c_str(), rule.c_str());
  for (int b : batches) {
    // tokens/s and MBU of the fastest configuration measured
    double ms = 0;
    for (const std::string& g : gemms)
      if (const double t = best_ms(g, b); t > 0) ms = ms == 0 ? t : std::min(ms, t);
    if (ms == 0) { std::printf("| %d | %d | skipped: KV too small |\n", b, context); continue; }
    std::string row = cat("| ", b, " | ", context, " |");
    for (const std::string& g : gemms)
      for (bool m : modes) {
        const double t = find_ms(g, m, b);
        row += cat(" ", t > 0 ? fixed("%.3f", t) : std::string("-"), " |");
      }
    if (both_graphs) {  // eager over graphs, of the last GEMM path
      const double e = find_ms(gemms.back(), false, b), gr = find_ms(gemms.back(), true, b);
      row += cat(" ", e > 0 && gr > 0 ? fixed("%.2fx", e / gr) : std::string("-"), " |");
    }
    if (both_gemms) {  // cuBLASLt over SmoothGEMM, each in its fastest graph mode
      const double cb = best_ms("cublas", b), sm = best_ms("smooth", b);
      row += cat(" ", cb > 0 && sm > 0 ? fixed("%.3fx", cb / sm) : std::string("-"), " |");
    }
    const double bytes = double(weight_bytes) + double(b) * double(context + 1) * double(kv_bytes_per_token);
    row += cat(" ", fixed("%.0f", b / (ms * 1e-3)), " | ", fixed("%.2f", bytes / 1e9), " | ",
               fixed("%.1f%%", 100.0 * bytes / (ms * 1e-3) / bw), " |");
    std::printf("%s\n", row.c_str());
  }
  std::string pheader = "| prefill tokens |", prule = "|---|";
  for (const std::string& g : gemms) {
    pheader += cat(" ", g, " step ms | ", g, " tokens/s | ", g, " TFLOP/s (GEMM + attention) |");
    prule += "---|---|---|";
  }
  if (both_gemms) pheader += " smooth speedup |", prule += "---|";
  std::printf("\n%s\n%s\n", pheader.c_str(), prule.c_str());
  for (int t : prefills) {
    // causal attention: q·k and p·v over t²/2 pairs per head per layer, 2 FLOP per MAC
    const double flops = 2.0 * matmul_params * t + 4.0 * double(c.num_layers) * double(c.num_heads) *
                                                       double(c.head_dim) * double(t) * double(t) / 2.0;
    std::string row = cat("| ", t, " |");
    for (const std::string& g : gemms) {
      const double ms = prefill_ms[{g, t}];
      row += cat(" ", fixed("%.2f", ms), " | ", fixed("%.0f", t / (ms * 1e-3)), " | ",
                 fixed("%.1f", flops / (ms * 1e-3) / 1e12), " |");
    }
    if (both_gemms) row += cat(" ", fixed("%.3fx", prefill_ms[{"cublas", t}] / prefill_ms[{"smooth", t}]), " |");
    std::printf("%s\n", row.c_str());
  }
  return 0;
}
