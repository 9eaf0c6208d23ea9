#include "xyserve/parallel/tcp_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <thread>

namespace xy::parallel {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Milliseconds for poll() until `deadline`: -1 for none, else at least 0.
int poll_timeout_ms(SteadyClock::time_point deadline) {
  if (deadline == kNoDeadline) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
  return int(std::clamp<int64_t>(left, 0, INT_MAX));
}

std::string format_address(const sockaddr* addr) {
  char host[NI_MAXHOST] = {0}, port[NI_MAXSERV] = {0};
  const socklen_t len = addr->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (getnameinfo(addr, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return addr->sa_family == AF_INET6 ? cat("[", host, "]:", port) : cat(host, ":", port);
}

struct AddrInfoDeleter {
  void operator()(addrinfo* a) const { freeaddrinfo(a); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// Throws NetworkError naming `host` when it does not resolve.
AddrInfoList resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) throw NetworkError(cat("cannot resolve '", host, "': ", gai_strerror(rc)));
  return AddrInfoList(list);
}

// No Nagle delay for a collective's small messages; keepalive probes so that a peer whose
// host vanished without closing (power, network) ends a wait after about a minute instead of
// never (30 s idle, then 3 probes 10 s apart).
void configure_connection(int fd) {
  const int one = 1, idle_s = 30, interval_s = 10, probes = 3;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
}

}  // namespace

Socket::~Socket() { close(); }

Socket::Socket(Socket&& other) noexcept : fd_(other.fd_), peer_(std::move(other.peer_)) { other.fd_ = -1; }

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    peer_ = std::move(other.peer_);
    other.fd_ = -1;
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Socket::shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void Socket::send_all(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::send(fd_, p, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw NetworkError(cat("sending to ", peer_, ": ", errno_text(errno)));
    }
    p += n;
    size -= size_t(n);
  }
}

bool Socket::recv_all(void* data, size_t size, SteadyClock::time_point deadline, std::string_view what) {
  char* p = static_cast<char*>(data);
  size_t got = 0;
  while (got < size) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, poll_timeout_ms(deadline));
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw NetworkError(cat("waiting for ", what, " from ", peer_, ": ", errno_text(errno)));
    }
    if (ready == 0) throw NetworkTimeout(cat("timed out waiting for ", what, " from ", peer_));
    const ssize_t n = ::recv(fd_, p + got, size - got, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw NetworkError(cat("receiving ", what, " from ", peer_, ": ", errno_text(errno)));
    }
    if (n == 0) {
      if (got == 0) return false;
      throw NetworkError(cat(peer_, " closed the connection in the middle of ", what));
    }
    got += size_t(n);
  }
  return true;
}

void Socket::send_frame(std::span<const uint8_t> payload) {
  const uint32_t size = uint32_t(payload.size());
  // One send for small frames: header and payload in one segment.
  if (payload.size() <= 4096) {
    uint8_t buf[4 + 4096];
    std::memcpy(buf, &size, 4);
    if (!payload.empty()) std::memcpy(buf + 4, payload.data(), payload.size());
    send_all(buf, 4 + payload.size());
    return;
  }
  send_all(&size, 4);
  send_all(payload.data(), payload.size());
}

bool Socket::recv_frame(std::vector<uint8_t>& payload, SteadyClock::time_point deadline, std::string_view what) {
  uint32_t size = 0;
  if (!recv_all(&size, 4, deadline, what)) return false;
  payload.resize(size);
  if (size > 0 && !recv_all(payload.data(), size, deadline, what))
    throw NetworkError(cat(peer_, " closed the connection in the middle of ", what));
  return true;
}

bool Socket::readable() const {
  pollfd pfd{fd_, POLLIN, 0};
  return ::poll(&pfd, 1, 0) > 0;
}

Listener::Listener(const std::string& host, uint16_t port, int backlog) {
  const AddrInfoList list = resolve(host, port, /*passive=*/true);
  int last_error = 0;
  std::string tried;
  for (const addrinfo* a = list.get(); a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = errno;
      continue;
    }
    // Rebinding a port whose last connections are in TIME_WAIT is fine; a live listener on it
    // still makes bind fail.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    tried = format_address(a->ai_addr);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, backlog) != 0) {
      last_error = errno;
      ::close(fd);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    fd_ = fd;
    address_ = format_address(reinterpret_cast<const sockaddr*>(&bound));
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(bound).sin6_port
                                              : reinterpret_cast<const sockaddr_in&>(bound).sin_port);
    return;
  }
  const std::string where = host.empty() ? cat("port ", port, " of every interface") : cat(host, ":", port);
  if (last_error == EADDRINUSE)
    throw NetworkError(cat("cannot listen on ", where, ": the port is in use (another xyserve or torchrun? "
                           "choose another port)"));
  if (last_error == EADDRNOTAVAIL)
    throw NetworkError(cat("cannot listen on ", where, ": not an address of this host"));
  throw NetworkError(cat("cannot listen on ", where, tried.empty() ? "" : cat(" (", tried, ")"), ": ",
                         errno_text(last_error)));
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Socket Listener::accept(SteadyClock::time_point deadline, std::string_view what) {
  for (;;) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, poll_timeout_ms(deadline));
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw NetworkError(cat("waiting for ", what, " on ", address_, ": ", errno_text(errno)));
    }
    if (ready == 0) throw NetworkTimeout(cat("timed out waiting for ", what, " on ", address_));
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      // The connection may have gone between poll and accept: wait for the next.
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      throw NetworkError(cat("accepting ", what, " on ", address_, ": ", errno_text(errno)));
    }
    configure_connection(fd);
    return Socket(fd, format_address(reinterpret_cast<const sockaddr*>(&peer)));
  }
}

Socket connect_with_retry(const std::string& host, uint16_t port, SteadyClock::time_point deadline,
                          std::string_view what) {
  const AddrInfoList list = resolve(host, port, /*passive=*/false);
  auto backoff = std::chrono::milliseconds(50);
  std::string last_failure;
  for (;;) {
    bool worth_retrying = false;  // some address answered "not up yet" rather than "never"
    for (const addrinfo* a = list.get(); a; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) throw NetworkError(cat("socket() for ", what, ": ", errno_text(errno)));
      int rc;
      do {
        rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
      } while (rc != 0 && errno == EINTR);
      if (rc == 0) {
        configure_connection(fd);
        return Socket(fd, format_address(a->ai_addr));
      }
      const int err = errno;
      ::close(fd);
      last_failure = cat(format_address(a->ai_addr), ": ", errno_text(err));
      worth_retrying |= err == ECONNREFUSED || err == ETIMEDOUT || err == ENETUNREACH || err == EHOSTUNREACH ||
                        err == ECONNRESET || err == EAGAIN;
    }
    if (!worth_retrying) throw NetworkError(cat("cannot connect to ", what, " at ", last_failure));
    const auto now = SteadyClock::now();
    if (now >= deadline)
      throw NetworkTimeout(cat("could not reach ", what, " at ", host, ":", port, " in time (last try: ",
                               last_failure, ")"));
    std::this_thread::sleep_for(std::min<SteadyClock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

bool is_loopback_host(const std::string& host) {
  AddrInfoList list;
  try {
    list = resolve(host, 0, /*passive=*/false);
  } catch (const NetworkError&) {
    return false;
  }
  for (const addrinfo* a = list.get(); a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      const uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr.s_addr);
      if ((ip >> 24) != 127) return false;
    } else if (a->ai_family == AF_INET6) {
      if (!IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr)) return false;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace xy::parallel
