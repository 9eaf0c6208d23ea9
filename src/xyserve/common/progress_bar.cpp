#include "xyserve/common/progress_bar.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>

namespace xy {

namespace {
// Redraw interval: fast enough to look live, slow enough that drawing costs nothing.
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
constexpr int kDefaultWidth = 80;

int terminal_width(FILE* out) {
  struct winsize ws {};
  if (out && ::ioctl(::fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return kDefaultWidth;
}
}  // namespace

std::string format_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = double(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[unit]);
  return buf;
}

ProgressBar::ProgressBar(std::string label, FILE* out)
    : label_(std::move(label)), out_(out), start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() {
  if (drawn_ && !finished_) finish();
}

FILE* ProgressBar::default_output() { return ::isatty(STDERR_FILENO) ? stderr : nullptr; }

std::string ProgressBar::render(const std::string& label, uint64_t done, uint64_t total,
                                double seconds, int width) {
  const double fraction = total ? std::min(1.0, double(done) / double(total)) : 1.0;
  char percent[8];
  std::snprintf(percent, sizeof percent, "%3d%%", int(fraction * 100));
  std::string tail = std::string(percent) + "  " + format_bytes(done) + " / " + format_bytes(total);
  if (seconds > 0.05) tail += "  " + format_bytes(uint64_t(double(done) / seconds)) + "/s";
  // The bar takes what is left of the line, between 10 and 40 cells; dropped if none is left.
  const int fixed = int(label.size() + tail.size()) + 5;  // spaces and brackets
  const int cells = std::min(40, width - fixed);
  std::string line = label;
  line += ' ';
  if (cells >= 10) {
    const int filled = int(fraction * cells);
    line += '[';
    line.append(size_t(filled), '#');
    line.append(size_t(cells - filled), '.');
    line += "] ";
  }
  line += tail;
  if (int(line.size()) > width) line.resize(size_t(std::max(0, width)));
  return line;
}

void ProgressBar::update(uint64_t done, uint64_t total) {
  done_ = done;
  total_ = total;
  if (!out_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!drawn_ || now - last_draw_ >= kRedrawInterval || done >= total) {
    last_draw_ = now;
    draw();
  }
}

void ProgressBar::draw() {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // \r returns to the line start and \x1b[K clears what a longer previous line left behind.
  const std::string line = render(label_, done_, total_, seconds, terminal_width(out_) - 1);
  std::fprintf(out_, "\r%s\x1b[K", line.c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (finished_) return;
  if (out_) {
    draw();
    std::fputc('\n', out_);
    std::fflush(out_);
  }
  finished_ = true;
}

}  // namespace xy
