// Kernel launch with an optional programmatic dependent launch (PDL), shared by the GEMM and
// attention launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace xy::cuda {

// Launches `kernel` on `stream`; with `pdl`, as a programmatic dependent launch (the kernel may
// start while the previous kernel in the stream is still running, and must griddepcontrol.wait
// before touching what that kernel writes or reads). Inside stream capture the launch becomes a
// programmatic edge of the graph (CUDA programming guide, "Programmatic Dependent Launch").
template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = pdl ? &attr : nullptr;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace xy::cuda
