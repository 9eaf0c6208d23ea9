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
// launch_kernel_in_clusters: the same with the grid in clusters of `cluster_x` CTAs along x
// (grid.x a multiple of it; 1: no cluster attribute).
template <class... Params, class... Args>
cudaError_t launch_kernel_in_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                                      cudaStream_t stream, bool pdl, unsigned cluster_x, Args&&... args) {
  cudaLaunchAttribute attrs[2]{};
  unsigned num_attrs = 0;
  if (pdl) {
    attrs[num_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[num_attrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_x > 1) {
    attrs[num_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[num_attrs++].val.clusterDim = {cluster_x, 1, 1};
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = num_attrs > 0 ? attrs : nullptr;
  config.numAttrs = num_attrs;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, bool pdl, Args&&... args) {
  return launch_kernel_in_clusters(kernel, grid, block, smem_bytes, stream, pdl, 1, std::forward<Args>(args)...);
}

}  // namespace xy::cuda
