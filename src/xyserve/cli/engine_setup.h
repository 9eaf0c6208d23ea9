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

// Declares --device, --threads, --tensor-parallel-size, --nnodes, --node-rank, --master-addr, --master-port,
// --dist-timeout, --block-size, --num-kv-blocks, --kv-cache-memory,
// --gpu-memory-utilization, --deterministic, --enforce-eager, --max-num-batched-tokens, --max-num-seqs,
// --long-prefill-token-threshold, --scheduling-policy, --enable-prefix-caching,
// --speculative-method, --num-speculative-tokens, --speculative-tree.
void add_engine_flags(FlagSet& flags);

// Tokens per KV cache block: --block-size, or for auto 64 when the backend will be CUDA (the
// wgmma attention kernel's TMA boxes are one page each) and 16 on the CPU.
int32_t kv_block_size(const FlagSet& flags, const std::string& command);

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
// --nnodes M > 1 splits the N ranks over M processes (usually hosts; parallel/node_group.h),
// N/M ranks each (--kv-cache-memory then is each node's budget, and CUDA uses devices
// 0..N/M-1 of each node): node 0 (--node-rank 0) gets a backend that drives the other nodes
// through the rendezvous at --master-addr:--master-port, which it returns once every node has
// joined and started; the other nodes run run_worker_node() instead (make_backend refuses them).
struct BackendRequest {
  int32_t blocks_wanted = 0;
  int64_t blocks_useful = 0;
  int32_t max_num_tokens = 0;  // rows per step (the scheduler's budget)
};
std::unique_ptr<backend::Backend> make_backend(const FlagSet& flags, const std::string& command,
                                               const model::ModelWeights& weights,
                                               const BackendRequest& request,
                                               std::string* device_used = nullptr);

// Whether the flags make this process a node other than 0 of a multi-node group
// (--nnodes > 1, --node-rank > 0).
bool is_worker_node(const FlagSet& flags);

// A node other than 0: joins node 0's group with its ranks (built as make_backend would, from
// the same flags and `request`), runs the plans node 0 sends until node 0 says stop, and
// returns 0. Throws InvalidArgument for bad flags, and Error when the rendezvous or a step
// fails or node 0 disappears (after telling node 0 of an error of its own).
int run_worker_node(const FlagSet& flags, const std::string& command, const model::ModelWeights& weights,
                    const BackendRequest& request);

}  // namespace xy::cli
