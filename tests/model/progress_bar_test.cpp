// The progress bar's rendering and its drawing policy.
#include <cstdio>
#include <random>

#include <gtest/gtest.h>

#include "xyserve/common/progress_bar.h"

namespace xy {
namespace {

TEST(ProgressBarTest, FormatsBytesInBinaryUnits) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(uint64_t(3) << 30), "3.00 GiB");
}

TEST(ProgressBarTest, RenderFitsTheWidthAndFillsInProportion) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 500; ++trial) {
    const uint64_t total = 1 + rng() % (uint64_t(1) << 40);
    const uint64_t done = rng() % (total + 1);
    const int width = 20 + int(rng() % 150);
    const std::string line = ProgressBar::render("loading", done, total, 1.5, width);
    EXPECT_LE(int(line.size()), width);
    EXPECT_EQ(line.rfind("loading", 0), 0u);
    const size_t open = line.find('['), close = line.find(']');
    if (open != std::string::npos) {
      ASSERT_NE(close, std::string::npos);
      const std::string bar = line.substr(open + 1, close - open - 1);
      const size_t filled = size_t(std::count(bar.begin(), bar.end(), '#'));
      EXPECT_EQ(filled, size_t(double(done) / double(total) * double(bar.size()))) << line;
    }
  }
  EXPECT_NE(ProgressBar::render("x", 50, 100, 2.0, 120).find(" 50%"), std::string::npos);
  EXPECT_NE(ProgressBar::render("x", 100, 100, 2.0, 120).find("100%"), std::string::npos);
  EXPECT_NE(ProgressBar::render("x", 1 << 20, 1 << 21, 1.0, 120).find("1.00 MiB/s"),
            std::string::npos);
}

TEST(ProgressBarTest, DrawsNothingWithoutATerminalAndThrottlesWithOne) {
  {
    ProgressBar silent("x", nullptr);
    for (int i = 0; i <= 100; ++i) silent.update(uint64_t(i), 100);
  }  // nothing to check but that it does not crash: there is nowhere to draw
  char* buf = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&buf, &size);
  ASSERT_NE(out, nullptr);
  {
    ProgressBar bar("x", out);
    for (int i = 0; i < 1000; ++i) bar.update(uint64_t(i), 1000);  // far under 100 ms
    bar.update(1000, 1000);
  }
  std::fclose(out);
  const std::string text(buf, size);
  std::free(buf);
  // The first update, the completed one and finish() (from the destructor) draw; the 998 in
  // between come far faster than the 100 ms redraw interval (a stalled machine may add one).
  const auto draws = std::count(text.begin(), text.end(), '\r');
  EXPECT_GE(draws, 3);
  EXPECT_LE(draws, 5);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text.find("100%"), std::string::npos);
}

}  // namespace
}  // namespace xy
