// The multi-node rendezvous on loopback, the nodes as threads: every node gets node 0's blob
// and a working link; a fingerprint that differs, a node rank given twice, a port in use, an
// unreachable master and a node that never comes are clear errors naming what went wrong, on
// every side that waits; a node that starts before node 0 joins once it is up. Node 0 binds
// port 0, so no test can collide with another over a port.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <thread>

#include "xyserve/parallel/tcp_rendezvous.h"

namespace xy::parallel {
namespace {

using namespace std::chrono_literals;

RendezvousOptions options(int32_t nnodes, int32_t node_rank, uint16_t port,
                          std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  RendezvousOptions o;
  o.master_addr = "127.0.0.1";
  o.master_port = port;
  o.nnodes = nnodes;
  o.node_rank = node_rank;
  o.timeout = timeout;
  return o;
}

const Fingerprint kFingerprint = {{"model", "llama, config hash 1"}, {"--tensor-parallel-size", "4"}};

// The error a call throws, or "" when it returns.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::future<NodeLinks> join_async(const RendezvousOptions& o, const Fingerprint& f) {
  return std::async(std::launch::async, [o, f] { return join_rendezvous(o, f); });
}

TEST(TcpRendezvousTest, EveryNodeGetsNodeZerosBlobAndALinkToIt) {
  RendezvousServer server(options(3, 0, 0));
  ASSERT_NE(server.port(), 0);
  auto one = join_async(options(3, 1, server.port()), kFingerprint);
  auto two = join_async(options(3, 2, server.port()), kFingerprint);
  const std::vector<uint8_t> blob = {1, 2, 3, 0, 255};
  NodeLinks zero = server.wait_for_nodes(kFingerprint, blob);
  NodeLinks links[2] = {one.get(), two.get()};
  EXPECT_EQ(zero.blob(), blob);
  for (int32_t k = 1; k <= 2; ++k) {
    NodeLinks& l = links[k - 1];
    EXPECT_EQ(l.node_rank(), k);
    EXPECT_EQ(l.blob(), blob);
    // The links stay open and reach the right node, both ways.
    const std::vector<uint8_t> hello = {uint8_t(k)};
    zero.link(k).send_frame(hello);
    std::vector<uint8_t> got;
    ASSERT_TRUE(l.link(0).recv_frame(got, SteadyClock::now() + 10s, "a test frame"));
    EXPECT_EQ(got, hello);
    l.link(0).send_frame(hello);
    ASSERT_TRUE(zero.link(k).recv_frame(got, SteadyClock::now() + 10s, "a test frame"));
    EXPECT_EQ(got, hello);
  }
}

TEST(TcpRendezvousTest, AFingerprintThatDiffersFailsBothSidesNamingTheFieldAndBothValues) {
  RendezvousServer server(options(2, 0, 0));
  Fingerprint other = kFingerprint;
  other[1].value = "2";
  auto one = std::async(std::launch::async, [&] { return error_of([&] { join_rendezvous(options(2, 1, server.port()), other); }); });
  const std::string zero_error = error_of([&] { server.wait_for_nodes(kFingerprint, {}); });
  const std::string one_error = one.get();
  for (const std::string& e : {zero_error, one_error}) {
    EXPECT_NE(e.find("--tensor-parallel-size: node 1 has '2', node 0 has '4'"), std::string::npos) << e;
  }
}

TEST(TcpRendezvousTest, ANodeRankGivenTwiceFailsTheRendezvousOnEveryNode) {
  RendezvousServer server(options(3, 0, 0));
  auto first = std::async(std::launch::async, [&] {
    return error_of([&] { join_rendezvous(options(3, 1, server.port()), kFingerprint); });
  });
  auto second = std::async(std::launch::async, [&] {
    return error_of([&] { join_rendezvous(options(3, 1, server.port()), kFingerprint); });
  });
  const std::string zero_error = error_of([&] { server.wait_for_nodes(kFingerprint, {}); });
  EXPECT_NE(zero_error.find("node rank 1 joined twice"), std::string::npos) << zero_error;
  // One of the two was refused for the duplicate, the other told that node 0 gave up: neither
  // waits for its timeout.
  for (const std::string& e : {first.get(), second.get()}) {
    EXPECT_NE(e.find("node rank 1 joined twice"), std::string::npos) << e;
  }
}

TEST(TcpRendezvousTest, APortInUseIsAnErrorNamingIt) {
  RendezvousServer first(options(2, 0, 0));
  const std::string e = error_of([&] { RendezvousServer second(options(2, 0, first.port())); });
  EXPECT_NE(e.find(cat("127.0.0.1:", first.port())), std::string::npos) << e;
  EXPECT_NE(e.find("in use"), std::string::npos) << e;
}

// A port nothing listens on: one that was free a moment ago.
uint16_t closed_port() {
  RendezvousServer s(options(2, 0, 0));
  return s.port();
}

TEST(TcpRendezvousTest, AnUnreachableMasterIsATimeoutNamingItsAddress) {
  const uint16_t port = closed_port();
  const auto start = SteadyClock::now();
  const std::string e = error_of([&] { join_rendezvous(options(2, 1, port, 400ms), kFingerprint); });
  EXPECT_GE(SteadyClock::now() - start, 400ms) << "gave up before the timeout";
  EXPECT_NE(e.find(cat("could not reach node 0 at 127.0.0.1:", port)), std::string::npos) << e;
  EXPECT_NE(e.find("--dist-timeout"), std::string::npos) << e;
}

TEST(TcpRendezvousTest, NodeZeroTimesOutNamingTheNodesThatDidNotCome) {
  RendezvousServer server(options(3, 0, 0, 500ms));
  auto one = std::async(std::launch::async, [&] {
    return error_of([&] { join_rendezvous(options(3, 1, server.port()), kFingerprint); });
  });
  const std::string e = error_of([&] { server.wait_for_nodes(kFingerprint, {}); });
  EXPECT_NE(e.find("for node(s) 2 of --nnodes 3 to join"), std::string::npos) << e;
  // Node 1, which had joined, hears why at once rather than at its own timeout (20 s).
  const std::string one_error = one.get();
  EXPECT_NE(one_error.find("node 0 gave up the rendezvous"), std::string::npos) << one_error;
}

TEST(TcpRendezvousTest, ANodeThatStartsBeforeNodeZeroJoinsOnceItIsUp) {
  const uint16_t port = closed_port();
  auto one = join_async(options(2, 1, port), kFingerprint);  // retries: nothing listens yet
  RendezvousServer server(options(2, 0, port));
  const std::vector<uint8_t> blob = {42};
  server.wait_for_nodes(kFingerprint, blob);
  EXPECT_EQ(one.get().blob(), blob);
}

}  // namespace
}  // namespace xy::parallel
