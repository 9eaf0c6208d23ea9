#include "xyserve/parallel/in_process_communicator.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "xyserve/common/check.h"

namespace xy::parallel {
namespace {

// What a rank offers to a collective: its buffer, read by every rank between the collective's
// two barriers.
struct Offer {
  const void* data = nullptr;
  int64_t count = 0;
  DType dtype = DType::kF32;
};

// The state the ranks of one group share: a reusable barrier that an abort breaks, and one
// offer slot per rank.
class Group {
 public:
  explicit Group(int32_t size) : size_(size), offers_(size_t(size)) {}

  int32_t size() const { return size_; }
  Offer& offer(int32_t rank) { return offers_[size_t(rank)]; }

  // Returns once every rank has arrived; throws GroupAborted if the group is aborted first.
  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    if (aborted_) throw aborted_error();
    const uint64_t generation = generation_;
    if (++num_arrived_ == size_) {
      num_arrived_ = 0;
      ++generation_;
      all_arrived_.notify_all();
      return;
    }
    all_arrived_.wait(lock, [&] { return generation_ != generation || aborted_; });
    if (generation_ == generation) throw aborted_error();
  }

  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    all_arrived_.notify_all();
  }

 private:
  static GroupAborted aborted_error() {
    return GroupAborted("tensor-parallel group aborted: another rank failed");
  }

  const int32_t size_;
  std::vector<Offer> offers_;  // offers_[r] written by rank r only, outside the reading window
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  int32_t num_arrived_ = 0;  // guarded by mutex_
  uint64_t generation_ = 0;  // guarded by mutex_; bumped each time every rank has arrived
  bool aborted_ = false;     // guarded by mutex_
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> group, int32_t rank)
      : group_(std::move(group)), rank_(rank) {}

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return group_->size(); }
  void abort() override { group_->abort(); }

 protected:
  // Every rank sums every rank's buffer into its own scratch between the two barriers (reading
  // only), then writes its own buffer after the second, when nobody reads it any more.
  void all_reduce_sum_impl(void* data, int64_t count, DType dtype) override {
    offer(data, count, dtype);
    group_->arrive_and_wait();
    check_offers_match(count, dtype);
    sum_.resize(size_t(count));
    float* sum = sum_.data();
    const Offer& first = group_->offer(0);
    for (int64_t i = 0; i < count; ++i) sum[i] = load_as_f32(first.data, dtype, i);
    for (int32_t r = 1; r < size(); ++r) {
      const Offer& o = group_->offer(r);
      if (dtype == DType::kF32) {
        const float* x = static_cast<const float*>(o.data);
        for (int64_t i = 0; i < count; ++i) sum[i] += x[i];
      } else {
        for (int64_t i = 0; i < count; ++i) sum[i] += load_as_f32(o.data, dtype, i);
      }
    }
    group_->arrive_and_wait();
    store_f32_as(sum, data, dtype, count);
  }

  // Every rank copies every slice into its own recv between the barriers; after the second, a
  // rank may reuse its send buffer.
  void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) override {
    offer(send, count, dtype);
    group_->arrive_and_wait();
    check_offers_match(count, dtype);
    const size_t slice_bytes = size_t(count) * dtype_size(dtype);
    for (int32_t r = 0; r < size(); ++r) {
      std::memcpy(static_cast<char*>(recv) + size_t(r) * slice_bytes, group_->offer(r).data,
                  slice_bytes);
    }
    group_->arrive_and_wait();
  }

 private:
  void offer(const void* data, int64_t count, DType dtype) {
    XY_CHECK(count >= 0 && (data != nullptr || count == 0), "collective of ", count, " elements");
    group_->offer(rank_) = Offer{data, count, dtype};
  }

  // A mismatch is a bug in the caller: the ranks are not running the same step.
  void check_offers_match(int64_t count, DType dtype) const {
    for (int32_t r = 0; r < size(); ++r) {
      const Offer& o = group_->offer(r);
      XY_CHECK(o.count == count && o.dtype == dtype, "rank ", rank_, " offers ", count, " ",
               dtype_name(dtype), ", rank ", r, " offers ", o.count, " ", dtype_name(o.dtype));
    }
  }

  std::shared_ptr<Group> group_;
  int32_t rank_;
  std::vector<float> sum_;  // grown once and reused
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_in_process_group(int32_t size) {
  XY_CHECK(size >= 1, "group size ", size);
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int32_t r = 0; r < size; ++r) ranks.push_back(std::make_unique<InProcessCommunicator>(group, r));
  return ranks;
}

}  // namespace xy::parallel
