// The engine flags that `serve`, `generate` and `bench offline` share (vLLM's names), and the
// backend and engine configuration they describe. One place, so the three commands cannot drift.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xyserve/backend/backend.h"
#include "xyserve/cli/flags.h"
#include "xyserve/engine/engine.h"
#include "xyserve/model/weights.h"
#include "xyserve/tokenizer/tokenizer.h"

namespace xy::cli {

// Declares --device, --threads, --tensor-parallel-size, --block-size, --num-kv-blocks, --kv-cache-memory,
// --gpu-memory-utilization, --deterministic, --enforce-eager, --max-num-batched-tokens, --max-num-seqs,
// --long-prefill-token-threshold, --scheduling-policy, --enable-prefix-caching,
// --speculative-method, --num-speculative-tokens, --speculative-tree.
void add_engine_flags(FlagSet& flags);

// The scheduler, prefix caching and speculation settings of the flags; EOS ids from config.json
// and tokenizer_config.json (tokenizer may be null). Throws InvalidArgument naming a bad flag.
engine::EngineConfig engine_config_from_flags(const FlagSet& flags, const std::string& command,
                                              const model::ModelConfig& model,
                                              const tokenizer::Tokenizer* tokenizer);

// The backend --device names (auto: CUDA when this build has it and a GPU is present). KV blocks:
// --num-kv-blocks if given, else `blocks_wanted` if > 0, else from --kv-cache-memory on the CPU
// and --gpu-memory-utilization on the GPU, capped at `blocks_useful` when > 0.
// --tensor-parallel-size N > 1 runs the CPU backend's N ranks (backend/cpu/cpu_tensor_parallel.h),
// with --kv-cache-memory for all ranks' caches together; on CUDA, N ranks on devices 0..N-1 over
// NCCL (backend/cuda/cuda_tensor_parallel.h), each rank's KV cache from --gpu-memory-utilization
// of its GPU (or --num-kv-blocks each); InvalidArgument when fewer than N GPUs are visible or
// this build has no NCCL.
struct BackendRequest {
  int32_t blocks_wanted = 0;
  int64_t blocks_useful = 0;
  int32_t max_num_tokens = 0;  // rows per step (the scheduler's budget)
};
std::unique_ptr<backend::Backend> make_backend(const FlagSet& flags, const std::string& command,
                                               const model::ModelWeights& weights,
                                               const BackendRequest& request,
                                               std::string* device_used = nullptr);

}  // namespace xy::cli
