// Invariant checks inside the engine. A failed check is a bug in xyserve, not bad input: it
// prints the file, line and expression and aborts. Bad input is reported with xy::Error.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "xyserve/common/error.h"

namespace xy::detail {
[[noreturn]] inline void check_failed(const char* file, int line, const char* expr,
                                      const std::string& msg) {
  std::fprintf(stderr, "%s:%d: check failed: %s%s%s\n", file, line, expr, msg.empty() ? "" : ": ",
               msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace xy::detail

// XY_CHECK(cond) or XY_CHECK(cond, "context ", value, ...)
#define XY_CHECK(cond, ...)                                                             \
  do {                                                                                  \
    if (!(cond)) [[unlikely]]                                                           \
      ::xy::detail::check_failed(__FILE__, __LINE__, #cond, ::xy::cat("" __VA_OPT__(, ) \
                                                                           __VA_ARGS__)); \
  } while (0)
