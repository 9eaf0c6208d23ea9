#include "xyserve/parallel/rank_threads.h"

#include "xyserve/common/check.h"
#include "xyserve/parallel/communicator.h"

namespace xy::parallel {
namespace {

bool is_group_aborted(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const GroupAborted&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

RankThreads::RankThreads(int32_t size) : errors_(size_t(size)) {
  XY_CHECK(size >= 1, "rank threads ", size);
  for (int32_t r = 1; r < size; ++r) workers_.emplace_back([this, r] { worker_loop(r); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void RankThreads::run_rank(int32_t rank) {
  try {
    job_.body(job_.body_ctx, rank);
  } catch (...) {
    errors_[size_t(rank)] = std::current_exception();
    job_.on_error(job_.error_ctx, rank);
  }
}

void RankThreads::worker_loop(int32_t rank) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    run_rank(rank);
    std::lock_guard lock(mutex_);
    if (--num_pending_ == 0) done_.notify_one();
  }
}

void RankThreads::run_job(const Job& job) {
  for (auto& e : errors_) e = nullptr;
  {
    std::lock_guard lock(mutex_);
    job_ = job;
    num_pending_ = int32_t(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  run_rank(0);
  {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return num_pending_ == 0; });
  }
  std::exception_ptr first;
  for (const auto& e : errors_) {
    if (!e) continue;
    if (!is_group_aborted(e)) std::rethrow_exception(e);
    if (!first) first = e;
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace xy::parallel
