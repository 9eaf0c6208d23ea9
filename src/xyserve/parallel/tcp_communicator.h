// A tensor-parallel group whose ranks live in different processes, over TCP: what the CPU
// backend runs when --nnodes > 1 (CUDA runs NCCL there). A star around rank 0, the hub: every
// other rank keeps one connection to it; in a collective each sends its buffer to the hub,
// which combines them and sends every rank the result.
//
// all_reduce_sum adds in the in-process group's order, rank 0 + rank 1 + ... + rank N-1 for
// every element, in fp32 (bf16 and f16 rounded once at the end), so results are bitwise those
// of make_in_process_group, on every rank: --nnodes does not change a greedy output. The star
// moves every byte through the hub, which is fine for the CPU backend and the tests; a ring
// would be the next step if a CPU group across hosts ever needed speed.
//
// Failures: a rank that fails calls abort(), which shuts its connections; the ranks waiting on
// it read the close and throw GroupAborted (the error to report is that rank's), and the hub,
// aborting in turn, releases everyone else. A rank killed outright looks the same. A rank that
// waits longer than the group's timeout for another throws Error naming it, so a hung peer
// never hangs the group.
//
// Threading: as Communicator: each rank's communicator on its rank's thread; abort() from any.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xyserve/parallel/communicator.h"
#include "xyserve/parallel/tcp_socket.h"

namespace xy::parallel {

// Rank 0's listener: opened before the rendezvous, so that its port can travel in the
// rendezvous blob to the ranks that will connect. `bind_host` as Listener's (empty: every
// interface).
class TcpGroupHub {
 public:
  TcpGroupHub(const std::string& bind_host, int32_t size);
  uint16_t port() const { return listener_.port(); }
  Listener& listener() { return listener_; }

 private:
  Listener listener_;
};

struct TcpGroupOptions {
  std::string hub_host;  // where ranks > 0 reach the hub (the rendezvous's master address)
  uint16_t hub_port = 0;
  int32_t size = 1;        // ranks in the group, over every process
  int32_t first_rank = 0;  // this process's ranks: [first_rank, first_rank + num_ranks)
  int32_t num_ranks = 1;
  // For connecting, and for any one wait inside a collective.
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
};

// This process's communicators of the group, in rank order. Ranks > 0 connect to the hub; the
// process with rank 0 passes `hub` (which it opened before telling the others its port) and
// returns once every rank of every process has connected. Throws NetworkError (naming the
// ranks that did not connect in time) or Error.
std::vector<std::unique_ptr<Communicator>> make_tcp_group(const TcpGroupOptions& options,
                                                          std::unique_ptr<TcpGroupHub> hub);

}  // namespace xy::parallel
