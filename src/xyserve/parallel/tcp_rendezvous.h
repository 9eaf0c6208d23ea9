// How the nodes (processes, usually on separate hosts) of a multi-node tensor-parallel group
// find each other (issue 8; DESIGN.md "Scale"), with torchrun's names: node 0 listens on
// master_addr:master_port; nodes 1..nnodes-1 connect to it (retrying until the timeout, so they
// may start first) and say their node rank and their fingerprint, the values every node must
// agree on (the model's config hash, the tensor-parallel size, nnodes, ...). Once all have
// joined, node 0 sends each an opaque blob (the group's id: an ncclUniqueId, or the address of
// the CPU's TCP communicator), and a barrier ends the rendezvous: every node has the blob.
//
// Errors are clear on both sides: a fingerprint that differs names the field and both values,
// on node 0 and on the node that sent it; a node rank given twice or out of range; the port in
// use; the master unreachable; a timeout names what was waited for. Node 0 tells the nodes
// already joined why it gave up, so none of them waits for its timeout.
//
// The connections stay open afterwards (NodeLinks): node 0 drives the other nodes through them
// (node_group.h), and each side notices when the other is gone.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xyserve/parallel/tcp_socket.h"

namespace xy::parallel {

struct RendezvousOptions {
  std::string master_addr = "127.0.0.1";
  uint16_t master_port = 29500;  // node 0 only: 0 picks a free port (RendezvousServer::port())
  int32_t nnodes = 1;
  int32_t node_rank = 0;
  // How long node 0 waits for the others to join and a node waits to reach node 0 and for the
  // blob; also the bound on any later wait that a live group always ends sooner.
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
};

// A value every node must agree on, by name: a flag's name ("--tensor-parallel-size") or what
// it describes ("model"); values are compared as strings.
struct FingerprintField {
  std::string name;
  std::string value;
};
using Fingerprint = std::vector<FingerprintField>;

// Thrown by the rendezvous for a fingerprint mismatch, a node rank given twice or out of
// range, or node 0 giving up (on every node, with the reason); network failures and timeouts
// are NetworkError.
class RendezvousError : public Error {
 public:
  using Error::Error;
};

// One node's connections to the others after the rendezvous.
class NodeLinks {
 public:
  NodeLinks() = default;
  NodeLinks(int32_t node_rank, int32_t nnodes, std::vector<Socket> links, std::vector<uint8_t> blob,
            std::chrono::milliseconds timeout);
  NodeLinks(NodeLinks&&) = default;
  NodeLinks& operator=(NodeLinks&&) = default;

  int32_t node_rank() const { return node_rank_; }
  int32_t nnodes() const { return nnodes_; }
  const std::vector<uint8_t>& blob() const { return blob_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // Node 0: the connection to node `node` (1 <= node < nnodes). Other nodes: to node 0 (node 0).
  Socket& link(int32_t node);

 private:
  int32_t node_rank_ = 0;
  int32_t nnodes_ = 1;
  std::vector<Socket> links_;  // node 0: [nnodes], links_[0] unused; others: [1], to node 0
  std::vector<uint8_t> blob_;
  std::chrono::milliseconds timeout_{0};
};

// Node 0's side. Binds at construction, so that a port in use fails at once and a chosen free
// port is known (port()) before anyone is waited for. With master_addr a loopback address it
// binds that address only; otherwise every interface (a host name may resolve to a different
// address on this host, such as Debian's 127.0.1.1, than on the others).
class RendezvousServer {
 public:
  explicit RendezvousServer(const RendezvousOptions& options);  // options.node_rank == 0

  uint16_t port() const { return listener_.port(); }
  const std::string& address() const { return listener_.address(); }

  // Waits for nodes 1..nnodes-1 to join with `fingerprint`, sends them `blob`, and returns after
  // the barrier. Throws RendezvousError or NetworkError (see above).
  NodeLinks wait_for_nodes(const Fingerprint& fingerprint, std::span<const uint8_t> blob);

 private:
  RendezvousOptions options_;
  Listener listener_;
};

// Where node 0 listens for master_addr (the rendezvous, and the CPU group's hub beside it):
// master_addr itself when it is a loopback address, else every interface ("").
std::string listen_host_for(const std::string& master_addr);

// A node other than 0: joins node 0's rendezvous with `fingerprint` and returns with the blob
// after the barrier. Throws RendezvousError (node 0 refused it, naming why) or NetworkError.
NodeLinks join_rendezvous(const RendezvousOptions& options, const Fingerprint& fingerprint);

}  // namespace xy::parallel
