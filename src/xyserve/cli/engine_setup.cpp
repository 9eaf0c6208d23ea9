#include "xyserve/cli/engine_setup.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/backend/cpu/cpu_tensor_parallel.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/model/config.h"
#include "xyserve/parallel/node_group.h"
#include "xyserve/parallel/shard.h"
#ifdef XY_HAVE_CUDA
#include "xyserve/backend/cuda/cuda_backend.h"
#include "xyserve/backend/cuda/device.h"
#include "xyserve/backend/cuda/smooth_gemm.h"
#ifdef XY_HAVE_NCCL
#include "xyserve/backend/cuda/cuda_tensor_parallel.h"
#endif
#endif

namespace xy::cli {

void add_engine_flags(FlagSet& f) {
  f.add("device", "auto|cuda|cpu", "auto",
        "where to run: auto is cuda when a GPU is present and xyserve was built with the CUDA backend");
  f.add("threads", "N", "0", "CPU backend threads; 0 uses every core");
  f.add("tensor-parallel-size", "N", "1",
        "split the model over N ranks, Megatron-style (attention heads, MLP columns, vocabulary), with an "
        "all-reduce after attention and after the MLP; CPU: N ranks on threads of this process, sharing "
        "--threads; CUDA: one rank per GPU on devices 0..N-1, over NCCL");
  f.add("nnodes", "N", "1",
        "nodes (processes, usually one per host) that the --tensor-parallel-size ranks are split over evenly "
        "(torchrun's name); node 0 runs the engine, every other node `xyserve serve --node-rank K` with the same "
        "model and flags, which follows node 0 and runs no HTTP server");
  f.add("node-rank", "K", "0", "this node's rank in [0, --nnodes): it runs ranks [K N/nnodes, (K+1) N/nnodes)");
  f.add("master-addr", "HOST", "127.0.0.1",
        "node 0's address, where the nodes meet (node 0 listens there: on that address if it is a loopback one, "
        "else on every interface)");
  f.add("master-port", "N", "29500", "node 0's rendezvous port; 0 on node 0 picks a free one, printed at start-up");
  f.add("dist-timeout", "SECONDS", "300",
        "how long a node waits for the others: to join, to start, and within a step before it gives up");
  f.add("block-size", "N|auto", "auto",
        "tokens per KV cache block; auto: 64 on a GPU (the wgmma attention kernel loads K and V by TMA one page "
        "at a time, and 16-token pages cost it ~15% of prefill speed), 16 on the CPU");
  f.add("num-kv-blocks", "N", "", "KV cache blocks (default: from the memory budget)");
  f.add("kv-cache-memory", "BYTES", "1073741824", "CPU: KV cache budget in bytes, when neither --num-kv-blocks nor the command sets the KV size");
  f.add("gpu-memory-utilization", "F", "0.9", "GPU: fraction of the GPU's memory for weights, workspace and KV cache");
  f.add_bool("deterministic", false,
             "GPU: batch-invariant mode: a request's tokens do not depend on what shares its steps, how its "
             "prompt was chunked or cached (one GEMM algorithm per shape for every M, attention split fixed by "
             "position); costs throughput");
  f.add_bool("enforce-eager", false, "GPU: no CUDA graphs for decode steps");
  f.add("gemm", "smooth|cublas", "smooth",
        "GPU linear layers: SmoothGEMM's tuned table (cuBLASLt where it has no entry), or cuBLASLt alone");
  f.add("attention-kernel", "auto|tensor-core", "auto",
        "GPU attention: auto (the decode-specialised kernel for decode steps, the wgmma kernel for the rest, "
        "the mma.sync kernel when --deterministic), or tensor-core (the mma.sync kernel for every step)");
  f.add("gemm-table", "FILE", "",
        "SmoothGEMM table (default: MODEL/xyserve_gemm_table_<device>.json, written by `xyserve tune`)");
  f.add("max-num-batched-tokens", "N", "2048", "token budget of one step");
  f.add("max-num-seqs", "N", "256", "most requests in one step");
  f.add("long-prefill-token-threshold", "N", "0", "largest prefill chunk per request; 0: the budget");
  f.add("scheduling-policy", "decode-first|prefill-first", "decode-first", "what a step serves first");
  f.add_bool("enable-prefix-caching", true, "automatic prefix caching", /*negatable=*/true);
  f.add("speculative-method", "none|ngram", "none", "speculative decoding drafter");
  f.add("num-speculative-tokens", "K", "4", "draft tokens per verify step (with --speculative-method)");
  f.add_bool("speculative-tree", false, "n-gram drafts as token trees instead of chains");
}

namespace {

int32_t positive(const FlagSet& flags, const std::string& command, const std::string& name) {
  const int64_t v = flags.get_int(name);
  if (v < 1 || v > INT32_MAX) throw InvalidArgument(cat(command, ": --", name, " must be a positive integer; found ", v));
  return int32_t(v);
}

// --device as resolved (auto: CUDA when this build has it and a GPU is present); throws for a
// name it does not know or a device this build or machine lacks.
bool use_cuda_device(const FlagSet& flags, const std::string& command) {
  const std::string device = flags.get("device");
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw InvalidArgument(cat(command, ": --device ", device, " is not one of auto|cuda|cpu"));
#ifdef XY_HAVE_CUDA
  const bool have_gpu = cuda::device_count() > 0;
  if (device == "cuda" && !have_gpu) throw InvalidArgument(cat(command, ": --device cuda: no CUDA device found"));
  return device == "cuda" || (device == "auto" && have_gpu);
#else
  if (device == "cuda")
    throw InvalidArgument(cat(command, ": --device cuda: this xyserve was built without the CUDA backend (no nvcc)"));
  return false;
#endif
}

}  // namespace

int32_t kv_block_size(const FlagSet& flags, const std::string& command) {
  if (flags.get("block-size") == "auto") return use_cuda_device(flags, command) ? 64 : 16;
  return positive(flags, command, "block-size");
}

engine::EngineConfig engine_config_from_flags(const FlagSet& flags, const std::string& command,
                                              const model::ModelConfig& model,
                                              const tokenizer::Tokenizer* tokenizer) {
  engine::EngineConfig ec;
  auto& s = ec.scheduler;
  s.max_num_batched_tokens = positive(flags, command, "max-num-batched-tokens");
  s.max_num_seqs = positive(flags, command, "max-num-seqs");
  s.long_prefill_token_threshold = int32_t(flags.get_int("long-prefill-token-threshold"));
  if (s.long_prefill_token_threshold < 0)
    throw InvalidArgument(cat(command, ": --long-prefill-token-threshold must be >= 0"));
  const std::string policy = flags.get("scheduling-policy");
  if (policy == "decode-first") s.policy = sched::SchedulingPolicy::kDecodeFirst;
  else if (policy == "prefill-first") s.policy = sched::SchedulingPolicy::kPrefillFirst;
  else throw InvalidArgument(cat(command, ": --scheduling-policy ", policy, " is not decode-first|prefill-first"));
  const std::string method = flags.get("speculative-method");
  if (method == "ngram") {
    ec.speculative_method = engine::SpeculativeMethod::kNgram;
    s.num_speculative_tokens = positive(flags, command, "num-speculative-tokens");
    ec.ngram.tree = flags.get_bool("speculative-tree");
  } else if (method != "none") {
    throw InvalidArgument(cat(command, ": --speculative-method ", method, " is not none|ngram"));
  }
  ec.enable_prefix_caching = flags.get_bool("enable-prefix-caching");
  for (int64_t id : model.eos_token_ids) ec.eos_token_ids.push_back(int32_t(id));
  if (tokenizer) {
    for (int32_t id : tokenizer->eos_token_ids())
      if (std::find(ec.eos_token_ids.begin(), ec.eos_token_ids.end(), id) == ec.eos_token_ids.end())
        ec.eos_token_ids.push_back(id);
  }
  return ec;
}

namespace {

// Where this process sits in a group spread over nodes (--nnodes and friends), checked.
parallel::RendezvousOptions node_flags(const FlagSet& flags, const std::string& command, int32_t tensor_parallel_size) {
  parallel::RendezvousOptions rv;
  rv.nnodes = positive(flags, command, "nnodes");
  const int64_t node_rank = flags.get_int("node-rank");
  if (node_rank < 0 || node_rank >= rv.nnodes)
    throw InvalidArgument(cat(command, ": --node-rank ", node_rank, " must be in [0, --nnodes ", rv.nnodes, ")"));
  rv.node_rank = int32_t(node_rank);
  if (rv.nnodes > 1 && tensor_parallel_size == 1)
    throw InvalidArgument(cat(command, ": --nnodes ", rv.nnodes, " splits the tensor-parallel ranks over nodes, and "
                              "--tensor-parallel-size 1 has one rank: set --tensor-parallel-size to a multiple of --nnodes"));
  if (tensor_parallel_size % rv.nnodes != 0)
    throw InvalidArgument(cat(command, ": --tensor-parallel-size ", tensor_parallel_size, " does not split evenly over --nnodes ",
                              rv.nnodes, ": every node runs the same number of ranks"));
  rv.master_addr = flags.get("master-addr");
  if (rv.master_addr.empty()) throw InvalidArgument(cat(command, ": --master-addr is empty"));
  const int64_t port = flags.get_int("master-port");
  if (port < 0 || port > 65535) throw InvalidArgument(cat(command, ": --master-port must be in [0, 65535]; found ", port));
  if (port == 0 && rv.node_rank > 0)
    throw InvalidArgument(cat(command, ": --master-port 0 (a free port) is for node 0; node ", rv.node_rank,
                              " needs the port node 0 printed"));
  rv.master_port = uint16_t(port);
  const double timeout_s = flags.get_double("dist-timeout");
  if (!(timeout_s > 0 && timeout_s <= 86400))
    throw InvalidArgument(cat(command, ": --dist-timeout must be in (0, 86400] seconds; found ", timeout_s));
  rv.timeout = std::chrono::milliseconds(int64_t(timeout_s * 1000));
  return rv;
}

// The model as the nodes compare it: its architecture and a hash (FNV-1a, 64 bits) of its
// config.json as xyserve writes it back, so that formatting does not matter but every
// hyper-parameter does. Two checkpoints of one config with different weights are not told apart.
std::string model_fingerprint(const model::ModelConfig& config) {
  std::string text;
  try {
    text = model::config_to_json(config);
  } catch (const InvalidArgument&) {
    text = cat(config.vocab_size, " ", config.hidden_size, " ", config.intermediate_size, " ", config.num_layers, " ",
               config.num_heads, " ", config.num_kv_heads, " ", config.head_dim);
  }
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return cat(config.architecture, ", hidden ", config.hidden_size, ", ", config.num_layers, " layers, vocab ",
             config.vocab_size, ", config hash ", hex);
}

// Everything make_backend and run_worker_node decide from the flags before building anything.
struct BackendSetup {
  bool use_cuda = false;
  int32_t block_size = 0;
  int32_t num_blocks = 0;  // per rank; 0 on CUDA: from --gpu-memory-utilization
  int32_t tensor_parallel_size = 1;
  parallel::RendezvousOptions nodes;  // nnodes 1: one process
  int32_t ranks_here = 1;             // this process's ranks
  std::vector<int> devices;           // CUDA, tensor-parallel: this process's rank i on devices[i]
};

BackendSetup backend_setup(const FlagSet& flags, const std::string& command, const model::ModelWeights& weights,
                           const BackendRequest& request) {
  BackendSetup setup;
  setup.use_cuda = use_cuda_device(flags, command);
  setup.block_size = kv_block_size(flags, command);
  setup.num_blocks = request.blocks_wanted;
  if (auto n = flags.get_optional_int("num-kv-blocks")) {
    if (*n < 1 || *n > INT32_MAX) throw InvalidArgument(cat(command, ": --num-kv-blocks must be >= 1; found ", *n));
    setup.num_blocks = int32_t(*n);
  }
  const int32_t tensor_parallel_size = positive(flags, command, "tensor-parallel-size");
  setup.tensor_parallel_size = tensor_parallel_size;
  try {
    parallel::check_tensor_parallel(weights.config, tensor_parallel_size);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(cat(command, ": --tensor-parallel-size: ", e.what()));
  }
  setup.nodes = node_flags(flags, command, tensor_parallel_size);
  setup.ranks_here = tensor_parallel_size / setup.nodes.nnodes;
  if (setup.use_cuda && tensor_parallel_size > 1) {
#if defined(XY_HAVE_CUDA) && defined(XY_HAVE_NCCL)
    const int found = cuda::device_count();
    if (found < setup.ranks_here)
      throw InvalidArgument(cat(command, ": --tensor-parallel-size ", tensor_parallel_size,
                                setup.nodes.nnodes > 1 ? cat(" over --nnodes ", setup.nodes.nnodes) : std::string(),
                                " --device cuda needs ", setup.ranks_here, " GPUs here, one per rank; ", found,
                                " visible"));
    for (int d = 0; d < setup.ranks_here; ++d) setup.devices.push_back(d);
#else
    throw InvalidArgument(cat(command, ": --tensor-parallel-size ", tensor_parallel_size,
                              ": this xyserve was built without NCCL, so CUDA runs one GPU only (--device cpu "
                              "runs tensor parallelism)"));
#endif
  }
  if (!setup.use_cuda && setup.num_blocks <= 0) {
    const auto& c = weights.config;
    cache::KvCacheShape shape;
    shape.num_layers = c.num_layers;
    // Every rank of this process keeps its own KV heads (replicated ones on each of their
    // ranks): the budget is for all of them together.
    shape.num_kv_heads = parallel::kv_heads_per_rank(c, tensor_parallel_size) * setup.ranks_here;
    shape.head_dim = c.head_dim;
    shape.block_size = setup.block_size;
    shape.dtype = DType::kF32;  // the CPU backend keeps KV in fp32
    setup.num_blocks = cache::num_blocks_for_budget(shape, flags.get_int("kv-cache-memory"));
    if (request.blocks_useful > 0) setup.num_blocks = int32_t(std::min<int64_t>(setup.num_blocks, request.blocks_useful));
  }
  return setup;
}

backend::cpu::CpuBackendOptions cpu_options(const FlagSet& flags, const BackendSetup& setup) {
  backend::cpu::CpuBackendOptions o;
  o.block_size = setup.block_size;
  o.num_threads = int32_t(flags.get_int("threads"));
  o.num_kv_blocks = setup.num_blocks;
  return o;
}

#ifdef XY_HAVE_CUDA
backend::cuda::CudaBackendOptions cuda_options(const FlagSet& flags, const std::string& command,
                                               const BackendSetup& setup, const BackendRequest& request) {
  backend::cuda::CudaBackendOptions o;
  o.block_size = setup.block_size;
  o.num_kv_blocks = setup.num_blocks;  // 0: from --gpu-memory-utilization
  o.gpu_memory_utilization = flags.get_double("gpu-memory-utilization");
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1))
    throw InvalidArgument(cat(command, ": --gpu-memory-utilization must be in (0, 1]"));
  o.max_num_tokens = std::max(request.max_num_tokens, 16);
  o.max_logits_rows = o.max_num_tokens;
  o.deterministic = flags.get_bool("deterministic");
  o.cuda_graphs = !flags.get_bool("enforce-eager");
  const std::string gemm = flags.get("gemm");
  if (gemm != "smooth" && gemm != "cublas")
    throw InvalidArgument(cat(command, ": --gemm ", gemm, " is not one of smooth|cublas"));
  if (gemm == "smooth") o.gemm_table = xy::cuda::find_gemm_table(flags.get("model"), flags.get("gemm-table"), o.device);
  const std::string attention = flags.get("attention-kernel");
  if (attention != "auto" && attention != "tensor-core")
    throw InvalidArgument(cat(command, ": --attention-kernel ", attention, " is not one of auto|tensor-core"));
  o.attention = attention == "auto" ? xy::cuda::AttentionKernel::kAuto : xy::cuda::AttentionKernel::kTensorCore;
  return o;
}
#endif

// This process's part of a group over --nnodes > 1 nodes: the rendezvous, then its ranks.
parallel::NodeRanks join_nodes(const FlagSet& flags, const std::string& command, const model::ModelWeights& weights,
                               const BackendSetup& setup, const BackendRequest& request) {
  parallel::NodeGroupOptions nodes;
  nodes.rendezvous = setup.nodes;
  nodes.tensor_parallel_size = setup.tensor_parallel_size;
  nodes.fingerprint = {
      {"model", model_fingerprint(weights.config)},
      {"--device", setup.use_cuda ? "cuda" : "cpu"},
      {"--block-size", std::to_string(setup.block_size)},
      {"--max-num-batched-tokens", std::to_string(request.max_num_tokens)},
  };
  const int32_t nnodes = setup.nodes.nnodes;
  nodes.on_listening = [&](const std::string& address) {
    std::fprintf(stderr, "xyserve: node 0 of %d: rendezvous on %s, waiting up to %g s (--dist-timeout) for %d node(s)\n",
                 nnodes, address.c_str(), double(setup.nodes.timeout.count()) / 1000.0, nnodes - 1);
    std::fflush(stderr);
  };
  if (setup.use_cuda) {
#if defined(XY_HAVE_CUDA) && defined(XY_HAVE_NCCL)
    return backend::cuda::join_tensor_parallel_cuda_nodes(weights, cuda_options(flags, command, setup, request),
                                                          setup.devices, nodes);
#endif
  }
  return backend::cpu::join_tensor_parallel_cpu_nodes(weights, cpu_options(flags, setup), nodes);
}

}  // namespace

std::unique_ptr<backend::Backend> make_backend(const FlagSet& flags, const std::string& command,
                                               const model::ModelWeights& weights,
                                               const BackendRequest& request,
                                               std::string* device_used) {
  const BackendSetup setup = backend_setup(flags, command, weights, request);
  if (device_used) *device_used = setup.use_cuda ? "cuda" : "cpu";
  const int32_t tensor_parallel_size = setup.tensor_parallel_size;
  if (setup.nodes.nnodes > 1) {
    if (setup.nodes.node_rank > 0)
      throw InvalidArgument(cat(command, ": --node-rank ", setup.nodes.node_rank, ": a node other than 0 runs `xyserve serve "
                                "--node-rank ", setup.nodes.node_rank, "` with node 0's model and flags (it follows node "
                                "0 and runs no HTTP server)"));
    auto backend = std::make_unique<parallel::MultiNodeBackend>(join_nodes(flags, command, weights, setup, request));
    std::fprintf(stderr, "xyserve: %d nodes joined: tensor-parallel size %d, %d rank(s) per node, %d KV blocks\n",
                 setup.nodes.nnodes, tensor_parallel_size, setup.ranks_here, backend->num_kv_blocks());
    return backend;
  }
  if (setup.use_cuda) {
#ifdef XY_HAVE_CUDA
    const backend::cuda::CudaBackendOptions o = cuda_options(flags, command, setup, request);
#ifdef XY_HAVE_NCCL
    if (tensor_parallel_size > 1)
      return backend::cuda::make_tensor_parallel_cuda_backend(weights, o, tensor_parallel_size, setup.devices);
#endif
    return std::make_unique<backend::cuda::CudaBackend>(weights, o);
#endif
  }
  const backend::cpu::CpuBackendOptions o = cpu_options(flags, setup);
  if (tensor_parallel_size > 1) return backend::cpu::make_tensor_parallel_cpu_backend(weights, o, tensor_parallel_size);
  return std::make_unique<backend::cpu::CpuBackend>(weights, o);
}

bool is_worker_node(const FlagSet& flags) { return flags.get_int("nnodes") > 1 && flags.get_int("node-rank") > 0; }

int run_worker_node(const FlagSet& flags, const std::string& command, const model::ModelWeights& weights,
                    const BackendRequest& request) {
  const BackendSetup setup = backend_setup(flags, command, weights, request);
  XY_CHECK(setup.nodes.nnodes > 1 && setup.nodes.node_rank > 0, "not a worker node");
  parallel::NodeRanks node = join_nodes(flags, command, weights, setup, request);
  const int32_t first = node.ranks->first_rank();
  std::fprintf(stderr, "xyserve: node %d of %d: ranks %d..%d on %s, %d KV blocks; following node 0 at %s:%u\n",
               setup.nodes.node_rank, setup.nodes.nnodes, first, first + node.ranks->num_local_ranks() - 1,
               setup.use_cuda ? "cuda" : "cpu", node.num_kv_blocks, setup.nodes.master_addr.c_str(),
               unsigned(setup.nodes.master_port));
  std::fflush(stderr);
  parallel::follow_node_zero(node);
  std::fprintf(stderr, "xyserve: node %d: node 0 stopped the group\n", setup.nodes.node_rank);
  return 0;
}

}  // namespace xy::cli
