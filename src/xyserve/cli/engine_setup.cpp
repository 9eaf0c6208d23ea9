#include "xyserve/cli/engine_setup.h"

#include <algorithm>

#include "xyserve/backend/cpu/cpu_backend.h"
#include "xyserve/backend/cpu/cpu_tensor_parallel.h"
#include "xyserve/cache/kv_cache_sizing.h"
#include "xyserve/common/error.h"
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
  f.add("block-size", "N", "16", "tokens per KV cache block");
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

}  // namespace

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

std::unique_ptr<backend::Backend> make_backend(const FlagSet& flags, const std::string& command,
                                               const model::ModelWeights& weights,
                                               const BackendRequest& request,
                                               std::string* device_used) {
  const std::string device = flags.get("device");
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw InvalidArgument(cat(command, ": --device ", device, " is not one of auto|cuda|cpu"));
  const int32_t block_size = positive(flags, command, "block-size");
  int32_t num_blocks = request.blocks_wanted;
  if (auto n = flags.get_optional_int("num-kv-blocks")) {
    if (*n < 1 || *n > INT32_MAX) throw InvalidArgument(cat(command, ": --num-kv-blocks must be >= 1; found ", *n));
    num_blocks = int32_t(*n);
  }
  bool use_cuda = false;
#ifdef XY_HAVE_CUDA
  const bool have_gpu = cuda::device_count() > 0;
  if (device == "cuda" && !have_gpu) throw InvalidArgument(cat(command, ": --device cuda: no CUDA device found"));
  use_cuda = device == "cuda" || (device == "auto" && have_gpu);
#else
  if (device == "cuda")
    throw InvalidArgument(cat(command, ": --device cuda: this xyserve was built without the CUDA backend (no nvcc)"));
#endif
  if (device_used) *device_used = use_cuda ? "cuda" : "cpu";
  const int32_t tensor_parallel_size = positive(flags, command, "tensor-parallel-size");
  try {
    parallel::check_tensor_parallel(weights.config, tensor_parallel_size);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(cat(command, ": --tensor-parallel-size: ", e.what()));
  }
  std::vector<int> tensor_parallel_devices;  // CUDA: rank r on device r
  if (use_cuda && tensor_parallel_size > 1) {
#if defined(XY_HAVE_CUDA) && defined(XY_HAVE_NCCL)
    const int found = cuda::device_count();
    if (found < tensor_parallel_size)
      throw InvalidArgument(cat(command, ": --tensor-parallel-size ", tensor_parallel_size, " --device cuda needs ",
                                tensor_parallel_size, " GPUs, one per rank; ", found, " visible"));
    for (int d = 0; d < tensor_parallel_size; ++d) tensor_parallel_devices.push_back(d);
#else
    throw InvalidArgument(cat(command, ": --tensor-parallel-size ", tensor_parallel_size,
                              ": this xyserve was built without NCCL, so CUDA runs one GPU only (--device cpu "
                              "runs tensor parallelism)"));
#endif
  }
  if (use_cuda) {
#ifdef XY_HAVE_CUDA
    backend::cuda::CudaBackendOptions o;
    o.block_size = block_size;
    o.num_kv_blocks = num_blocks;  // 0: from --gpu-memory-utilization
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
    if (gemm == "smooth")
      o.gemm_table = xy::cuda::find_gemm_table(flags.get("model"), flags.get("gemm-table"), o.device);
    const std::string attention = flags.get("attention-kernel");
    if (attention != "auto" && attention != "tensor-core")
      throw InvalidArgument(cat(command, ": --attention-kernel ", attention, " is not one of auto|tensor-core"));
    o.attention = attention == "auto" ? xy::cuda::AttentionKernel::kAuto : xy::cuda::AttentionKernel::kTensorCore;
#ifdef XY_HAVE_NCCL
    if (tensor_parallel_size > 1)
      return backend::cuda::make_tensor_parallel_cuda_backend(weights, o, tensor_parallel_size, tensor_parallel_devices);
#endif
    return std::make_unique<backend::cuda::CudaBackend>(weights, o);
#endif
  }
  backend::cpu::CpuBackendOptions o;
  o.block_size = block_size;
  o.num_threads = int32_t(flags.get_int("threads"));
  if (num_blocks <= 0) {
    const auto& c = weights.config;
    cache::KvCacheShape shape;
    shape.num_layers = c.num_layers;
    // Every rank keeps its own KV heads (replicated ones on each of their ranks): the budget is
    // for all of them together.
    shape.num_kv_heads = parallel::kv_heads_per_rank(c, tensor_parallel_size) * tensor_parallel_size;
    shape.head_dim = c.head_dim;
    shape.block_size = block_size;
    shape.dtype = DType::kF32;  // the CPU backend keeps KV in fp32
    num_blocks = cache::num_blocks_for_budget(shape, flags.get_int("kv-cache-memory"));
    if (request.blocks_useful > 0) num_blocks = int32_t(std::min<int64_t>(num_blocks, request.blocks_useful));
  }
  o.num_kv_blocks = num_blocks;
  if (tensor_parallel_size > 1) return backend::cpu::make_tensor_parallel_cpu_backend(weights, o, tensor_parallel_size);
  return std::make_unique<backend::cpu::CpuBackend>(weights, o);
}

}  // namespace xy::cli
