// The HTTP/1.1 transport: an acceptor and one session per connection on Boost.Beast/Asio, all
// asynchronous on a few I/O threads (no thread per connection). A session reads a request
// (bounded header and body sizes), hands it to the application as an Exchange, and writes
// what the application answers: one full response, or a stream of chunks (chunked transfer
// encoding; SSE for the API). Keep-alive and pipelining follow HTTP/1.1.
//
// A client that goes away while its response is in progress is noticed at once (a read stays
// posted on the socket during the response), and the application hears it through
// Exchange::on_close, so it can cancel the work behind the response.
//
// Threading: each session runs on its own strand; every Exchange method must be called on
// that strand (post to executor() from other threads). HttpServer's public methods are
// thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace xy::server {

struct HttpRequestView {
  std::string method;         // "GET", "POST", ...
  std::string target;         // as sent, with any query string
  std::string body;
  std::string authorization;  // the Authorization header, "" when absent
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Allow, ...)
};

// One request and its response, as the application sees it. All methods on executor() only.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual const HttpRequestView& request() const = 0;
  virtual boost::asio::any_io_executor executor() const = 0;

  // A complete response. Precondition: nothing was answered yet.
  virtual void reply(HttpResponse response) = 0;
  // A streamed response: headers now (200, chunked), then send() pieces, then end_stream().
  virtual void begin_stream(const std::string& content_type) = 0;
  virtual void send(std::string data) = 0;  // queued; written in order
  virtual void end_stream() = 0;

  // Whether the client went away (writes are dropped from then on).
  virtual bool closed() const = 0;
  // Called once, on executor(), if the client goes away before the response is complete.
  virtual void on_close(std::function<void()> callback) = 0;
  // Something that must live until the response is complete (the work that produces it).
  virtual void attach(std::shared_ptr<void> owner) = 0;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0: any free port (read it back from port())
  uint64_t max_body_bytes = 32ull << 20;   // over it: 413
  uint32_t max_header_bytes = 64u << 10;   // over it: 431
  int32_t request_timeout_s = 60;          // to read one request once it started
  int32_t idle_timeout_s = 600;            // a keep-alive connection with no request
  int32_t write_timeout_s = 120;           // one write that the client does not drain
};

class HttpServer {
 public:
  using Handler = std::function<void(std::shared_ptr<Exchange>)>;
  // Called for each complete response with its status (for metrics).
  using StatusObserver = std::function<void(int)>;

  // Binds and listens; throws xy::Error naming the address when that fails.
  HttpServer(boost::asio::io_context& ioc, HttpServerOptions options, Handler handler,
             StatusObserver observer = {});
  ~HttpServer();

  void start();        // begins accepting
  uint16_t port() const { return port_; }

  // Graceful stop: no new connections; idle connections close; a connection with a response
  // in progress closes once that response is complete.
  void begin_drain();
  bool draining() const { return draining_.load(); }
  size_t num_sessions() const;

  // Internal (sessions).
  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
  uint16_t port_ = 0;
  std::atomic<bool> draining_{false};
};

}  // namespace xy::server
