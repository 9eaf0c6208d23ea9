// Minimal leveled logging to stderr. Thread-safe: each line is written with one fprintf.
#pragma once

#include <cstdio>
#include <string>

#include "xyserve/common/error.h"

namespace xy {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

LogLevel log_level();
void set_log_level(LogLevel level);
void log_line(LogLevel level, const std::string& msg);

template <class... Args>
void log_info(Args&&... args) { log_line(LogLevel::kInfo, cat(std::forward<Args>(args)...)); }
template <class... Args>
void log_warning(Args&&... args) { log_line(LogLevel::kWarning, cat(std::forward<Args>(args)...)); }
template <class... Args>
void log_debug(Args&&... args) {
  if (log_level() <= LogLevel::kDebug) log_line(LogLevel::kDebug, cat(std::forward<Args>(args)...));
}

}  // namespace xy
