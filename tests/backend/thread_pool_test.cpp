#include "xyserve/backend/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace xy::backend::cpu {
namespace {

TEST(ThreadPool, RunsEveryItemExactlyOnceAcrossManyJobs) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int job = 0; job < 200; ++job) {
      const int64_t n = job % 37;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t i) { hits[size_t(i)].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "threads " << threads;
    }
  }
}

TEST(ThreadPool, NestedParallelForRunsSerially) {
  ThreadPool pool(2);
  std::atomic<int> total{0};
  pool.parallel_for(4, [&](int64_t) { pool.parallel_for(5, [&](int64_t) { total += 1; }); });
  EXPECT_EQ(total.load(), 20);
}

}  // namespace
}  // namespace xy::backend::cpu
