#include "xyserve/backend/cpu/thread_pool.h"

#include <algorithm>

#include "xyserve/common/check.h"

namespace xy::backend::cpu {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(size_t(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain() {
  for (;;) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= num_items_) return;
    fn_(ctx_, i);
  }
}

void ThreadPool::run(int64_t num_items, void* ctx, Trampoline fn) {
  if (num_items <= 0) return;
  // Serial when there is nothing to share or when called from inside a body (nested).
  if (workers_.empty() || num_items == 1 || in_job_) {
    for (int64_t i = 0; i < num_items; ++i) fn(ctx, i);
    return;
  }
  in_job_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ctx_ = ctx;
    fn_ = fn;
    num_items_ = num_items;
    next_.store(0, std::memory_order_relaxed);
    num_busy_ = int(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  drain();
  {
    // Wait until every worker has left drain(): the job's ctx lives on the caller's stack.
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return num_busy_ == 0; });
  }
  in_job_ = false;
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    drain();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      XY_CHECK(num_busy_ > 0);
      if (--num_busy_ == 0) done_.notify_one();
    }
  }
}

}  // namespace xy::backend::cpu
