// Writing Hugging Face checkpoints: safetensors files, and whole random-weight model directories
// (config.json + weights) for `xyserve make-model`, tests and benchmarks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "xyserve/common/dtype.h"
#include "xyserve/model/config.h"

namespace xy::model {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // product(shape) * dtype_size(dtype) bytes, little-endian
};

// Writes a safetensors file as Hugging Face's writer does: the JSON header (keys sorted) padded
// with spaces to a multiple of 8 bytes, data ordered by element size (largest first) then name,
// so every tensor starts at a multiple of its element size; `metadata` as "__metadata__". Writes to `path`.part and renames, so a failed
// write never leaves a valid-looking file. Throws InvalidArgument for a tensor whose byte count
// does not match its shape or a duplicate name, xy::Error for an I/O failure (naming the path).
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Hugging Face's default max_shard_size ("5GB", decimal).
inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;

// Writes a loadable model directory for `config` with random weights: config.json in the form
// transformers writes for the architecture (torch_dtype = `dtype`), and the tensors with their
// Hugging Face names in `dtype`, in one model.safetensors or, past `max_shard_bytes`, in shards
// model-0000i-of-0000N.safetensors with model.safetensors.index.json (grouped in state-dict
// order, as transformers' save_pretrained does). Creates `out_dir`; replaces an earlier
// checkpoint there (config.json, model.safetensors, the index and model-*-of-*.safetensors).
//
// Weights depend only on (seed, tensor name, element index), not on thread count or sharding:
// Linear and embedding weights uniform with std 0.02, biases uniform in [-0.02, 0.02), norm
// weights uniform in [0.9, 1.1) (not exactly 1, so a test notices a norm that was not applied).
// Generated in parallel chunks and streamed to disk.
void write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& out_dir,
                             uint64_t seed, DType dtype = DType::kBF16,
                             uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// Checks that `config` describes a model write_random_checkpoint can write and load_model can
// load (positive sizes, head counts that divide, one window per layer); throws InvalidArgument.
void validate_config(const ModelConfig& config);

}  // namespace xy::model
