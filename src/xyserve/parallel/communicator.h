// The collectives that tensor parallelism needs (DESIGN.md "Scale"; Megatron-LM, Shoeybi et al.
// 2019, section 3): one rank's handle on a group of `size` ranks that run the same steps on
// their shards of the model. Backends call it; the group behind it is in-process threads on the
// CPU (in_process_communicator.h) or NCCL on GPUs (nccl_communicator.h).
//
// Every rank must make the same calls in the same order with the same counts and dtypes, as
// NCCL requires. On the CPU a call blocks until every rank has made it and its result is in
// place; a device communicator enqueues the collective on its stream and returns (the data are
// device pointers, valid until the stream reaches the call).
//
// Threading: a rank's communicator is used by that rank's thread only, except abort(), which
// any thread may call.
#pragma once

#include <cstdint>

#include "xyserve/common/dtype.h"
#include "xyserve/common/error.h"

namespace xy::parallel {

// Thrown by a collective of a group that some rank aborted (after an error on that rank): the
// error to report is that rank's, not this one.
class GroupAborted : public Error {
 public:
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int32_t rank() const = 0;
  virtual int32_t size() const = 0;

  // data[i] = sum over ranks r, in rank order where the group fixes it, of rank r's data[i];
  // i in [0, count). In place; every rank gets the same values.
  void all_reduce_sum(float* data, int64_t count) { all_reduce_sum_impl(data, count, DType::kF32); }
  void all_reduce_sum(void* data, int64_t count, DType dtype) { all_reduce_sum_impl(data, count, dtype); }

  // recv[r * count + i] = rank r's send[i]: each rank's slice, concatenated in rank order.
  //   send: [count];  recv: [size * count]; they must not overlap.
  void all_gather(const float* send, float* recv, int64_t count) {
    all_gather_impl(send, recv, count, DType::kF32);
  }
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) {
    all_gather_impl(send, recv, count, dtype);
  }

  // Ends the group after an error on this rank, so that no rank waits forever for it: every
  // rank's pending and later collectives throw GroupAborted. Idempotent; the group cannot be
  // used again.
  virtual void abort() = 0;

 protected:
  virtual void all_reduce_sum_impl(void* data, int64_t count, DType dtype) = 0;
  virtual void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) = 0;
};

}  // namespace xy::parallel
