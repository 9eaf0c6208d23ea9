#include "xyserve/common/log.h"

#include <atomic>

namespace xy {
namespace {
std::atomic<LogLevel> g_level{LogLevel::kInfo};
}

LogLevel log_level() { return g_level.load(std::memory_order_relaxed); }
void set_log_level(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }

void log_line(LogLevel level, const std::string& msg) {
  if (level < log_level()) return;
  static constexpr const char* kNames[] = {"debug", "info", "warning", "error"};
  std::fprintf(stderr, "[xyserve %s] %s\n", kNames[int(level)], msg.c_str());
}

}  // namespace xy
