#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "xyserve/backend/cuda/device.h"
#include "xyserve/common/dtype.h"

namespace xy::cuda {

TEST(CudaDevice, IsHopper) {
  ASSERT_GT(device_count(), 0) << "no CUDA device: run the gpu label on the device machine";
  const DeviceInfo info = device_info(0);
  EXPECT_EQ(info.compute_major, 9) << info.name;
  EXPECT_GT(info.num_sms, 0);
}

TEST(CudaDevice, Bf16ConversionMatchesHost) {
  ASSERT_GT(device_count(), 0);
  std::mt19937 rng(7);
  std::vector<uint16_t> src(100003);
  for (auto& v : src) v = uint16_t(rng());
  std::vector<float> dst(src.size());
  bf16_to_f32_on_device(src.data(), dst.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    const float want = bf16_to_f32(src[i]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(dst[i])) << i;
    } else {
      ASSERT_EQ(dst[i], want) << i;
    }
  }
}

}  // namespace xy::cuda
