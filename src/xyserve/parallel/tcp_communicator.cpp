#include "xyserve/parallel/tcp_communicator.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>

#include "xyserve/common/check.h"
#include "xyserve/common/log.h"
#include "xyserve/parallel/wire_format.h"

namespace xy::parallel {
namespace {

constexpr uint32_t kGroupHelloMagic = 0x50435958;  // "XYCP": a rank's first message to the hub

// What precedes every collective's payload, both ways, so that each side checks that the
// other is in the same call: ranks out of step are a bug (or different xyserve builds), named
// as such instead of summing the wrong buffers.
enum class Op : uint8_t { kAllReduceSum = 1, kAllGather = 2 };
struct Header {
  uint8_t op = 0;
  uint8_t dtype = 0;
  uint16_t zero = 0;
  uint32_t seq = 0;  // the collective's number in this group, from 0 (wraps)
  int64_t count = 0;
};
static_assert(sizeof(Header) == 16);

const char* op_name(uint8_t op) { return op == uint8_t(Op::kAllReduceSum) ? "all_reduce_sum" : "all_gather"; }

double seconds(std::chrono::milliseconds d) { return double(d.count()) / 1000.0; }

// What both kinds of rank share: the aborted flag and how a failed connection is reported.
class TcpCommunicatorBase : public Communicator {
 public:
  TcpCommunicatorBase(int32_t rank, int32_t size, std::chrono::milliseconds timeout)
      : rank_(rank), size_(size), timeout_(timeout) {}

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return size_; }

 protected:
  void check_usable() const {
    if (aborted_.load()) throw GroupAborted(cat("tensor-parallel group aborted: rank ", rank_, " stopped"));
  }
  // A connection to `who` failed or closed: after this rank's own abort that is the abort;
  // otherwise the other side failed or was killed, and its error is the one to report.
  [[noreturn]] void lost(const std::string& who, const std::string& detail) const {
    if (aborted_.load()) throw GroupAborted(cat("tensor-parallel group aborted: rank ", rank_, " stopped"));
    throw GroupAborted(cat("tensor-parallel group aborted: rank ", rank_, " lost ", who, " (", detail,
                           "): it failed or was killed"));
  }
  // The header the other side sent must be this call's.
  void check_header(const Header& got, const Header& want, const std::string& who) const {
    if (got.op != want.op || got.dtype != want.dtype || got.count != want.count || got.seq != want.seq)
      throw Error(cat("tensor-parallel ranks out of step: rank ", rank_, " is in ", op_name(want.op), " #", want.seq,
                      " of ", want.count, " ", dtype_name(DType(want.dtype)), ", ", who, " in ", op_name(got.op),
                      " #", got.seq, " of ", got.count, " ", dtype_name(DType(got.dtype))));
  }
  Header next_header(Op op, DType dtype, int64_t count) {
    XY_CHECK(count >= 0, "collective of ", count, " elements");
    return Header{uint8_t(op), uint8_t(dtype), 0, seq_++, count};
  }

  const int32_t rank_;
  const int32_t size_;
  const std::chrono::milliseconds timeout_;
  std::atomic<bool> aborted_{false};

 private:
  uint32_t seq_ = 0;
};

// Rank 0: gathers from every rank, combines, sends back.
class HubCommunicator final : public TcpCommunicatorBase {
 public:
  HubCommunicator(std::vector<Socket> peers, int32_t size, std::chrono::milliseconds timeout)
      : TcpCommunicatorBase(0, size, timeout), peers_(std::move(peers)), staging_(size_t(size)) {}

  void abort() override {
    if (aborted_.exchange(true)) return;
    for (Socket& s : peers_) s.shutdown();
  }

 protected:
  void all_reduce_sum_impl(void* data, int64_t count, DType dtype) override {
    check_usable();
    const Header h = next_header(Op::kAllReduceSum, dtype, count);
    const size_t bytes = size_t(count) * dtype_size(dtype);
    std::vector<uint8_t*> dst(size_t(size_), nullptr);
    for (int32_t r = 1; r < size_; ++r) {
      staging_[size_t(r)].resize(bytes);
      dst[size_t(r)] = staging_[size_t(r)].data();
    }
    gather(h, bytes, dst);
    // Rank order, as the in-process group: sum = rank 0; sum += rank 1; ...
    sum_.resize(size_t(count));
    float* sum = sum_.data();
    for (int64_t i = 0; i < count; ++i) sum[i] = load_as_f32(data, dtype, i);
    for (int32_t r = 1; r < size_; ++r) {
      const void* x = staging_[size_t(r)].data();
      if (dtype == DType::kF32) {
        const float* xf = static_cast<const float*>(x);
        for (int64_t i = 0; i < count; ++i) sum[i] += xf[i];
      } else {
        for (int64_t i = 0; i < count; ++i) sum[i] += load_as_f32(x, dtype, i);
      }
    }
    store_f32_as(sum, data, dtype, count);
    send_to_all(h, data, bytes);
  }

  void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) override {
    check_usable();
    const Header h = next_header(Op::kAllGather, dtype, count);
    const size_t slice = size_t(count) * dtype_size(dtype);
    std::vector<uint8_t*> dst(size_t(size_), nullptr);
    for (int32_t r = 1; r < size_; ++r) dst[size_t(r)] = static_cast<uint8_t*>(recv) + size_t(r) * slice;
    if (slice) std::memcpy(recv, send, slice);
    gather(h, slice, dst);
    send_to_all(Header{h.op, h.dtype, 0, h.seq, h.count * size_}, recv, slice * size_t(size_));
  }

 private:
  // Receives every rank's header and `bytes` of payload into dst[r], from whichever rank is
  // ready, so that a rank that closes is seen at once whatever the others do.
  void gather(const Header& want, size_t bytes, const std::vector<uint8_t*>& dst) {
    struct Progress {
      Header header;
      size_t got = 0;  // bytes of header then payload received
    };
    std::vector<Progress> progress(static_cast<size_t>(size_));
    const size_t total = sizeof(Header) + bytes;
    std::vector<pollfd> fds;
    std::vector<int32_t> fd_rank;
    auto deadline = SteadyClock::now() + timeout_;
    for (;;) {
      fds.clear();
      fd_rank.clear();
      for (int32_t r = 1; r < size_; ++r) {
        if (progress[size_t(r)].got == total) continue;
        fds.push_back(pollfd{peers_[size_t(r)].fd(), POLLIN, 0});
        fd_rank.push_back(r);
      }
      if (fds.empty()) return;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
      const int ready = ::poll(fds.data(), fds.size(), int(std::clamp<int64_t>(left, 0, INT_MAX)));
      if (ready < 0) {
        if (errno == EINTR) continue;
        throw NetworkError(cat("rank 0: poll in ", op_name(want.op), ": ", std::strerror(errno)));
      }
      if (ready == 0) {
        check_usable();
        throw Error(cat("rank 0 waited ", seconds(timeout_), " s (the --dist-timeout) in ", op_name(want.op),
                        " #", want.seq, " for rank ", fd_rank[0], " (", peers_[size_t(fd_rank[0])].peer(),
                        "), which neither sent its data nor closed"));
      }
      for (size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        const int32_t r = fd_rank[i];
        Progress& p = progress[size_t(r)];
        uint8_t* target = p.got < sizeof(Header) ? reinterpret_cast<uint8_t*>(&p.header) + p.got
                                                 : dst[size_t(r)] + (p.got - sizeof(Header));
        const size_t want_now = p.got < sizeof(Header) ? sizeof(Header) - p.got : total - p.got;
        const ssize_t n = ::recv(fds[i].fd, target, want_now, MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR || errno == EAGAIN) continue;
          lost(cat("rank ", r), cat(peers_[size_t(r)].peer(), ": ", std::strerror(errno)));
        }
        if (n == 0) lost(cat("rank ", r), cat(peers_[size_t(r)].peer(), " closed the connection"));
        p.got += size_t(n);
        if (p.got == sizeof(Header)) check_header(p.header, want, cat("rank ", r));
      }
    }
  }

  void send_to_all(const Header& h, const void* data, size_t bytes) {
    for (int32_t r = 1; r < size_; ++r) {
      try {
        peers_[size_t(r)].send_all(&h, sizeof h);
        if (bytes) peers_[size_t(r)].send_all(data, bytes);
      } catch (const NetworkError& e) {
        lost(cat("rank ", r), e.what());
      }
    }
  }

  std::vector<Socket> peers_;  // peers_[r]: the connection to rank r (peers_[0] unused)
  std::vector<std::vector<uint8_t>> staging_;  // [size]: each rank's summands, reused
  std::vector<float> sum_;                     // reused
};

// A rank > 0: sends its buffer to the hub and receives the result.
class PeerCommunicator final : public TcpCommunicatorBase {
 public:
  PeerCommunicator(Socket hub, int32_t rank, int32_t size, std::chrono::milliseconds timeout)
      : TcpCommunicatorBase(rank, size, timeout), hub_(std::move(hub)) {}

  void abort() override {
    if (aborted_.exchange(true)) return;
    hub_.shutdown();
  }

 protected:
  void all_reduce_sum_impl(void* data, int64_t count, DType dtype) override {
    check_usable();
    const Header h = next_header(Op::kAllReduceSum, dtype, count);
    const size_t bytes = size_t(count) * dtype_size(dtype);
    exchange(h, data, bytes, h, data, bytes);
  }

  void all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) override {
    check_usable();
    const Header h = next_header(Op::kAllGather, dtype, count);
    const size_t slice = size_t(count) * dtype_size(dtype);
    exchange(h, send, slice, Header{h.op, h.dtype, 0, h.seq, h.count * size_}, recv, slice * size_t(size_));
  }

 private:
  void exchange(const Header& out, const void* send, size_t send_bytes, const Header& want, void* recv,
                size_t recv_bytes) {
    const std::string what = cat(op_name(out.op), " #", out.seq, "'s result");
    try {
      hub_.send_all(&out, sizeof out);
      if (send_bytes) hub_.send_all(send, send_bytes);
      Header got;
      const auto deadline = SteadyClock::now() + timeout_;
      if (!hub_.recv_all(&got, sizeof got, deadline, what)) lost("rank 0", cat(hub_.peer(), " closed the connection"));
      check_header(got, want, "rank 0");
      if (recv_bytes && !hub_.recv_all(recv, recv_bytes, deadline, what))
        lost("rank 0", cat(hub_.peer(), " closed the connection"));
    } catch (const NetworkTimeout&) {
      check_usable();
      throw Error(cat("rank ", rank_, " waited ", seconds(timeout_), " s (the --dist-timeout) for ", what,
                      " from rank 0 (", hub_.peer(), "), which neither sent it nor closed"));
    } catch (const GroupAborted&) {
      throw;
    } catch (const NetworkError& e) {
      lost("rank 0", e.what());
    }
  }

  Socket hub_;
};

}  // namespace

TcpGroupHub::TcpGroupHub(const std::string& bind_host, int32_t size)
    : listener_(bind_host, 0, std::max(16, size)) {}

std::vector<std::unique_ptr<Communicator>> make_tcp_group(const TcpGroupOptions& o, std::unique_ptr<TcpGroupHub> hub) {
  XY_CHECK(o.size >= 1 && o.first_rank >= 0 && o.num_ranks >= 1 && o.first_rank + o.num_ranks <= o.size,
           "ranks [", o.first_rank, ", +", o.num_ranks, ") of ", o.size);
  XY_CHECK((o.first_rank == 0) == bool(hub), "the process with rank 0, and only it, brings the hub");
  const auto deadline = SteadyClock::now() + o.timeout;
  const uint16_t port = hub ? hub->port() : o.hub_port;
  // This process's ranks > 0 connect first: the hub's listen backlog completes their
  // connections before it accepts them, below.
  std::vector<Socket> to_hub;
  for (int32_t r = std::max(1, o.first_rank); r < o.first_rank + o.num_ranks; ++r) {
    Socket s = connect_with_retry(o.hub_host, port, deadline, "rank 0 of the tensor-parallel group");
    std::vector<uint8_t> hello;
    WireWriter w(hello);
    w.put(kGroupHelloMagic);
    w.put(r);
    w.put(o.size);
    s.send_frame(hello);
    to_hub.push_back(std::move(s));
  }
  std::vector<std::unique_ptr<Communicator>> comms;
  if (hub) {
    std::vector<Socket> peers(static_cast<size_t>(o.size));
    int32_t num_connected = 0;
    std::vector<uint8_t> frame;
    while (num_connected < o.size - 1) {
      Socket s;
      try {
        s = hub->listener().accept(deadline, "the tensor-parallel ranks to connect");
        if (!s.recv_frame(frame, deadline, "a rank's hello")) continue;
      } catch (const NetworkTimeout&) {
        std::string missing;
        for (int32_t r = 1; r < o.size; ++r)
          if (!peers[size_t(r)].valid()) missing += cat(missing.empty() ? "" : ", ", r);
        throw NetworkTimeout(cat("rank 0 waited ", seconds(o.timeout), " s (the --dist-timeout) on ",
                                 hub->listener().address(), " for tensor-parallel rank(s) ", missing, " of ", o.size,
                                 " to connect"));
      }
      WireReader r(frame, cat("the hello of a rank from ", s.peer()));
      if (frame.size() != 12 || r.get<uint32_t>() != kGroupHelloMagic) {
        log_warning("tensor-parallel group: ignoring a connection from ", s.peer(), ": not an xyserve rank");
        continue;
      }
      const int32_t rank = r.get<int32_t>();
      const int32_t size = r.get<int32_t>();
      if (size != o.size || rank < 1 || rank >= o.size || peers[size_t(rank)].valid())
        throw Error(cat("tensor-parallel group: ", s.peer(), " joined as rank ", rank, " of ", size,
                        "; rank 0 expects ranks 1..", o.size - 1, " of ", o.size, ", each once"));
      peers[size_t(rank)] = std::move(s);
      ++num_connected;
    }
    comms.push_back(std::make_unique<HubCommunicator>(std::move(peers), o.size, o.timeout));
  }
  for (size_t i = 0; i < to_hub.size(); ++i) {
    const int32_t r = std::max(1, o.first_rank) + int32_t(i);
    comms.push_back(std::make_unique<PeerCommunicator>(std::move(to_hub[i]), r, o.size, o.timeout));
  }
  return comms;
}

}  // namespace xy::parallel
