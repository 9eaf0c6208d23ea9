// Blocking TCP for the nodes of a multi-node group (POSIX sockets; no dependency): an owned
// connection with whole-buffer sends and receives, receives bounded by a deadline, and
// length-prefixed frames; a listener; and a connect that retries while the other side is not
// up yet. Every connection has TCP_NODELAY (a collective's small messages must not wait for
// Nagle's timer) and keepalive (a vanished host ends a wait), and sends never raise SIGPIPE (a
// dead peer is an error, not a signal).
//
// Threading: one thread sends and one receives on a connection at a time; shutdown() may be
// called from any thread and makes the others' pending and later calls fail.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/common/error.h"

namespace xy::parallel {

using SteadyClock = std::chrono::steady_clock;
inline constexpr SteadyClock::time_point kNoDeadline = SteadyClock::time_point::max();

// The network failed: a peer closed, reset or did not answer in time, an address did not
// resolve, a port was taken. The message names the peer and what was being done.
class NetworkError : public Error {
 public:
  using Error::Error;
};

// A receive's deadline passed (a NetworkError, so that callers may treat both alike).
class NetworkTimeout : public NetworkError {
 public:
  using NetworkError::NetworkError;
};

class Socket {
 public:
  Socket() = default;
  Socket(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  ~Socket();
  Socket(Socket&& other) noexcept;
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::string& peer() const { return peer_; }  // "host:port", for messages

  // Sends every byte. Throws NetworkError naming the peer (closed, reset, shut down).
  void send_all(const void* data, size_t size);
  // Receives exactly `size` bytes, waiting until `deadline`. Returns false when the peer closed
  // the connection before the first byte (a clean end, which the caller words); throws
  // NetworkError when it closes mid-way or fails, NetworkTimeout at the deadline. `what` names
  // what is awaited, in messages ("node 1's hello").
  bool recv_all(void* data, size_t size, SteadyClock::time_point deadline, std::string_view what);

  // Frames: a little-endian uint32 length, then the bytes.
  void send_frame(std::span<const uint8_t> payload);
  // Into `payload` (reusing it). False on a clean close before the frame; throws as recv_all.
  bool recv_frame(std::vector<uint8_t>& payload, SteadyClock::time_point deadline, std::string_view what);

  // Whether bytes or a close are waiting (poll with no wait).
  bool readable() const;

  // Ends the connection both ways (shutdown(SHUT_RDWR)): this side's pending and later calls
  // fail, the peer reads an end. The descriptor stays open until destruction, so no other
  // thread can find it reused. Idempotent; thread-safe.
  void shutdown();

 private:
  void close();

  int fd_ = -1;
  std::string peer_;
};

class Listener {
 public:
  // Binds `host`:`port` (port 0: a free one, see port()) and listens. An empty host binds every
  // interface. Throws NetworkError naming the address: in use, not an address of this host.
  Listener(const std::string& host, uint16_t port, int backlog);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }  // "host:port", for messages

  // The next connection, waiting until `deadline`; throws NetworkTimeout at the deadline.
  Socket accept(SteadyClock::time_point deadline, std::string_view what);

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::string address_;
};

// Connects to `host`:`port`, retrying with back-off (50 ms doubling to 1 s) while the
// connection is refused or the host unreachable, so that a node may start before the one it
// joins. Throws NetworkError when `host` does not resolve, and NetworkTimeout naming the last
// failure when `deadline` passes. `what` names the other side in messages.
Socket connect_with_retry(const std::string& host, uint16_t port, SteadyClock::time_point deadline,
                          std::string_view what);

// Whether every address `host` resolves to is a loopback one (127.0.0.0/8, ::1).
bool is_loopback_host(const std::string& host);

}  // namespace xy::parallel
