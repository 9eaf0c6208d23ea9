// The in-process communicator group and the rank threads: sums in rank order (deterministic,
// bitwise the same on every rank), gathers in rank order, and a failing rank that neither
// deadlocks the others nor loses its error.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include "xyserve/parallel/in_process_communicator.h"
#include "xyserve/parallel/rank_threads.h"

namespace xy::parallel {
namespace {

// Runs fn; a deadlock (fn still running after 20 s) ends the test binary with a message
// rather than hanging CI.
template <class Fn>
void with_deadline(Fn&& fn) {
  auto done = std::async(std::launch::async, std::forward<Fn>(fn));
  if (done.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    std::fprintf(stderr, "deadlock: the ranks did not return within 20 s\n");
    std::_Exit(1);
  }
  done.get();
}

// Runs body(r, comm) for every rank of a new in-process group of `size`, one thread per rank.
template <class Body>
void run_group(int32_t size, Body&& body) {
  with_deadline([&] {
    auto comms = make_in_process_group(size);
    RankThreads threads(size);
    threads.run([&](int32_t r) { body(r, *comms[size_t(r)]); },
                [&](int32_t r) { comms[size_t(r)]->abort(); });
  });
}

TEST(InProcessCommunicatorTest, AllReduceSumsInRankOrderOnEveryRank) {
  for (const int32_t size : {1, 2, 3, 4}) {
    std::mt19937_64 rng(size);
    std::vector<std::vector<float>> inputs(static_cast<size_t>(size));
    const int64_t count = 1000;
    // Magnitudes spread over 2^-20 .. 2^20 so that a different order would round differently.
    for (auto& in : inputs) {
      for (int64_t i = 0; i < count; ++i) {
        const double mantissa = double(rng() % 2000001) / 1e6 - 1.0;
        in.push_back(float(std::ldexp(mantissa, int(rng() % 41) - 20)));
      }
    }
    std::vector<float> expected(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      float s = inputs[0][size_t(i)];
      for (int32_t r = 1; r < size; ++r) s += inputs[size_t(r)][size_t(i)];
      expected[size_t(i)] = s;
    }
    auto results = inputs;
    run_group(size, [&](int32_t r, Communicator& comm) {
      EXPECT_EQ(comm.rank(), r);
      EXPECT_EQ(comm.size(), size);
      comm.all_reduce_sum(results[size_t(r)].data(), count);
    });
    for (int32_t r = 0; r < size; ++r) {
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(results[size_t(r)][size_t(i)]),
                  std::bit_cast<uint32_t>(expected[size_t(i)]))
            << "size " << size << " rank " << r << " element " << i;
      }
    }
  }
}

TEST(InProcessCommunicatorTest, AllReduceOrderIsRankOrderNotAnyOther) {
  // 2^25 + 1 rounds back to 2^25 in fp32: ((2^25 + 1) - 2^25) + 1 = 1 in rank order, while
  // e.g. (1 + 1) + 2^25 - 2^25 = 0 and 2^25 - 2^25 + 1 + 1 = 2.
  const std::vector<float> values = {33554432.0f, 1.0f, -33554432.0f, 1.0f};
  std::vector<float> results(4);
  run_group(4, [&](int32_t r, Communicator& comm) {
    float x = values[size_t(r)];
    comm.all_reduce_sum(&x, 1);
    results[size_t(r)] = x;
  });
  for (float x : results) EXPECT_EQ(x, 1.0f);
}

TEST(InProcessCommunicatorTest, Bf16AllReduceAccumulatesInFp32AndRoundsOnce) {
  // bf16 has 8 significant bits: 256 + 1 + 1 is 258 summed in fp32, while rounding after each
  // add would give 256 (256 + 1 rounds to 256 in bf16, to even).
  const std::vector<float> values = {256.0f, 1.0f, 1.0f};
  std::vector<uint16_t> results(3);
  run_group(3, [&](int32_t r, Communicator& comm) {
    uint16_t x = f32_to_bf16(values[size_t(r)]);
    comm.all_reduce_sum(&x, 1, DType::kBF16);
    results[size_t(r)] = x;
  });
  for (uint16_t x : results) EXPECT_EQ(bf16_to_f32(x), 258.0f);
}

TEST(InProcessCommunicatorTest, AllGatherConcatenatesInRankOrder) {
  for (const int32_t size : {1, 2, 4}) {
    const int64_t count = 37;
    std::vector<std::vector<float>> gathered(static_cast<size_t>(size));
    run_group(size, [&](int32_t r, Communicator& comm) {
      std::vector<float> send(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) send[size_t(i)] = float(r * 1000 + i);
      gathered[size_t(r)].resize(size_t(size * count));
      comm.all_gather(send.data(), gathered[size_t(r)].data(), count);
    });
    for (int32_t r = 0; r < size; ++r) {
      for (int32_t from = 0; from < size; ++from)
        for (int64_t i = 0; i < count; ++i)
          ASSERT_EQ(gathered[size_t(r)][size_t(from * count + i)], float(from * 1000 + i))
              << "size " << size << " rank " << r;
    }
  }
}

TEST(InProcessCommunicatorTest, BackToBackCollectivesDoNotMixSteps) {
  // Many collectives of changing sizes, each rank reusing its buffers at once: a rank that
  // raced ahead into the next collective would corrupt what a slower one still reads.
  const int32_t size = 4;
  std::vector<int64_t> failures(size_t(size), 0);
  run_group(size, [&](int32_t r, Communicator& comm) {
    std::vector<float> buf, gathered;
    for (int step = 0; step < 2000; ++step) {
      const int64_t count = 1 + step % 17;
      buf.assign(size_t(count), float(r + step));
      comm.all_reduce_sum(buf.data(), count);
      const float want = float(size * step + size * (size - 1) / 2);
      for (float x : buf) failures[size_t(r)] += x != want;
      gathered.resize(size_t(size * count));
      comm.all_gather(buf.data(), gathered.data(), count);
      for (float x : gathered) failures[size_t(r)] += x != want;
    }
  });
  for (int32_t r = 0; r < size; ++r) EXPECT_EQ(failures[size_t(r)], 0) << "rank " << r;
}

TEST(InProcessCommunicatorTest, AFailingRankAbortsTheGroupAndItsErrorIsRethrown) {
  for (const int32_t failing : {0, 1, 3}) {
    std::vector<int> aborted(4, 0);
    auto comms = make_in_process_group(4);
    with_deadline([&] {
      RankThreads threads(4);
      try {
        threads.run(
            [&](int32_t r) {
              float x = 1.0f;
              comms[size_t(r)]->all_reduce_sum(&x, 1);  // all ranks meet once
              if (r == failing) throw std::runtime_error("rank " + std::to_string(r) + " broke");
              try {
                comms[size_t(r)]->all_reduce_sum(&x, 1);  // waits for the failed rank forever
              } catch (const GroupAborted&) {
                aborted[size_t(r)] = 1;
                throw;
              }
            },
            [&](int32_t r) { comms[size_t(r)]->abort(); });
        ADD_FAILURE() << "run() returned normally";
      } catch (const GroupAborted& e) {
        ADD_FAILURE() << "the failed rank's error was lost: " << e.what();
      } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), "rank " + std::to_string(failing) + " broke");
      }
    });
    for (int32_t r = 0; r < 4; ++r) EXPECT_EQ(aborted[size_t(r)], r != failing) << "rank " << r;
    // The group stays aborted.
    float x = 0;
    EXPECT_THROW(comms[0]->all_reduce_sum(&x, 1), GroupAborted);
  }
}

TEST(InProcessCommunicatorTest, AnAbortFromOutsideIsRethrownAsGroupAborted) {
  auto comms = make_in_process_group(2);
  with_deadline([&] {
    RankThreads threads(2);
    EXPECT_THROW(threads.run(
                     [&](int32_t r) {
                       if (r == 1) comms[1]->abort();
                       float x = 0;
                       comms[size_t(r)]->all_reduce_sum(&x, 1);
                     },
                     [](int32_t) {}),
                 GroupAborted);
  });
}

TEST(RankThreadsTest, EachRankRunsOnItsOwnThreadAndRankZeroOnTheCaller) {
  RankThreads threads(4);
  std::vector<std::thread::id> first(4), second(4);
  threads.run([&](int32_t r) { first[size_t(r)] = std::this_thread::get_id(); }, [](int32_t) {});
  threads.run([&](int32_t r) { second[size_t(r)] = std::this_thread::get_id(); }, [](int32_t) {});
  EXPECT_EQ(first[0], std::this_thread::get_id());
  EXPECT_EQ(std::set<std::thread::id>(first.begin(), first.end()).size(), 4u);
  EXPECT_EQ(first, second);  // persistent threads, the same rank on the same thread
}

}  // namespace
}  // namespace xy::parallel
