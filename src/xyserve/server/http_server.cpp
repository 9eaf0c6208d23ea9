#include "xyserve/server/http_server.h"

#include <chrono>
#include <cstring>
#include <optional>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "xyserve/common/error.h"
#include "xyserve/common/log.h"

namespace xy::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

class Session;

bool is_http_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category();
}

// A minimal JSON error body for failures found before the request reached the application
// (it has OpenAI's shape; the application layer builds the same with error_body()).
std::string transport_error_json(const std::string& message, const char* type, const char* code) {
  std::string escaped;
  for (const char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += (c == '\n' ? ' ' : c);
  }
  return std::string("{\"error\":{\"message\":\"") + escaped + "\",\"type\":\"" + type +
         "\",\"param\":null,\"code\":" + (code ? std::string("\"") + code + "\"" : "null") + "}}";
}

}  // namespace

struct HttpServer::Shared : std::enable_shared_from_this<HttpServer::Shared> {
  Shared(net::io_context& io, HttpServerOptions o, Handler h, StatusObserver obs)
      : ioc(io), options(std::move(o)), handler(std::move(h)), observer(std::move(obs)),
        acceptor(net::make_strand(io)) {}

  void do_accept();
  void add(Session* s, std::weak_ptr<Session> w);
  void remove(Session* s);

  net::io_context& ioc;
  const HttpServerOptions options;
  const Handler handler;
  const StatusObserver observer;
  tcp::acceptor acceptor;
  std::atomic<bool> draining{false};
  mutable std::mutex mu;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
};

namespace {

class Session : public Exchange, public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<HttpServer::Shared> shared)
      : stream_(std::move(socket)), executor_(stream_.get_executor()), shared_(std::move(shared)) {}
  ~Session() override { shared_->remove(this); }

  void run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->do_read(); });
  }

  // Draining: a connection waiting for its next request closes now.
  void close_if_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->in_response_ && !self->closed_) self->close_now();
    });
  }

  // Exchange.
  const HttpRequestView& request() const override { return request_; }
  net::any_io_executor executor() const override { return executor_; }
  bool closed() const override { return closed_; }
  void on_close(std::function<void()> callback) override {
    if (closed_) {
      callback();
      return;
    }
    close_callback_ = std::move(callback);
  }
  void attach(std::shared_ptr<void> owner) override { attachment_ = std::move(owner); }

  void reply(HttpResponse r) override {
    status_ = r.status;
    if (closed_) {
      finish_response();
      return;
    }
    auto msg = std::make_shared<http::response<http::string_body>>();
    msg->version(11);
    msg->result(static_cast<unsigned>(r.status));
    msg->set(http::field::server, "xyserve");
    msg->set(http::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) msg->set(k, v);
    msg->keep_alive(keep_alive_ && !shared_->draining);
    if (request_.method == "HEAD") {
      msg->content_length(r.body.size());  // a HEAD response has the headers of the GET only
    } else {
      msg->body() = std::move(r.body);
      msg->prepare_payload();
    }
    reply_ = msg;
    stream_.expires_after(std::chrono::seconds(shared_->options.write_timeout_s));
    http::async_write(stream_, *msg, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->stream_.expires_never();
      self->reply_.reset();
      if (ec) self->close_now();
      self->finish_response();
    });
  }

  void begin_stream(const std::string& content_type) override {
    status_ = 200;
    if (closed_) return;
    head_ = std::make_unique<http::response<http::empty_body>>();
    head_->version(11);
    head_->result(http::status::ok);
    head_->set(http::field::server, "xyserve");
    head_->set(http::field::content_type, content_type);
    head_->set(http::field::cache_control, "no-cache");
    head_->keep_alive(keep_alive_ && !shared_->draining);
    head_->chunked(true);
    head_serializer_ = std::make_unique<http::response_serializer<http::empty_body>>(*head_);
    writing_ = true;
    stream_.expires_after(std::chrono::seconds(shared_->options.write_timeout_s));
    http::async_write_header(stream_, *head_serializer_,
                             [self = shared_from_this()](beast::error_code ec, size_t) {
                               self->on_stream_written(ec);
                             });
  }

  void send(std::string data) override {
    if (closed_ || data.empty()) return;  // an empty chunk would end the body
    pending_ += data;
    if (!writing_) write_next();
  }

  void end_stream() override {
    end_requested_ = true;
    if (closed_) {
      finish_response();
      return;
    }
    if (!writing_) write_next();
  }

 private:
  void do_read() {
    if (closed_) return;
    if (shared_->draining) {
      close_gracefully();
      return;
    }
    parser_.emplace();
    parser_->body_limit(shared_->options.max_body_bytes);
    parser_->header_limit(shared_->options.max_header_bytes);
    stream_.expires_after(std::chrono::seconds(buffer_.size() > 0 ? shared_->options.request_timeout_s
                                                                   : shared_->options.idle_timeout_s));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    stream_.expires_after(std::chrono::seconds(shared_->options.request_timeout_s));
    // curl sends Expect: 100-continue for bodies over 1 KiB and waits a second for it.
    const auto& h = parser_->get();
    const auto expect = h[http::field::expect];
    if (beast::iequals(expect, "100-continue") && !parser_->is_done()) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(kContinue),
                       [self = shared_from_this()](beast::error_code ec2, size_t) {
                         if (ec2) return self->close_now();
                         self->read_body();
                       });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->on_read_error(ec);
      self->on_request();
    });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return reply_transport_error(413, cat("request body exceeds the server's limit of ",
                                            shared_->options.max_body_bytes, " bytes"));
    }
    if (ec == http::error::header_limit) {
      return reply_transport_error(431, cat("request headers exceed the server's limit of ",
                                            shared_->options.max_header_bytes, " bytes"));
    }
    if (is_http_parse_error(ec) && ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return reply_transport_error(400, cat("malformed HTTP request: ", ec.message()));
    }
    close_now();  // EOF between requests, timeout, reset
  }

  void reply_transport_error(int status, const std::string& message) {
    request_ = HttpRequestView{};
    keep_alive_ = false;  // the rest of the bytes on the connection cannot be framed
    in_response_ = true;
    stream_.expires_never();
    HttpResponse r;
    r.status = status;
    r.body = transport_error_json(message, "invalid_request_error", nullptr);
    reply(std::move(r));
  }

  void on_request() {
    stream_.expires_never();
    http::request<http::string_body> req = parser_->release();
    parser_.reset();
    request_.method = std::string(req.method_string());
    request_.target = std::string(req.target());
    request_.body = std::move(req.body());
    request_.authorization = std::string(req[http::field::authorization]);
    keep_alive_ = req.keep_alive();
    in_response_ = true;
    status_ = 0;
    pending_.clear();
    end_requested_ = last_sent_ = false;
    start_watch();
    try {
      shared_->handler(shared_from_this());
    } catch (const std::exception& e) {
      log_warning("server: handler threw: ", e.what());
      if (status_ == 0) {
        HttpResponse r;
        r.status = 500;
        r.body = transport_error_json(e.what(), "server_error", nullptr);
        reply(std::move(r));
      }
    }
  }

  // While a response is in progress a read stays posted, so a client that goes away is seen
  // at once (EOF or reset) instead of at the next write. Bytes that arrive (a pipelined
  // request) are kept for the next read.
  void start_watch() {
    if (buffer_.size() > shared_->options.max_header_bytes + shared_->options.max_body_bytes) return;
    watch_pending_ = true;
    stream_.socket().async_read_some(
        net::buffer(watch_buf_),
        net::bind_executor(stream_.get_executor(), [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->on_watch(ec, n);
        }));
  }

  void on_watch(beast::error_code ec, size_t n) {
    watch_pending_ = false;
    if (!ec) {
      auto dst = buffer_.prepare(n);
      std::memcpy(dst.data(), watch_buf_.data(), n);
      buffer_.commit(n);
      if (in_response_) start_watch();
      else continue_after_response();
      return;
    }
    if (ec == net::error::operation_aborted && !in_response_ && !closed_) {
      continue_after_response();
      return;
    }
    close_now();
  }

  void write_next() {
    if (closed_) return;
    if (!pending_.empty()) {
      writing_buf_ = std::move(pending_);
      pending_.clear();
      writing_ = true;
      stream_.expires_after(std::chrono::seconds(shared_->options.write_timeout_s));
      net::async_write(stream_, http::make_chunk(net::buffer(writing_buf_)),
                       [self = shared_from_this()](beast::error_code ec, size_t) {
                         self->on_stream_written(ec);
                       });
    } else if (end_requested_ && !last_sent_) {
      last_sent_ = true;
      writing_ = true;
      stream_.expires_after(std::chrono::seconds(shared_->options.write_timeout_s));
      net::async_write(stream_, http::make_chunk_last(), [self = shared_from_this()](beast::error_code ec, size_t) {
        self->stream_.expires_never();
        self->writing_ = false;
        if (ec) self->close_now();
        self->finish_response();
      });
    }
  }

  void on_stream_written(beast::error_code ec) {
    stream_.expires_never();
    writing_ = false;
    if (ec) {
      close_now();
      if (end_requested_) finish_response();
      return;
    }
    write_next();
  }

  void finish_response() {
    if (!in_response_) return;
    in_response_ = false;
    if (shared_->observer && status_ != 0) shared_->observer(status_);
    close_callback_ = nullptr;
    attachment_.reset();
    head_serializer_.reset();
    head_.reset();
    if (closed_) return;
    if (watch_pending_) {
      stream_.socket().cancel();  // on_watch continues
      return;
    }
    continue_after_response();
  }

  void continue_after_response() {
    if (closed_) return;
    if (!keep_alive_ || shared_->draining) return close_gracefully();
    do_read();
  }

  // Half-close, then read what the client still sends until it closes too (bounded), so that
  // unread request bytes do not make the kernel reset the connection and drop our response.
  void close_gracefully() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(2));
    drain_input();
  }

  void drain_input() {
    stream_.async_read_some(net::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close_now();
      self->drain_input();
    });
  }

  void close_now() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    if (auto cb = std::move(close_callback_)) {
      close_callback_ = nullptr;
      if (in_response_) cb();
    }
  }

  beast::tcp_stream stream_;
  const net::any_io_executor executor_;  // the session's strand
  std::shared_ptr<HttpServer::Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequestView request_;
  bool keep_alive_ = true;
  bool in_response_ = false;
  bool closed_ = false;
  int status_ = 0;

  std::shared_ptr<http::response<http::string_body>> reply_;
  std::unique_ptr<http::response<http::empty_body>> head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> head_serializer_;
  std::string pending_, writing_buf_;
  bool writing_ = false, end_requested_ = false, last_sent_ = false;

  bool watch_pending_ = false;
  std::array<char, 1024> watch_buf_{};
  std::function<void()> close_callback_;
  std::shared_ptr<void> attachment_;
};

}  // namespace

void HttpServer::Shared::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
    if (!self->acceptor.is_open()) return;
    if (ec) {
      // Out of file descriptors and the like: log, and keep accepting (the peer retries).
      log_warning("server: accept failed: ", ec.message());
    } else if (!self->draining) {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);  // SSE chunks are small and latency-bound
      auto session = std::make_shared<Session>(std::move(socket), self);
      self->add(session.get(), session);
      session->run();
    }
    self->do_accept();
  });
}

void HttpServer::Shared::add(Session* s, std::weak_ptr<Session> w) {
  std::lock_guard<std::mutex> lock(mu);
  sessions.emplace(s, std::move(w));
}

void HttpServer::Shared::remove(Session* s) {
  std::lock_guard<std::mutex> lock(mu);
  sessions.erase(s);
}

HttpServer::HttpServer(net::io_context& ioc, HttpServerOptions options, Handler handler,
                       StatusObserver observer)
    : shared_(std::make_shared<Shared>(ioc, std::move(options), std::move(handler), std::move(observer))) {
  const auto& o = shared_->options;
  beast::error_code ec;
  const auto address = net::ip::make_address(o.host, ec);
  if (ec) throw InvalidArgument(cat("serve: --host '", o.host, "' is not an IP address: ", ec.message()));
  const tcp::endpoint endpoint(address, o.port);
  auto& a = shared_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error(cat("serve: cannot listen on ", o.host, ":", o.port, ": ", ec.message()));
  port_ = a.local_endpoint().port();
}

HttpServer::~HttpServer() = default;

void HttpServer::start() {
  net::dispatch(shared_->acceptor.get_executor(), [s = shared_] { s->do_accept(); });
}

void HttpServer::begin_drain() {
  draining_ = true;
  shared_->draining = true;
  net::post(shared_->acceptor.get_executor(), [s = shared_] {
    beast::error_code ec;
    s->acceptor.close(ec);
  });
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    for (auto& [_, w] : shared_->sessions)
      if (auto s = w.lock()) live.push_back(std::move(s));
  }
  for (auto& s : live) s->close_if_idle();
}

size_t HttpServer::num_sessions() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->sessions.size();
}

}  // namespace xy::server
