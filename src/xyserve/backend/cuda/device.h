// The GPU this process runs on, as the CUDA runtime reports it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace xy::cuda {

struct DeviceInfo {
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int num_sms = 0;
  size_t total_memory = 0;
  size_t free_memory = 0;
};

// Number of CUDA devices visible; 0 when there is no GPU or no driver (never throws).
int device_count();

// Information on device `index`. Throws CudaError if it cannot be read.
DeviceInfo device_info(int index);

// Converts n bf16 values (as raw bits) to fp32 on the device; used to check a device round trip.
void bf16_to_f32_on_device(const uint16_t* host_src, float* host_dst, size_t n);

}  // namespace xy::cuda
