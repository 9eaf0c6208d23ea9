// The TCP communicator (the CPU's group across processes) on loopback, its "processes" being
// threads that each call make_tcp_group for their ranks: sums are bitwise the in-process
// group's, rank order, fp32 and bf16, on every rank, for groups of 2 to 4 ranks split over
// 1 to 4 processes; gathers concatenate in rank order; a rank that aborts, dies or hangs ends
// every other rank's collective with an error instead of a wait.
#include <gtest/gtest.h>

#include <future>
#include <random>
#include <thread>

#include "xyserve/parallel/in_process_communicator.h"
#include "xyserve/parallel/tcp_communicator.h"

namespace xy::parallel {
namespace {

using namespace std::chrono_literals;
using Comms = std::vector<std::unique_ptr<Communicator>>;

// A group of `size` ranks over `num_processes` callers of make_tcp_group (equal slices), each on
// its own thread as separate processes would be. Returns every rank's communicator, rank order.
Comms tcp_group(int32_t size, int32_t num_processes, std::chrono::milliseconds timeout = 20s) {
  auto hub = std::make_unique<TcpGroupHub>("127.0.0.1", size);
  const uint16_t port = hub->port();
  const int32_t per = size / num_processes;
  std::vector<std::future<Comms>> parts;
  for (int32_t p = 0; p < num_processes; ++p) {
    TcpGroupOptions o;
    o.hub_host = "127.0.0.1";
    o.hub_port = port;
    o.size = size;
    o.first_rank = p * per;
    o.num_ranks = per;
    o.timeout = timeout;
    std::unique_ptr<TcpGroupHub> h = p == 0 ? std::move(hub) : nullptr;
    parts.push_back(std::async(std::launch::async, [o, h = std::move(h)]() mutable { return make_tcp_group(o, std::move(h)); }));
  }
  Comms all;
  for (auto& part : parts)
    for (auto& c : part.get()) all.push_back(std::move(c));
  for (int32_t r = 0; r < size; ++r) EXPECT_EQ(all[size_t(r)]->rank(), r);
  return all;
}

// Runs body(r) for every rank on its own thread; a rank that throws aborts its communicator,
// as TensorParallelBackend's ranks do. Returns each rank's error ("" when none).
template <class Body>
std::vector<std::string> run_ranks(Comms& comms, Body body) {
  const int32_t size = int32_t(comms.size());
  std::vector<std::string> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
        if (comms[size_t(r)]) comms[size_t(r)]->abort();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

// Each rank's input: values of very different magnitudes, so that a different order of the
// additions would change the rounding.
std::vector<std::vector<float>> random_inputs(int32_t size, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<std::vector<float>> in(static_cast<size_t>(size), std::vector<float>(static_cast<size_t>(count)));
  for (int32_t r = 0; r < size; ++r)
    for (auto& x : in[size_t(r)]) x = u(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
  return in;
}

TEST(TcpCommunicatorTest, SumsAreBitwiseTheInProcessGroupsInRankOrderOnEveryRank) {
  for (const auto& [size, processes] : {std::pair{2, 1}, std::pair{2, 2}, std::pair{3, 3}, std::pair{4, 2}, std::pair{4, 4}}) {
    Comms tcp = tcp_group(size, processes);
    Comms local = make_in_process_group(size);
    const int64_t count = 1000;
    const auto in = random_inputs(size, count, uint64_t(size * 10 + processes));
    // The reference: rank 0 + rank 1 + ... in fp32, element by element.
    std::vector<float> want = in[0];
    for (int32_t r = 1; r < size; ++r)
      for (int64_t i = 0; i < count; ++i) want[size_t(i)] += in[size_t(r)][size_t(i)];
    std::vector<std::vector<float>> got_tcp = in, got_local = in;
    std::vector<std::vector<uint16_t>> bf_tcp(static_cast<size_t>(size)), bf_local;
    for (int32_t r = 0; r < size; ++r)
      for (float x : in[size_t(r)]) bf_tcp[size_t(r)].push_back(f32_to_bf16(x));
    bf_local = bf_tcp;
    for (const auto& e : run_ranks(tcp, [&](int32_t r) {
           // Two collectives in a row, and one of zero elements, as a step makes them.
           tcp[size_t(r)]->all_reduce_sum(got_tcp[size_t(r)].data(), count);
           tcp[size_t(r)]->all_reduce_sum(bf_tcp[size_t(r)].data(), count, DType::kBF16);
           tcp[size_t(r)]->all_reduce_sum(got_tcp[size_t(r)].data(), 0);
           local[size_t(r)]->all_reduce_sum(got_local[size_t(r)].data(), count);
           local[size_t(r)]->all_reduce_sum(bf_local[size_t(r)].data(), count, DType::kBF16);
         }))
      ASSERT_EQ(e, "");
    for (int32_t r = 0; r < size; ++r) {
      EXPECT_EQ(got_tcp[size_t(r)], want) << "size " << size << " processes " << processes << " rank " << r;
      EXPECT_EQ(got_tcp[size_t(r)], got_local[size_t(r)]);
      EXPECT_EQ(bf_tcp[size_t(r)], bf_local[size_t(r)]) << "bf16, rank " << r;
    }
  }
}

TEST(TcpCommunicatorTest, AllGatherConcatenatesTheSlicesInRankOrder) {
  const int32_t size = 4;
  Comms tcp = tcp_group(size, 2);
  const int64_t count = 333;
  const auto in = random_inputs(size, count, 5);
  std::vector<std::vector<float>> out(static_cast<size_t>(size), std::vector<float>(static_cast<size_t>(size * count)));
  for (const auto& e : run_ranks(tcp, [&](int32_t r) { tcp[size_t(r)]->all_gather(in[size_t(r)].data(), out[size_t(r)].data(), count); }))
    ASSERT_EQ(e, "");
  std::vector<float> want;
  for (const auto& slice : in) want.insert(want.end(), slice.begin(), slice.end());
  for (int32_t r = 0; r < size; ++r) EXPECT_EQ(out[size_t(r)], want) << "rank " << r;
}

TEST(TcpCommunicatorTest, ARankThatAbortsEndsEveryOtherRanksCollective) {
  for (const int32_t aborting : {0, 2}) {
    const int32_t size = 3;
    Comms tcp = tcp_group(size, 3);
    const auto errors = run_ranks(tcp, [&](int32_t r) {
      float x = 1.0f;
      tcp[size_t(r)]->all_reduce_sum(&x, 1);  // all meet once
      if (r == aborting) {
        tcp[size_t(r)]->abort();
        return;
      }
      tcp[size_t(r)]->all_reduce_sum(&x, 1);  // waits for the aborted rank
    });
    for (int32_t r = 0; r < size; ++r) {
      if (r == aborting) continue;
      EXPECT_NE(errors[size_t(r)].find("group aborted"), std::string::npos) << "rank " << r << ": " << errors[size_t(r)];
    }
    // The aborting rank's later calls fail at once too.
    float x = 0;
    EXPECT_THROW(tcp[size_t(aborting)]->all_reduce_sum(&x, 1), GroupAborted);
  }
}

TEST(TcpCommunicatorTest, ARankThatDisappearsEndsTheOthersCollectivesNamingIt) {
  const int32_t size = 3;
  Comms tcp = tcp_group(size, 3);
  const auto errors = run_ranks(tcp, [&](int32_t r) {
    float x = 1.0f;
    if (r == 2) {
      tcp[2].reset();  // its connection closes, as when its process is killed
      return;
    }
    tcp[size_t(r)]->all_reduce_sum(&x, 1);
  });
  EXPECT_NE(errors[0].find("lost rank 2"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("group aborted"), std::string::npos) << errors[1];
}

TEST(TcpCommunicatorTest, ARankThatHangsIsAnErrorNamingItAfterTheTimeout) {
  Comms tcp = tcp_group(2, 2, /*timeout=*/300ms);
  float x = 1.0f;
  try {
    tcp[0]->all_reduce_sum(&x, 1);  // rank 1 never comes
    ADD_FAILURE() << "no error";
  } catch (const GroupAborted& e) {
    ADD_FAILURE() << "a hung rank is this rank's error to report, not an abort: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("for rank 1"), std::string::npos) << e.what();
  }
}

TEST(TcpCommunicatorTest, RanksOutOfStepAreAnErrorNotAWrongSum) {
  Comms tcp = tcp_group(2, 2);
  const auto errors = run_ranks(tcp, [&](int32_t r) {
    std::vector<float> x(8, 1.0f);
    tcp[size_t(r)]->all_reduce_sum(x.data(), r == 0 ? 8 : 4);
  });
  EXPECT_NE(errors[0].find("out of step"), std::string::npos) << errors[0];
}

}  // namespace
}  // namespace xy::parallel
