// Placeholder while the kernel is written (this session): throws, so nothing selects it.
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/common/error.h"

namespace xy::cuda {

void launch_attention_decode(const AttentionArgs&, cudaStream_t) {
  throw InvalidArgument("attention: decode_attention kernel not built yet");
}

}  // namespace xy::cuda
