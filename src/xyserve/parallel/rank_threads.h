// One thread per tensor-parallel rank, as one worker per GPU (issue 8): rank 0 runs on the
// calling thread, ranks 1..N-1 on persistent threads created once, so a step creates no threads.
// The ranks of a step meet in collectives, so each needs its own thread: they cannot share one.
//
// Threading: run() may be called from one thread at a time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace xy::parallel {

class RankThreads {
 public:
  explicit RankThreads(int32_t size);  // size >= 1
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int32_t size() const { return int32_t(workers_.size()) + 1; }

  // Calls body(r) on rank r's thread for every rank and returns when all have returned. When a
  // body throws, on_error(r) runs at once on that rank's thread (to abort the group the other
  // ranks may be waiting in: they then throw too); once every rank has returned, the first
  // error by rank that is not GroupAborted is rethrown, else the first GroupAborted.
  template <class Body, class OnError>
  void run(Body&& body, OnError&& on_error) {
    using B = std::remove_reference_t<Body>;
    using E = std::remove_reference_t<OnError>;
    Job job;
    job.body_ctx = &body;
    job.body = [](void* ctx, int32_t r) { (*static_cast<B*>(ctx))(r); };
    job.error_ctx = &on_error;
    job.on_error = [](void* ctx, int32_t r) { (*static_cast<E*>(ctx))(r); };
    run_job(job);
  }

 private:
  struct Job {
    void* body_ctx = nullptr;
    void (*body)(void*, int32_t) = nullptr;
    void* error_ctx = nullptr;
    void (*on_error)(void*, int32_t) = nullptr;
  };
  void run_job(const Job& job);
  void run_rank(int32_t rank);  // runs job_ for `rank`, keeping its error
  void worker_loop(int32_t rank);

  std::vector<std::thread> workers_;  // workers_[r - 1] runs rank r
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;  // guarded by mutex_; bumped per job
  int32_t num_pending_ = 0;  // guarded by mutex_: worker ranks still running the current job
  bool stopping_ = false;    // guarded by mutex_
  Job job_;                  // written before generation_ is bumped
  std::vector<std::exception_ptr> errors_;  // [size]; errors_[r] written by rank r's thread
};

}  // namespace xy::parallel
