#include "xyserve/parallel/tcp_rendezvous.h"

#include <algorithm>

#include "xyserve/common/check.h"
#include "xyserve/common/log.h"
#include "xyserve/parallel/wire_format.h"

namespace xy::parallel {
namespace {

// The messages of the rendezvous, each one frame:
//   node k -> 0: hello   = magic, version, node rank, fingerprint
//   0 -> node k: welcome = kWelcome, blob      (once every node has joined)
//             or refuse  = kRefuse, reason     (at once, or when node 0 gives up)
//   node k -> 0: ack     = kAck                (it has the blob)
//   0 -> node k: go      = kGo                 (every node has it: the barrier)
constexpr uint32_t kHelloMagic = 0x56525958;  // "XYRV"
constexpr uint8_t kRendezvousVersion = 1;
enum : uint8_t { kWelcome = 1, kRefuse = 2, kAck = 3, kGo = 4 };

struct Hello {
  uint32_t magic = 0;
  uint8_t version = 0;
  int32_t node_rank = -1;
  Fingerprint fingerprint;
};

std::vector<uint8_t> encode_hello(int32_t node_rank, const Fingerprint& fingerprint) {
  std::vector<uint8_t> out;
  WireWriter w(out);
  w.put(kHelloMagic);
  w.put(kRendezvousVersion);
  w.put(node_rank);
  w.put(uint32_t(fingerprint.size()));
  for (const FingerprintField& f : fingerprint) {
    w.put_string(f.name);
    w.put_string(f.value);
  }
  return out;
}

Hello decode_hello(std::span<const uint8_t> bytes, const std::string& what) {
  WireReader r(bytes, what);
  Hello h;
  h.magic = r.get<uint32_t>();
  if (h.magic != kHelloMagic) return h;
  h.version = r.get<uint8_t>();
  if (h.version != kRendezvousVersion) return h;
  h.node_rank = r.get<int32_t>();
  const uint32_t n = r.get_count(8);
  for (uint32_t i = 0; i < n; ++i) {
    FingerprintField f;
    f.name = r.get_string();
    f.value = r.get_string();
    h.fingerprint.push_back(std::move(f));
  }
  r.expect_end();
  return h;
}

std::vector<uint8_t> one_byte(uint8_t kind) { return {kind}; }

std::vector<uint8_t> encode_refuse(const std::string& reason) {
  std::vector<uint8_t> out;
  WireWriter w(out);
  w.put(uint8_t(kRefuse));
  w.put_string(reason);
  return out;
}

// The first field that differs, as "<name>: node k has 'a', node 0 has 'b'"; empty if none.
std::string fingerprint_difference(const Fingerprint& mine, const Fingerprint& theirs, int32_t node) {
  auto find = [](const Fingerprint& f, const std::string& name) -> const std::string* {
    for (const FingerprintField& x : f)
      if (x.name == name) return &x.value;
    return nullptr;
  };
  auto quote = [](const std::string* v) { return v ? cat("'", *v, "'") : std::string("nothing"); };
  for (const FingerprintField& f : mine) {
    const std::string* other = find(theirs, f.name);
    if (!other || *other != f.value)
      return cat(f.name, ": node ", node, " has ", quote(other), ", node 0 has ", quote(&f.value));
  }
  for (const FingerprintField& f : theirs) {
    if (!find(mine, f.name)) return cat(f.name, ": node ", node, " has ", quote(&f.value), ", node 0 has nothing");
  }
  return {};
}

double seconds(std::chrono::milliseconds d) { return double(d.count()) / 1000.0; }

}  // namespace

NodeLinks::NodeLinks(int32_t node_rank, int32_t nnodes, std::vector<Socket> links, std::vector<uint8_t> blob,
                     std::chrono::milliseconds timeout)
    : node_rank_(node_rank), nnodes_(nnodes), links_(std::move(links)), blob_(std::move(blob)), timeout_(timeout) {}

Socket& NodeLinks::link(int32_t node) {
  if (node_rank_ == 0) {
    XY_CHECK(node >= 1 && node < nnodes_, "link to node ", node, " of ", nnodes_);
    return links_[size_t(node)];
  }
  XY_CHECK(node == 0, "node ", node_rank_, " has a link to node 0 only, not ", node);
  return links_[0];
}

std::string listen_host_for(const std::string& master_addr) {
  return is_loopback_host(master_addr) ? master_addr : std::string();
}

RendezvousServer::RendezvousServer(const RendezvousOptions& options)
    : options_(options),
      listener_(listen_host_for(options.master_addr), options.master_port,
                /*backlog=*/std::max(16, options.nnodes)) {
  XY_CHECK(options.node_rank == 0 && options.nnodes >= 1, "rendezvous server on node ", options.node_rank);
}

NodeLinks RendezvousServer::wait_for_nodes(const Fingerprint& fingerprint, std::span<const uint8_t> blob) {
  const int32_t nnodes = options_.nnodes;
  const auto deadline = SteadyClock::now() + options_.timeout;
  std::vector<Socket> links(static_cast<size_t>(nnodes));
  auto missing = [&] {
    std::string s;
    for (int32_t k = 1; k < nnodes; ++k)
      if (!links[size_t(k)].valid()) s += cat(s.empty() ? "" : ", ", k);
    return s;
  };
  // Refuses `socket` with `reason` and fails the rendezvous with it.
  auto refuse = [&](Socket& socket, const std::string& reason) {
    try {
      socket.send_frame(encode_refuse(reason));
    } catch (const NetworkError&) {
    }
    throw RendezvousError(reason);
  };
  try {
    int32_t num_joined = 0;
    std::vector<uint8_t> frame;
    while (num_joined < nnodes - 1) {
      auto timed_out = [&] {
        return NetworkTimeout(cat("rendezvous: node 0 waited ", seconds(options_.timeout), " s (the --dist-timeout) on ",
                                  listener_.address(), " for node(s) ", missing(), " of --nnodes ", nnodes,
                                  " to join"));
      };
      Socket s;
      try {
        s = listener_.accept(deadline, "nodes to join");
      } catch (const NetworkTimeout&) {
        throw timed_out();
      }
      try {
        if (!s.recv_frame(frame, deadline, "a joining node's hello")) continue;  // gone before saying who
      } catch (const NetworkTimeout&) {
        throw timed_out();
      } catch (const NetworkError& e) {
        log_warning("rendezvous: ignoring a connection that failed before saying who it is: ", e.what());
        continue;
      }
      Hello hello;
      try {
        hello = decode_hello(frame, cat("the hello from ", s.peer()));
      } catch (const Error&) {
        hello.magic = 0;
      }
      if (hello.magic != kHelloMagic) {
        log_warning("rendezvous: ignoring a connection from ", s.peer(), ": not an xyserve node");
        continue;
      }
      if (hello.version != kRendezvousVersion)
        refuse(s, cat("rendezvous: the node at ", s.peer(), " speaks protocol version ", int(hello.version),
                      ", node 0 version ", int(kRendezvousVersion), ": run the same xyserve on every node"));
      const int32_t k = hello.node_rank;
      if (k < 1 || k >= nnodes)
        refuse(s, cat("rendezvous: the node at ", s.peer(), " says --node-rank ", k, ", outside [1, ", nnodes,
                      ") for --nnodes ", nnodes));
      if (links[size_t(k)].valid())
        refuse(s, cat("rendezvous: node rank ", k, " joined twice, from ", links[size_t(k)].peer(), " and from ",
                      s.peer(), ": every node needs its own --node-rank"));
      const std::string diff = fingerprint_difference(fingerprint, hello.fingerprint, k);
      if (!diff.empty())
        refuse(s, cat("rendezvous: node ", k, " (", s.peer(), ") differs from node 0 in ", diff,
                      "; every node must run the same model with the same flags"));
      links[size_t(k)] = std::move(s);
      ++num_joined;
    }
    std::vector<uint8_t> welcome;
    WireWriter w(welcome);
    w.put(uint8_t(kWelcome));
    w.put_bytes(blob);
    for (int32_t k = 1; k < nnodes; ++k) links[size_t(k)].send_frame(welcome);
    for (int32_t k = 1; k < nnodes; ++k) {
      const std::string what = cat("node ", k, "'s acknowledgement of the group id");
      if (!links[size_t(k)].recv_frame(frame, deadline, what) || frame != one_byte(kAck))
        throw RendezvousError(cat("rendezvous: node ", k, " (", links[size_t(k)].peer(),
                                  ") left before acknowledging the group id"));
    }
    for (int32_t k = 1; k < nnodes; ++k) links[size_t(k)].send_frame(one_byte(kGo));
  } catch (const Error& e) {
    // The nodes already joined would otherwise wait for their timeout.
    for (int32_t k = 1; k < nnodes; ++k) {
      if (!links[size_t(k)].valid()) continue;
      try {
        links[size_t(k)].send_frame(encode_refuse(cat("node 0 gave up the rendezvous: ", e.what())));
      } catch (const NetworkError&) {
      }
    }
    throw;
  }
  return NodeLinks(0, nnodes, std::move(links), std::vector<uint8_t>(blob.begin(), blob.end()), options_.timeout);
}

NodeLinks join_rendezvous(const RendezvousOptions& options, const Fingerprint& fingerprint) {
  const int32_t k = options.node_rank;
  XY_CHECK(k >= 1 && k < options.nnodes, "joining as node ", k, " of ", options.nnodes);
  const auto deadline = SteadyClock::now() + options.timeout;
  const std::string master = cat(options.master_addr, ":", options.master_port);
  Socket s;
  try {
    s = connect_with_retry(options.master_addr, options.master_port, deadline, "node 0");
  } catch (const NetworkTimeout& e) {
    throw NetworkTimeout(cat("rendezvous: node ", k, " could not reach node 0 at ", master, " within ",
                             seconds(options.timeout), " s (the --dist-timeout): ", e.what(),
                             "; is node 0 running, with this --master-addr and --master-port?"));
  }
  s.send_frame(encode_hello(k, fingerprint));
  std::vector<uint8_t> frame;
  auto receive = [&](const std::string& what) {
    try {
      if (!s.recv_frame(frame, deadline, what))
        throw RendezvousError(cat("rendezvous: node 0 (", master, ") closed the connection while node ", k,
                                  " waited for ", what));
    } catch (const NetworkTimeout&) {
      throw NetworkTimeout(cat("rendezvous: node ", k, " waited ", seconds(options.timeout),
                               " s (the --dist-timeout) for ", what, " from node 0 (", master, ")"));
    }
    WireReader r(frame, cat("node 0's ", what));
    const uint8_t kind = r.get<uint8_t>();
    if (kind == kRefuse) throw RendezvousError(r.get_string());
    return kind;
  };
  const std::string group_what = cat("the group id (sent once all ", options.nnodes, " nodes have joined)");
  if (receive(group_what) != kWelcome)
    throw RendezvousError(cat("rendezvous: node 0 (", master, ") sent node ", k, " an unexpected message"));
  WireReader r(frame, "node 0's welcome");
  r.get<uint8_t>();
  std::vector<uint8_t> blob = r.get_bytes();
  r.expect_end();
  s.send_frame(one_byte(kAck));
  if (receive("the end of the rendezvous (every node has the group id)") != kGo)
    throw RendezvousError(cat("rendezvous: node 0 (", master, ") sent node ", k, " an unexpected message"));
  std::vector<Socket> links;
  links.push_back(std::move(s));
  return NodeLinks(k, options.nnodes, std::move(links), std::move(blob), options.timeout);
}

}  // namespace xy::parallel
