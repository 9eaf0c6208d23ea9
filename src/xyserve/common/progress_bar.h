// A one-line progress bar on stderr for long operations such as loading weights: bytes done,
// percent, rate. It draws only when stderr is a terminal (so logs, pipes and CI output stay
// clean) and redraws at most every 100 ms. One thread drives a bar; it is not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace xy {

// "512 B", "1.50 KiB", "3.71 GiB".
std::string format_bytes(uint64_t bytes);

class ProgressBar {
 public:
  // `label` leads the line ("loading weights"). `out` is where it draws; null disables it.
  explicit ProgressBar(std::string label, FILE* out = default_output());
  ~ProgressBar();  // ends the line if anything was drawn
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Records progress; redraws if 100 ms passed since the last draw or the work is complete.
  void update(uint64_t done, uint64_t total);
  // Draws the final state and ends the line (idempotent).
  void finish();

  // For LoadOptions::on_progress. The bar must outlive the callback's use.
  std::function<void(size_t, size_t)> callback() {
    return [this](size_t done, size_t total) { update(done, total); };
  }

  // stderr when it is a terminal, else null (no drawing).
  static FILE* default_output();

  // The line for a state, `width` columns wide at most (pure, for tests):
  // "loading weights [#######.......]  52%  3.71 GiB / 7.13 GiB  1.23 GiB/s".
  static std::string render(const std::string& label, uint64_t done, uint64_t total,
                            double seconds, int width);

 private:
  void draw();

  std::string label_;
  FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  uint64_t done_ = 0, total_ = 0;
  bool drawn_ = false, finished_ = false;
};

}  // namespace xy
