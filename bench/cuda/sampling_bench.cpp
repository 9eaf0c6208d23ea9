// The GPU sampler's cost: DeviceSampler::run (pack, upload, kernel, copy back, stream sync) and
// the kernel alone, for rows in {1, 64, 256} at vocab 128,256 (Llama 3), against the floor of
// reading the logits once at the copy bandwidth measured in the same run.
//
//   sampling_bench [--iters 50] [--vocab 128256] [--rows 1,64,256]
//
// Settings: greedy; temperature 0.8 with top-k 50 and top-p 0.9 (a common chat setting);
// temperature 1 alone (vLLM's default, the kernel's worst case: every candidate is drawable).
// Logits: "flat" rows (N(0, 2): every token within 2^-40 of the most likely, so passes re-read
// the row) and "peaked" rows (a few dozen strong tokens over a low bulk: the candidates fit in
// shared memory), since the kernel's cost depends on which. Figures are medians of `iters`
// runs after 3 warm-ups; "run" is wall time on the host, "kernel" CUDA events around the launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/backend/cuda/cuda_check.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_sampler.h"
#include "xyserve/backend/cuda/kernels/sampling.h"

namespace {

using namespace xy;

std::vector<float> make_logits(int rows, int64_t vocab, bool peaked, std::mt19937& rng) {
  std::vector<float> out(size_t(rows) * size_t(vocab));
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (auto& x : out) x = normal(rng);
  if (peaked)
    for (int r = 0; r < rows; ++r)
      for (int s = 0; s < 40; ++s)
        out[size_t(r) * size_t(vocab) + rng() % uint64_t(vocab)] += 45.0f + 10.0f * unit(rng);
  return out;
}

struct Setting {
  const char* name;
  float temperature;
  int32_t top_k;
  float top_p;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 50;
  int64_t vocab = 128256;
  std::vector<int> row_counts{1, 64, 256};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--iters")
      iters = std::stoi(v);
    else if (k == "--vocab")
      vocab = std::stoll(v);
    else if (k == "--rows")
      row_counts = xy::bench::parse_int_list(v);
    else {
      std::fprintf(stderr, "sampling_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (cuda::device_count() == 0) {
    std::fprintf(stderr, "sampling_bench: no CUDA device\n");
    return 1;
  }
  const cuda::DeviceInfo info = cuda::device_info(0);
  // The floor's bandwidth: device-to-device copy (read + write) measured now, as decode_bench's MBU.
  const double bandwidth = xy::bench::copy_bandwidth();
  std::printf("device %s, %d SMs; vocab %lld; floor = rows x vocab x 4 B / %.2f TB/s (copy, measured)\n\n",
              info.name.c_str(), info.num_sms, (long long)vocab, bandwidth / 1e12);
  std::printf("%5s  %-26s %-7s %10s %10s %10s %9s %9s\n", "rows", "setting", "logits", "run us",
              "kernel us", "floor us", "run/flr", "kern/flr");

  const Setting settings[] = {{"greedy", 0.0f, 0, 1.0f},
                              {"T 0.8, top-k 50, top-p 0.9", 0.8f, 50, 0.9f},
                              {"T 1.0", 1.0f, 0, 1.0f}};
  std::mt19937 rng(1);
  std::mt19937_64 draws(2);
  cuda::Stream stream;
  cuda::DeviceSampler sampler;
  cudaEvent_t e0, e1;
  XY_CUDA_CHECK(cudaEventCreate(&e0));
  XY_CUDA_CHECK(cudaEventCreate(&e1));
  for (int rows : row_counts) {
    for (bool peaked : {false, true}) {
      const std::vector<float> host = make_logits(rows, vocab, peaked, rng);
      cuda::DeviceBuffer<float> logits(host.size());
      XY_CUDA_CHECK(cudaMemcpy(logits.get(), host.data(), host.size() * sizeof(float),
                               cudaMemcpyHostToDevice));
      for (const Setting& s : settings) {
        meta::SamplingPlan plan;
        for (int r = 0; r < rows; ++r) {
          meta::RowSampling rs;
          rs.params.temperature = s.temperature;
          rs.params.top_k = s.top_k;
          rs.params.top_p = s.top_p;
          rs.uniform = backend::cpu::uniform01(draws);
          plan.rows.push_back(rs);
        }
        meta::SamplingOutput out;
        std::vector<double> run_us;
        for (int i = 0; i < iters + 3; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          sampler.run(logits.get(), vocab, plan, out, stream.get());
          const double us =
              std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                  .count();
          if (i >= 3) run_us.push_back(us);
        }

        // The kernel alone, from a plan packed here as DeviceSampler packs it.
        std::vector<cuda::SamplingRow> packed(static_cast<size_t>(rows));
        for (int r = 0; r < rows; ++r) {
          packed[size_t(r)].uniform = plan.rows[size_t(r)].uniform;
          packed[size_t(r)].temperature = s.temperature;
          packed[size_t(r)].top_k = s.top_k;
          packed[size_t(r)].top_p = s.top_p;
        }
        cuda::DeviceBuffer<cuda::SamplingRow> d_rows(packed.size());
        cuda::DeviceBuffer<int32_t> d_tokens(packed.size());
        cuda::DeviceBuffer<float> d_logprobs(packed.size());
        XY_CUDA_CHECK(cudaMemcpy(d_rows.get(), packed.data(),
                                 packed.size() * sizeof(cuda::SamplingRow),
                                 cudaMemcpyHostToDevice));
        cuda::SamplingArgs args;
        args.logits = logits.get();
        args.vocab = vocab;
        args.num_rows = rows;
        args.rows = d_rows.get();
        args.any_sampled = s.temperature > 0.0f;
        args.tokens = d_tokens.get();
        args.logprobs = d_logprobs.get();
        std::vector<double> kernel_us;
        for (int i = 0; i < iters + 3; ++i) {
          XY_CUDA_CHECK(cudaEventRecord(e0, stream.get()));
          cuda::launch_sampling(args, stream.get());
          XY_CUDA_CHECK(cudaEventRecord(e1, stream.get()));
          XY_CUDA_CHECK(cudaEventSynchronize(e1));
          float ms = 0.0f;
          XY_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
          if (i >= 3) kernel_us.push_back(double(ms) * 1e3);
        }
        std::vector<int32_t> tokens(packed.size());
        XY_CUDA_CHECK(cudaMemcpy(tokens.data(), d_tokens.get(), tokens.size() * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost));
        if (tokens != out.tokens) {
          std::fprintf(stderr, "sampling_bench: the kernel alone chose other tokens than run()\n");
          return 1;
        }

        const double floor_us = double(rows) * double(vocab) * 4.0 / bandwidth * 1e6;
        const double run = median(run_us), kernel = median(kernel_us);
        std::printf("%5d  %-26s %-7s %10.1f %10.1f %10.2f %9.3f %9.3f\n", rows, s.name,
                    peaked ? "peaked" : "flat", run, kernel, floor_us, floor_us / run,
                    floor_us / kernel);
      }
    }
  }
  XY_CUDA_CHECK(cudaEventDestroy(e0));
  XY_CUDA_CHECK(cudaEventDestroy(e1));
  return 0;
}
