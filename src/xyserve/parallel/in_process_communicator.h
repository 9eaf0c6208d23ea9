// A group of ranks that are threads of one process: the CPU backend's tensor parallelism, and
// the stand-in for NCCL in the tests that check sharded = unsharded (issue 8). Each collective
// meets the other ranks at a barrier and reads their buffers directly.
//
// Sums run in a fixed order, rank 0 + rank 1 + ... + rank N-1, for every element, so results
// are deterministic and bitwise the same on every rank; bf16 and f16 sums accumulate in fp32 and
// round once. A rank that fails calls abort(): the others, waiting at a barrier or arriving at
// one later, throw GroupAborted instead of waiting forever.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "xyserve/parallel/communicator.h"

namespace xy::parallel {

// `size` communicators sharing one group, rank order; each is to be used by its rank's thread.
// Precondition: size >= 1.
std::vector<std::unique_ptr<Communicator>> make_in_process_group(int32_t size);

}  // namespace xy::parallel
