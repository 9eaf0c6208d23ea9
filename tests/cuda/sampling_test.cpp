// The GPU sampler (backend/cuda/device_sampler.h) against the CPU reference,
// backend::cpu::sample_rows, whose rules meta/sampling_plan.h states. Greedy tokens, top
// logprob ids and returned logits must match exactly; logprobs within 1e-4 (fp32 log-sum-exp
// against double); sampled tokens must agree except where the uniform falls within rounding of
// a boundary (the GPU weighs tokens in float and 2^-40 fixed point, the CPU in double), which
// leaves them >= 99.5% equal. Every test fails, never skips, without a working kernel.
#include "xyserve/backend/cuda/kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "cuda/device_test_util.h"
#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/device_sampler.h"
#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"

namespace xy::cuda {
namespace {

using meta::SamplingOutput;
using meta::SamplingParams;
using meta::SamplingPlan;

// How the random logits of a row are drawn.
enum class Shape {
  kFlat,    // N(0, sigma): every token within 2^-40 of the most likely (the kernel's row path)
  kPeaked,  // a few dozen strong tokens over a low bulk: few candidates (the shared-memory list)
  kTied,    // peaked or flat, rounded to bf16: many exact ties, as a bf16 LM head gives
};

std::vector<float> random_logits(size_t rows, int64_t vocab, Shape shape, std::mt19937& rng) {
  std::vector<float> out(rows * size_t(vocab));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (size_t r = 0; r < rows; ++r) {
    float* row = out.data() + r * size_t(vocab);
    const bool peaked = shape == Shape::kPeaked || (shape == Shape::kTied && r % 2 == 0);
    const float sigma = 0.5f + 2.5f * unit(rng);
    for (int64_t i = 0; i < vocab; ++i) row[i] = sigma * normal(rng);
    if (peaked) {
      const int strong = 8 + int(rng() % 56);
      for (int s = 0; s < strong; ++s) row[rng() % uint64_t(vocab)] += 15.0f + 20.0f * unit(rng);
    }
    if (shape == Shape::kTied)
      for (int64_t i = 0; i < vocab; ++i) row[i] = bf16_to_f32(f32_to_bf16(row[i]));
  }
  return out;
}

template <class T>
T pick(std::initializer_list<T> values, std::mt19937& rng) {
  return *(values.begin() + rng() % values.size());
}

// A row of mixed settings: greedy or tempered, each filter on or off, penalties on a third.
SamplingParams random_params(std::mt19937& rng) {
  SamplingParams p;
  p.temperature = rng() % 4 == 0 ? 0.0f : pick({0.3f, 0.7f, 1.0f, 1.5f}, rng);
  p.top_k = rng() % 2 ? pick({-1, 1, 5, 50, 1000, 20000, 60000}, rng) : 0;
  p.top_p = rng() % 2 ? pick({0.95f, 0.9f, 0.5f, 0.1f, 1e-6f}, rng) : 1.0f;
  p.min_p = rng() % 3 == 0 ? pick({0.05f, 0.2f}, rng) : 0.0f;
  p.logprobs = pick({-1, -1, 0, 1, 5, 20}, rng);
  if (rng() % 3 == 0) {
    p.repetition_penalty = pick({1.0f, 1.3f, 0.8f}, rng);
    p.frequency_penalty = pick({0.0f, 0.5f, -0.3f}, rng);
    p.presence_penalty = pick({0.0f, 0.4f, -0.2f}, rng);
  }
  return p;
}

// Random prompt and output ids for the row's penalty entries.
void add_penalties(SamplingPlan& plan, meta::RowSampling& row, int64_t vocab, std::mt19937& rng) {
  std::vector<int32_t> prompt(rng() % 200), output(rng() % 100), scratch;
  for (auto& t : prompt) t = int32_t(rng() % uint64_t(vocab));
  for (auto& t : output) t = int32_t(rng() % uint64_t(vocab));
  row.penalties_begin = int32_t(plan.penalties.size());
  meta::append_penalty_tokens(row.params, prompt, output, plan.penalties, scratch);
  row.penalties_end = int32_t(plan.penalties.size());
}

SamplingPlan random_plan(size_t rows, int64_t vocab, std::mt19937& rng, std::mt19937_64& draws) {
  SamplingPlan plan;
  for (size_t r = 0; r < rows; ++r) {
    meta::RowSampling row;
    row.params = random_params(rng);
    row.uniform = backend::cpu::uniform01(draws);
    row.return_logits = rng() % 20 == 0;
    add_penalties(plan, row, vocab, rng);
    plan.rows.push_back(row);
  }
  return plan;
}

double log_sum_exp(const float* row, int64_t vocab) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, double(row[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(row[i]) - mx);
  return mx + std::log(sum);
}

// Whether the kernel lists this sampled row's candidates in shared memory (tokens within 2^-40
// of the most likely, after penalties, fit kSamplingListCapacity): to check that the test data
// reach both of its paths.
bool fits_list(const float* raw, int64_t vocab, const SamplingPlan& plan,
               const meta::RowSampling& row) {
  std::vector<float> l(raw, raw + vocab);
  backend::cpu::apply_penalties(
      l, row.params,
      std::span(plan.penalties)
          .subspan(size_t(row.penalties_begin), size_t(row.penalties_end - row.penalties_begin)));
  const float mx = *std::max_element(l.begin(), l.end());
  int64_t n = 0;
  for (float x : l) n += std::exp((x - mx) / row.params.temperature) >= 0x1p-40f;
  return n <= kSamplingListCapacity;
}

class GpuSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(device_count(), 0) << "no CUDA device: run the gpu label on the device machine";
    stream_ = std::make_unique<Stream>();
  }

  SamplingOutput gpu(const std::vector<float>& logits, int64_t vocab, const SamplingPlan& plan) {
    DeviceBuffer<float> d = testing::to_device(logits);
    XY_CUDA_CHECK(
        cudaDeviceSynchronize());  // the upload is done before a non-blocking stream reads it
    SamplingOutput out;
    sampler_.run(d.get(), vocab, plan, out, stream_->get());
    return out;
  }

  static SamplingOutput cpu(const std::vector<float>& logits, int64_t vocab,
                            const SamplingPlan& plan) {
    SamplingOutput out;
    backend::cpu::sample_rows(logits, vocab, plan, out);
    return out;
  }

  DeviceSampler sampler_;
  std::unique_ptr<Stream> stream_;
};

// One plan of every kind of row (greedy, tempered with every filter, penalties, logprobs,
// returned logits) at several vocabularies, including Llama 3's and Qwen's and two that are not
// multiples of 4 (the kernel's unaligned path).
TEST_F(GpuSampling, MatchesCpuOnMixedRows) {
  struct Case {
    int64_t vocab;
    size_t rows;
    Shape shape;
  };
  const Case cases[] = {
      {1000, 1600, Shape::kFlat},  {1000, 600, Shape::kTied},    {4099, 600, Shape::kPeaked},
      {32003, 300, Shape::kTied},  {128256, 240, Shape::kFlat},  {128256, 160, Shape::kPeaked},
      {128256, 160, Shape::kTied}, {151936, 64, Shape::kPeaked},
  };
  std::mt19937 rng(11);
  std::mt19937_64 draws(12);
  size_t sampled = 0, agreed = 0, listed = 0, unlisted = 0, greedy = 0, with_top = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "vocab " << c.vocab << " shape " << int(c.shape));
    const std::vector<float> logits = random_logits(c.rows, c.vocab, c.shape, rng);
    const SamplingPlan plan = random_plan(c.rows, c.vocab, rng, draws);
    const SamplingOutput want = cpu(logits, c.vocab, plan);
    const SamplingOutput got = gpu(logits, c.vocab, plan);
    ASSERT_EQ(got.tokens.size(), c.rows);
    ASSERT_EQ(got.top_n, want.top_n);
    ASSERT_EQ(got.top_logprobs.size(), want.top_logprobs.size());
    ASSERT_EQ(got.logits.size(), want.logits.size());
    EXPECT_EQ(std::memcmp(got.logits.data(), want.logits.data(), got.logits.size() * sizeof(float)),
              0)
        << "returned logits differ from the input rows";
    for (size_t i = 0; i < c.rows; ++i) {
      const meta::RowSampling& row = plan.rows[i];
      const float* raw = logits.data() + i * size_t(c.vocab);
      if (row.return_logits) {
        EXPECT_EQ(got.tokens[i], -1) << i;
        EXPECT_EQ(got.logprobs[i], 0.0f) << i;
        continue;
      }
      const int32_t t = got.tokens[i];
      ASSERT_TRUE(t >= 0 && t < c.vocab) << "row " << i << " token " << t;
      if (row.params.greedy()) {
        ++greedy;
        ASSERT_EQ(t, want.tokens[i]) << "greedy row " << i;
      } else {
        ++sampled;
        agreed += t == want.tokens[i];
        (fits_list(raw, c.vocab, plan, row) ? listed : unlisted) += 1;
      }
      // bound: fp32 log-sum-exp over <= 152k terms against double, |logit| < 100
      const double lse = log_sum_exp(raw, c.vocab);
      ASSERT_NEAR(got.logprobs[i], double(raw[t]) - lse, 1e-4) << "row " << i;
      const int32_t n = std::max(0, row.params.logprobs);
      with_top += n > 0;
      for (int32_t j = 0; j < got.top_n; ++j) {
        const meta::TokenLogprob& g = got.top_logprobs[i * size_t(got.top_n) + size_t(j)];
        const meta::TokenLogprob& w = want.top_logprobs[i * size_t(got.top_n) + size_t(j)];
        ASSERT_EQ(g.token, w.token) << "row " << i << " top " << j;
        ASSERT_NEAR(g.logprob, w.logprob, 1e-4) << "row " << i << " top " << j;
        if (j >= n) {
          ASSERT_EQ(g.token, -1) << "row " << i << " asked for " << n;
        }
      }
    }
  }
  const double rate = double(agreed) / double(sampled);
  char line[256];
  std::snprintf(line, sizeof line,
                "[gpu sampling] sampled tokens equal to the CPU's: %zu of %zu (%.4f); greedy rows %zu; sampled "
                "rows with candidates listed %zu, from the row %zu; rows with top logprobs %zu",
                agreed, sampled, rate, greedy, listed, unlisted, with_top);
  testing::gpu_report(line);
  EXPECT_GE(sampled, 2000u);
  EXPECT_GE(rate, 0.995);
  EXPECT_GE(listed, 100u) << "the data must reach the shared-memory list path";
  EXPECT_GE(unlisted, 100u) << "the data must reach the row path";
}

TEST_F(GpuSampling, GreedyTakesTheLowestIdAmongPlantedTies) {
  std::mt19937 rng(21);
  std::mt19937_64 draws(22);
  for (int64_t vocab : {1000, 128256}) {
    const size_t rows = 64;
    std::vector<float> logits = random_logits(rows, vocab, Shape::kFlat, rng);
    SamplingPlan plan;
    for (size_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * size_t(vocab);
      const float top = *std::max_element(row, row + vocab) + 1.0f;
      const int ties = 2 + int(r % 7);
      for (int k = 0; k < ties; ++k) row[rng() % uint64_t(vocab)] = top;
      meta::RowSampling rs;
      rs.params.temperature = 0.0f;
      if (r % 2) {  // penalties on half the rows, which may break or move the ties
        rs.params.repetition_penalty = pick({1.3f, 0.8f}, rng);
        rs.params.frequency_penalty = pick({0.0f, 0.5f, -0.3f}, rng);
        rs.params.presence_penalty = pick({0.0f, 0.4f}, rng);
        add_penalties(plan, rs, vocab, rng);
      }
      rs.uniform = backend::cpu::uniform01(draws);
      plan.rows.push_back(rs);
    }
    const SamplingOutput want = cpu(logits, vocab, plan);
    const SamplingOutput got = gpu(logits, vocab, plan);
    for (size_t r = 0; r < rows; ++r)
      ASSERT_EQ(got.tokens[r], want.tokens[r]) << vocab << " row " << r;
  }
}

// Every logit equal: the kept tokens are the lowest ids, and the draw walks them in id order,
// so uniform (i + 0.5) / kept lands on id i exactly. Reaches the tie-breaking select (the cut
// is the j-th of one tie group) from the list (vocab 1000) and from the row (128256).
TEST_F(GpuSampling, TiesAreWalkedInIdOrder) {
  for (int64_t vocab : {1000, 128256}) {
    for (float top_p : {1.0f, 0.5f}) {
      const int64_t kept = top_p < 1.0f ? vocab / 2 : vocab;
      const size_t rows = 64;
      std::vector<float> logits(rows * size_t(vocab), 0.25f);
      SamplingPlan plan;
      std::vector<int32_t> expect;
      for (size_t r = 0; r < rows; ++r) {
        meta::RowSampling rs;
        rs.params.temperature = 0.7f;
        rs.params.top_p = top_p;
        rs.params.top_k = r % 3 == 0 ? 10 : 0;  // a tie with the 10th is kept: all of them
        const int64_t id = int64_t(r * 7919) % kept;
        rs.uniform = (double(id) + 0.5) / double(kept);
        plan.rows.push_back(rs);
        expect.push_back(int32_t(id));
      }
      // (Not compared with the CPU: its double sum of 1/vocab may cross top_p one token late.)
      const SamplingOutput got = gpu(logits, vocab, plan);
      for (size_t r = 0; r < rows; ++r)
        ASSERT_EQ(got.tokens[r], expect[r])
            << "vocab " << vocab << " top_p " << top_p << " row " << r;
    }
  }
}

// The draws' frequencies over many uniforms match the probabilities of the CPU's
// sampling_distribution, and no token outside it is ever drawn.
TEST_F(GpuSampling, FrequenciesMatchTheDistribution) {
  const int64_t vocab = 12;
  const std::vector<float> row = {2.0f, 1.5f,  1.5f, 0.3f, -1.0f, 0.0f,
                                  1.0f, -3.0f, 0.7f, 1.5f, -0.4f, 2.2f};
  struct Setting {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  const Setting settings[] = {{1.0f, 0, 1.0f, 0.0f},
                              {0.8f, 6, 1.0f, 0.0f},
                              {1.3f, 0, 0.8f, 0.0f},
                              {1.0f, 0, 1.0f, 0.25f},
                              {0.9f, 7, 0.9f, 0.1f}};
  const size_t n = 40000;
  std::mt19937_64 draws(31);
  for (const Setting& s : settings) {
    SamplingParams params;
    params.temperature = s.temperature;
    params.top_k = s.top_k;
    params.top_p = s.top_p;
    params.min_p = s.min_p;
    std::vector<backend::cpu::TokenProb> dist;
    backend::cpu::sampling_distribution(row, params, dist);
    std::vector<float> logits;
    SamplingPlan plan;
    for (size_t i = 0; i < n; ++i) {
      logits.insert(logits.end(), row.begin(), row.end());
      meta::RowSampling rs;
      rs.params = params;
      rs.uniform = backend::cpu::uniform01(draws);
      plan.rows.push_back(rs);
    }
    const SamplingOutput got = gpu(logits, vocab, plan);
    std::vector<double> count(size_t(vocab), 0.0);
    for (int32_t t : got.tokens) {
      ASSERT_TRUE(t >= 0 && t < vocab) << t;
      count[size_t(t)] += 1.0;
    }
    std::vector<double> p(size_t(vocab), 0.0);
    for (const auto& tp : dist) p[size_t(tp.token)] = tp.prob;
    for (int64_t t = 0; t < vocab; ++t) {
      const double freq = count[size_t(t)] / double(n);
      const double sd = std::sqrt(p[size_t(t)] * (1.0 - p[size_t(t)]) / double(n));
      if (p[size_t(t)] == 0.0) {
        EXPECT_EQ(count[size_t(t)], 0.0)
            << "token " << t << " is outside the kept set (T " << s.temperature << " k " << s.top_k
            << " p " << s.top_p << " min_p " << s.min_p << ")";
      } else {
        // bound: 5 standard deviations of a binomial frequency
        EXPECT_NEAR(freq, p[size_t(t)], 5.0 * sd + 1e-9)
            << "token " << t << " (T " << s.temperature << " k " << s.top_k << " p " << s.top_p
            << " min_p " << s.min_p << ")";
      }
    }
  }
}

// uniform 0 draws the most likely kept token; a uniform just under 1 draws the last kept one,
// never a token past the cut, whichever filter made the cut. (Checked where the last kept
// token holds >= 1e-6 of the mass: below that, the CPU's double sum reaches 1 before it.)
TEST_F(GpuSampling, UniformAtTheEndsDrawsTheFirstAndLastKeptToken) {
  std::mt19937 rng(41);
  size_t checked_last = 0, rows_seen = 0;
  for (int64_t vocab : {1000, 128256}) {
    for (Shape shape : {Shape::kPeaked, Shape::kFlat}) {
      const size_t rows = 48;
      const std::vector<float> logits = random_logits(rows, vocab, shape, rng);
      SamplingPlan plan;
      std::vector<int32_t> first, last;
      for (size_t r = 0; r < rows; ++r) {
        meta::RowSampling rs;
        rs.params.temperature = pick({0.5f, 1.0f}, rng);
        switch (r % 4) {
          case 0:
            rs.params.top_k = pick({3, 40, 700, 20000, 60000}, rng);
            break;
          case 1:
            rs.params.top_p = pick({0.3f, 0.8f}, rng);
            break;
          case 2:
            rs.params.min_p = pick({0.1f, 0.5f}, rng);
            break;
          default:
            rs.params.top_k = 50;
            rs.params.top_p = 0.6f;
            break;
        }
        std::vector<backend::cpu::TokenProb> dist;
        backend::cpu::sampling_distribution(
            std::span(logits).subspan(r * size_t(vocab), size_t(vocab)), rs.params, dist);
        for (double u : {0.0, std::nextafter(1.0, 0.0)}) {
          rs.uniform = u;
          plan.rows.push_back(rs);
        }
        first.push_back(dist.front().token);
        last.push_back(dist.back().prob >= 1e-6 ? dist.back().token : -1);
      }
      std::vector<float> doubled;  // each row twice: uniform 0, then just under 1
      for (size_t r = 0; r < rows; ++r)
        for (int k = 0; k < 2; ++k)
          doubled.insert(doubled.end(), logits.begin() + ptrdiff_t(r * size_t(vocab)),
                         logits.begin() + ptrdiff_t((r + 1) * size_t(vocab)));
      const SamplingOutput got = gpu(doubled, vocab, plan);
      for (size_t r = 0; r < rows; ++r) {
        ++rows_seen;
        EXPECT_EQ(got.tokens[2 * r], first[r]) << "vocab " << vocab << " row " << r << " uniform 0";
        if (last[r] < 0) continue;
        ++checked_last;
        EXPECT_EQ(got.tokens[2 * r + 1], last[r])
            << "vocab " << vocab << " row " << r << " uniform 1-";
      }
    }
  }
  EXPECT_GE(checked_last, rows_seen / 2) << "too few rows with a non-negligible last kept token";
}

// top_k = 1 (a unique maximum) and a vanishing top_p (any maximum, ties included: the lowest
// id) both keep one token: the greedy one, whatever the uniform and the penalties.
TEST_F(GpuSampling, TopKOneAndTinyTopPEqualGreedy) {
  std::mt19937 rng(51);
  std::mt19937_64 draws(52);
  for (int64_t vocab : {1000, 128256}) {
    const size_t rows = 96;
    std::vector<float> logits = random_logits(rows, vocab, Shape::kFlat, rng);
    SamplingPlan plan;
    for (size_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * size_t(vocab);
      meta::RowSampling rs;
      rs.params.temperature = pick({0.5f, 1.0f, 2.0f}, rng);
      if (r % 2) {
        rs.params.top_p = 1e-7f;
        const float top = *std::max_element(row, row + vocab) + 0.5f;
        for (int k = 0; k < 3; ++k) row[rng() % uint64_t(vocab)] = top;
      } else {
        rs.params.top_k = 1;
      }
      if (r % 3 == 0) {
        rs.params.repetition_penalty = 1.2f;
        rs.params.frequency_penalty = 0.3f;
        add_penalties(plan, rs, vocab, rng);
      }
      rs.uniform = backend::cpu::uniform01(draws);
      plan.rows.push_back(rs);
    }
    SamplingPlan greedy = plan;
    for (auto& rs : greedy.rows) rs.params.temperature = 0.0f;
    const SamplingOutput got = gpu(logits, vocab, plan);
    const SamplingOutput want = cpu(logits, vocab, greedy);
    for (size_t r = 0; r < rows; ++r) {
      if (r % 2 == 0) {  // top_k = 1 keeps ties with the maximum: only a unique one is greedy
        std::vector<float> l(logits.begin() + ptrdiff_t(r * size_t(vocab)),
                             logits.begin() + ptrdiff_t((r + 1) * size_t(vocab)));
        backend::cpu::apply_penalties(
            l, plan.rows[r].params,
            std::span(plan.penalties)
                .subspan(size_t(plan.rows[r].penalties_begin),
                         size_t(plan.rows[r].penalties_end - plan.rows[r].penalties_begin)));
        const float mx = *std::max_element(l.begin(), l.end());
        if (std::count(l.begin(), l.end(), mx) > 1) continue;
      }
      EXPECT_EQ(got.tokens[r], want.tokens[r]) << "vocab " << vocab << " row " << r;
    }
  }
}

// Same inputs, bitwise the same outputs; and a row's outputs do not depend on the rows beside it.
TEST_F(GpuSampling, DeterministicAndIndependentOfTheBatch) {
  std::mt19937 rng(61);
  std::mt19937_64 draws(62);
  const int64_t vocab = 128256;
  const size_t rows = 48;
  const std::vector<float> logits = random_logits(rows, vocab, Shape::kTied, rng);
  SamplingPlan plan = random_plan(rows, vocab, rng, draws);
  for (auto& rs : plan.rows) rs.params.logprobs = 5;
  const SamplingOutput a = gpu(logits, vocab, plan);
  const SamplingOutput b = gpu(logits, vocab, plan);
  ASSERT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(std::memcmp(a.logprobs.data(), b.logprobs.data(), rows * sizeof(float)), 0);
  ASSERT_EQ(std::memcmp(a.top_logprobs.data(), b.top_logprobs.data(),
                        a.top_logprobs.size() * sizeof(meta::TokenLogprob)),
            0);
  for (size_t r = 0; r < rows; r += 5) {
    SamplingPlan one;
    meta::RowSampling rs = plan.rows[r];
    one.penalties.assign(plan.penalties.begin() + rs.penalties_begin,
                         plan.penalties.begin() + rs.penalties_end);
    rs.penalties_end -= rs.penalties_begin;
    rs.penalties_begin = 0;
    one.rows.push_back(rs);
    const std::vector<float> l(logits.begin() + ptrdiff_t(r * size_t(vocab)),
                               logits.begin() + ptrdiff_t((r + 1) * size_t(vocab)));
    const SamplingOutput c = gpu(l, vocab, one);
    EXPECT_EQ(c.tokens[0], a.tokens[r]) << "row " << r;
    EXPECT_EQ(std::memcmp(&c.logprobs[0], &a.logprobs[r], sizeof(float)), 0) << "row " << r;
    for (int32_t j = 0; j < 5; ++j) {
      EXPECT_EQ(c.top_logprobs[size_t(j)].token, a.top_logprobs[r * 5 + size_t(j)].token) << r;
      EXPECT_EQ(c.top_logprobs[size_t(j)].logprob, a.top_logprobs[r * 5 + size_t(j)].logprob) << r;
    }
  }
}

// More top logprobs than the vocabulary: the rest of the row's entries are {-1, 0}.
TEST_F(GpuSampling, TopLogprobsPastTheVocabularyAreEmpty) {
  const int64_t vocab = 7;
  const std::vector<float> logits = {0.5f, -1.0f, 3.0f, 0.5f, 2.0f, -7.0f, 0.0f};
  SamplingPlan plan;
  meta::RowSampling rs;
  rs.params.temperature = 0.0f;
  rs.params.logprobs = 12;
  plan.rows.push_back(rs);
  const SamplingOutput got = gpu(logits, vocab, plan);
  const SamplingOutput want = cpu(logits, vocab, plan);
  ASSERT_EQ(got.top_n, 12);
  for (size_t j = 0; j < 12; ++j) {
    EXPECT_EQ(got.top_logprobs[j].token, want.top_logprobs[j].token) << j;
    EXPECT_NEAR(got.top_logprobs[j].logprob, want.top_logprobs[j].logprob, 1e-5) << j;
    if (j >= 7) {
      EXPECT_EQ(got.top_logprobs[j].token, -1) << j;
    }
  }
  EXPECT_EQ(got.top_logprobs[0].token, 2);
  EXPECT_EQ(got.top_logprobs[2].token, 0);  // 0.5 twice: the lower id first
  EXPECT_EQ(got.top_logprobs[3].token, 3);
}

// Rows the kernel cannot sample come back as codes (DeviceSampler turns them into failed
// checks, as the CPU reference's checks fail): a sampled row of -inf logits only, a token twice
// in a row's penalties. A greedy row of -inf logits takes id 0, as the CPU's argmax does.
TEST_F(GpuSampling, KernelReportsRowsItCannotSample) {
  const int64_t vocab = 64;
  std::vector<float> logits(3 * size_t(vocab), -std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(vocab + i)] = float(i % 5);
  std::vector<SamplingRow> rows(3);
  rows[0].temperature = 1.0f;
  rows[1].repetition_penalty = 1.2f;
  rows[1].penalties_end = 2;
  const std::vector<meta::PenaltyToken> penalties = {{7, 1}, {7, 1}};
  DeviceBuffer<float> d_logits = testing::to_device(logits);
  DeviceBuffer<SamplingRow> d_rows = testing::to_device(rows);
  DeviceBuffer<meta::PenaltyToken> d_penalties = testing::to_device(penalties);
  DeviceBuffer<int32_t> d_tokens(3);
  DeviceBuffer<float> d_logprobs(3);
  testing::poison(d_tokens);
  SamplingArgs args;
  args.logits = d_logits.get();
  args.vocab = vocab;
  args.num_rows = 3;
  args.rows = d_rows.get();
  args.penalties = d_penalties.get();
  args.any_penalties = true;
  args.any_sampled = true;
  args.tokens = d_tokens.get();
  args.logprobs = d_logprobs.get();
  launch_sampling(args, nullptr);
  const std::vector<int32_t> tokens = testing::to_host(d_tokens, 3);
  EXPECT_EQ(tokens[0], kSamplingNoFiniteLogit);
  EXPECT_EQ(tokens[1], kSamplingDuplicatePenalty);
  EXPECT_EQ(tokens[2], 0);
}

TEST_F(GpuSampling, RejectsWhatTheKernelCannotHold) {
  const std::vector<float> logits(16, 0.0f);
  SamplingPlan plan;
  meta::RowSampling rs;
  rs.params.logprobs = kMaxTopLogprobs + 1;
  plan.rows.push_back(rs);
  EXPECT_THROW(gpu(logits, 16, plan), InvalidArgument);
  plan.rows[0].params.logprobs = 1;
  DeviceBuffer<float> d = testing::to_device(logits);
  SamplingOutput out;
  EXPECT_THROW(sampler_.run(d.get(), kMaxSamplingVocab + 1, plan, out, stream_->get()),
               InvalidArgument);
}

}  // namespace
}  // namespace xy::cuda
