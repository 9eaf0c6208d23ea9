// A child xyserve process with its stdout and stderr on pipes that a test reads as they come,
// every wait bounded by a deadline (a hang fails the test; nothing sleeps).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "e2e/run_command.h"

namespace xy::testing {

class ChildProcess {
 public:
  using Clock = std::chrono::steady_clock;

  // Runs `xyserve args...`.
  explicit ChildProcess(const std::vector<std::string>& args) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      std::vector<std::string> all = {xyserve_bin()};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    fds_[0] = out[0];
    fds_[1] = err[0];
  }
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads both pipes until `done(out, err)` holds or both are closed or the deadline passes;
  // returns whether `done` held.
  template <class Done>
  bool read_until(Done&& done, Clock::time_point deadline) {
    while (!done(out_, err_)) {
      pollfd p[2];
      int n = 0;
      for (int i = 0; i < 2; ++i)
        if (fds_[i] >= 0) p[n++] = pollfd{fds_[i], POLLIN, 0};
      if (n == 0) return false;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || ::poll(p, nfds_t(n), int(left)) <= 0) return false;
      for (int j = 0; j < n; ++j) {
        if (!p[j].revents) continue;
        const int i = p[j].fd == fds_[0] ? 0 : 1;
        char buf[4096];
        const ssize_t got = ::read(fds_[i], buf, sizeof buf);
        if (got <= 0) {
          ::close(fds_[i]);
          fds_[i] = -1;
        } else {
          (i == 0 ? out_ : err_).append(buf, size_t(got));
        }
      }
    }
    return true;
  }
  // Reads to the end and returns the exit code; -1 if it has not ended by then (the
  // destructor kills it).
  int finish(Clock::time_point deadline) {
    read_until([](const std::string&, const std::string&) { return false; }, deadline);
    if (fds_[0] >= 0 || fds_[1] >= 0) return -1;  // still writing at the deadline: a hang
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void kill_now() { ::kill(pid_, SIGKILL); }

  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

 private:
  pid_t pid_ = -1;
  int fds_[2] = {-1, -1};
  std::string out_, err_;
};

}  // namespace xy::testing
