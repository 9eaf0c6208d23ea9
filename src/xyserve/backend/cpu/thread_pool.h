// A small persistent pool of worker threads for the CPU backend's parallel loops (GEMM column
// blocks, attention tasks). Threads are created once; a parallel_for wakes them, so a step
// creates no threads and allocates nothing.
//
// Threading: parallel_for may be called from one thread at a time (the engine thread); the
// calling thread works too. Nested parallel_for calls from inside a body run serially.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace xy::backend::cpu {

class ThreadPool {
 public:
  // num_threads counts the calling thread: 1 runs everything inline; 0 means
  // std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return int(workers_.size()) + 1; }

  // Calls body(i) for every i in [0, num_items), spread over the threads; returns when all are
  // done. Items are claimed one at a time from a shared counter, so uneven items balance.
  template <class Body>
  void parallel_for(int64_t num_items, Body&& body) {
    using Fn = std::remove_reference_t<Body>;
    run(num_items, &body, [](void* ctx, int64_t i) { (*static_cast<Fn*>(ctx))(i); });
  }

 private:
  using Trampoline = void (*)(void*, int64_t);
  void run(int64_t num_items, void* ctx, Trampoline fn);
  void worker_loop();
  void drain();  // claims and runs items of the current job until none are left

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;  // guarded by mutex_; bumped per job
  bool stopping_ = false;    // guarded by mutex_
  int num_busy_ = 0;         // workers inside drain() for the current job; guarded by mutex_

  // The current job; written before generation_ is bumped, read by workers after they see it.
  void* ctx_ = nullptr;
  Trampoline fn_ = nullptr;
  int64_t num_items_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> in_job_{false};  // set while a job runs: a nested call runs serially
};

}  // namespace xy::backend::cpu
