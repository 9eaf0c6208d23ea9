#include "xyserve/model/checkpoint_writer.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <future>
#include <regex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/model/architecture.h"
#include "xyserve/model/tensor_layout.h"

namespace xy::model {
namespace {

// ---- safetensors layout and output ---------------------------------------------------------

struct PlannedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t num_bytes;
  uint64_t begin = 0;  // offset in the data area
};

uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    XY_CHECK(d >= 0);
    n *= uint64_t(d);
  }
  return n;
}

// Orders `tensors` as they will lie in the file, assigns offsets, and returns the file's first
// bytes: the 8-byte length and the JSON header, padded with spaces to a multiple of 8. Data order
// is by element size, largest first, then by name, as the reference writer does: with the data
// area 8-byte aligned, every tensor then starts at a multiple of its element size.
std::string plan_safetensors(std::vector<PlannedTensor>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const PlannedTensor& a, const PlannedTensor& b) {
    if (dtype_size(a.dtype) != dtype_size(b.dtype)) return dtype_size(a.dtype) > dtype_size(b.dtype);
    return a.name < b.name;
  });
  std::set<std::string_view> names;
  for (const PlannedTensor& t : tensors) {
    if (!names.insert(t.name).second) {
      throw InvalidArgument(cat("safetensors: duplicate tensor name '", t.name, "'"));
    }
  }
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    PlannedTensor& t = tensors[i];
    if (t.name == "__metadata__") throw InvalidArgument("safetensors: reserved tensor name");
    t.begin = offset;
    offset += t.num_bytes;
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {t.begin, offset}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + text;
}

// A file written under `path`.part and renamed into place by commit(); removed if not committed.
class OutputFile {
 public:
  explicit OutputFile(std::filesystem::path path)
      : path_(std::move(path)), part_(path_.string() + ".part") {
    file_ = std::fopen(part_.c_str(), "wb");
    if (!file_) throw Error(cat(part_.string(), ": cannot create: ", std::strerror(errno)));
  }
  ~OutputFile() {
    if (file_) {
      std::fclose(file_);
      std::error_code ec;
      std::filesystem::remove(part_, ec);
    }
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t n) {
    if (n && std::fwrite(data, 1, n, file_) != n) {
      throw Error(cat(part_.string(), ": write failed: ", std::strerror(errno)));
    }
  }
  void commit() {
    const bool ok = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!ok) throw Error(cat(part_.string(), ": close failed: ", std::strerror(errno)));
    std::error_code ec;
    std::filesystem::rename(part_, path_, ec);
    if (ec) throw Error(cat(path_.string(), ": cannot rename from .part: ", ec.message()));
  }

 private:
  std::filesystem::path path_, part_;
  FILE* file_ = nullptr;
};

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  OutputFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

// ---- random values -------------------------------------------------------------------------

// splitmix64's finaliser: a bijective mix good enough to use as a counter-based generator.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t tensor_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (char c : name) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return mix64(seed ^ mix64(h));
}

struct InitRule {
  float center, half_width;  // uniform in [center - half_width, center + half_width)
};

InitRule init_rule(TensorInit init) {
  switch (init) {
    case TensorInit::kLinear: return {0.0f, 0.02f * std::sqrt(3.0f)};  // std 0.02
    case TensorInit::kBias: return {0.0f, 0.02f};
    case TensorInit::kNorm: return {1.0f, 0.1f};
  }
  return {0.0f, 0.0f};
}

// Fills elements [first, first + n) of a tensor into `out` (n * dtype_size bytes). Element i
// takes the high (even i) or low (odd i) 32 bits of mix64(key + (i / 2) * golden): one mix per
// two elements, and the value depends on nothing but (key, i).
template <class Store>
void fill_random_as(uint64_t key, InitRule rule, uint64_t first, size_t n, Store store) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  constexpr float kScale = 1.0f / 2147483648.0f;  // int32 -> [-1, 1)
  auto value = [&](uint32_t bits) {
    return rule.center + rule.half_width * (float(int32_t(bits)) * kScale);
  };
  size_t i = 0;
  if (first % 2 == 1 && n > 0) {  // an odd start takes the low half of its pair
    store(0, value(uint32_t(mix64(key + (first / 2) * kGolden))));
    i = 1;
  }
  for (; i + 1 < n; i += 2) {
    const uint64_t z = mix64(key + ((first + i) / 2) * kGolden);
    store(i, value(uint32_t(z >> 32)));
    store(i + 1, value(uint32_t(z)));
  }
  if (i < n) store(i, value(uint32_t(mix64(key + ((first + i) / 2) * kGolden) >> 32)));
}

void fill_random(uint64_t key, InitRule rule, DType dtype, uint64_t first, size_t n, void* out) {
  switch (dtype) {
    case DType::kF32: {
      auto* o = static_cast<float*>(out);
      fill_random_as(key, rule, first, n, [o](size_t i, float v) { o[i] = v; });
      return;
    }
    case DType::kBF16: {
      auto* o = static_cast<uint16_t*>(out);
      fill_random_as(key, rule, first, n, [o](size_t i, float v) { o[i] = f32_to_bf16(v); });
      return;
    }
    case DType::kF16: {
      auto* o = static_cast<uint16_t*>(out);
      fill_random_as(key, rule, first, n, [o](size_t i, float v) { o[i] = f32_to_f16(v); });
      return;
    }
  }
}

// Streams one random tensor into `out` in chunks: threads fill one buffer while the previous
// one is written.
class RandomTensorStreamer {
 public:
  RandomTensorStreamer()
      : num_threads_(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 32)) {
    for (auto& b : buffers_) b.resize(kChunkElements * 4);
  }

  void write(OutputFile& out, uint64_t key, InitRule rule, DType dtype, uint64_t num_elements) {
    const size_t esize = dtype_size(dtype);
    std::future<void> pending;
    int which = 0;
    for (uint64_t first = 0; first < num_elements; first += kChunkElements) {
      const size_t n = size_t(std::min<uint64_t>(kChunkElements, num_elements - first));
      uint8_t* buf = buffers_[which].data();
      fill_parallel(key, rule, dtype, first, n, buf);
      if (pending.valid()) pending.get();  // the other buffer is free again
      pending = std::async(std::launch::async, [&out, buf, n, esize] { out.write(buf, n * esize); });
      which ^= 1;
    }
    if (pending.valid()) pending.get();
  }

 private:
  // 4M elements: 8 MB of bf16 per chunk, large enough that thread start-up is noise.
  static constexpr size_t kChunkElements = size_t(1) << 22;
  static constexpr size_t kMinElementsPerThread = size_t(1) << 16;

  void fill_parallel(uint64_t key, InitRule rule, DType dtype, uint64_t first, size_t n,
                     uint8_t* buf) {
    const size_t threads = std::min<size_t>(num_threads_, (n + kMinElementsPerThread - 1) /
                                                              kMinElementsPerThread);
    if (threads <= 1) {
      fill_random(key, rule, dtype, first, n, buf);
      return;
    }
    const size_t per = (n + threads - 1) / threads;
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; ++t) {
      const size_t begin = t * per, end = std::min(n, begin + per);
      if (begin >= end) break;
      pool.emplace_back([=] {
        fill_random(key, rule, dtype, first + begin, end - begin, buf + begin * dtype_size(dtype));
      });
    }
    for (auto& th : pool) th.join();
  }

  unsigned num_threads_;
  std::vector<uint8_t> buffers_[2];
};

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// Removes checkpoint files of an earlier write that the new one would not overwrite (a stale
// index would otherwise win over a new single model.safetensors).
void remove_stale_checkpoint(const std::filesystem::path& dir) {
  static const std::regex kShard(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == "model.safetensors" || name == "model.safetensors.index.json" ||
        std::regex_match(name, kShard)) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

}  // namespace

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<PlannedTensor> planned;
  std::map<std::string, const TensorToWrite*> by_name;
  for (const TensorToWrite& t : tensors) {
    for (int64_t d : t.shape) {
      if (d < 0) throw InvalidArgument(cat("safetensors: tensor '", t.name, "': negative size"));
    }
    const uint64_t expected = tensor_bytes(t.dtype, t.shape);
    if (t.bytes.size() != expected) {
      throw InvalidArgument(cat("safetensors: tensor '", t.name, "' has ", t.bytes.size(),
                                " bytes, shape ", format_shape(t.shape), " of ",
                                dtype_name(t.dtype), " needs ", expected));
    }
    planned.push_back({t.name, t.dtype, t.shape, expected});
    by_name[t.name] = &t;
  }
  const std::string header = plan_safetensors(planned, metadata);
  OutputFile out(path);
  out.write(header.data(), header.size());
  for (const PlannedTensor& p : planned) {
    const TensorToWrite& t = *by_name.at(p.name);
    out.write(t.bytes.data(), t.bytes.size());
  }
  out.commit();
}

void validate_config(const ModelConfig& c) {
  const Architecture* arch = find_architecture(c.architecture);
  if (!arch) {
    throw InvalidArgument(cat("unsupported architecture \"", c.architecture,
                              "\" (supported: ", list_architecture_names(), ")"));
  }
  auto positive = [](const char* field, int64_t v) {
    if (v <= 0) throw InvalidArgument(cat("model config: ", field, " must be positive, got ", v));
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_layers", c.num_layers);
  positive("num_heads", c.num_heads);
  positive("num_kv_heads", c.num_kv_heads);
  positive("head_dim", c.head_dim);
  positive("max_position_embeddings", c.max_position_embeddings);
  if (c.num_heads % c.num_kv_heads != 0) {
    throw InvalidArgument(cat("model config: num_heads (", c.num_heads,
                              ") must be a multiple of num_kv_heads (", c.num_kv_heads, ")"));
  }
  if (c.head_dim % 2 != 0) {
    throw InvalidArgument(cat("model config: head_dim must be even, got ", c.head_dim));
  }
  if (int64_t(c.sliding_window.size()) != c.num_layers) {
    throw InvalidArgument(cat("model config: sliding_window has ", c.sliding_window.size(),
                              " entries, expected one per layer (", c.num_layers, ")"));
  }
}

void write_random_checkpoint(const ModelConfig& config_in, const std::filesystem::path& out_dir,
                             uint64_t seed, DType dtype, uint64_t max_shard_bytes) {
  validate_config(config_in);
  if (max_shard_bytes == 0) throw InvalidArgument("max shard size must be positive");
  ModelConfig config = config_in;
  config.dtype = dtype;
  const std::string config_text = config_to_json(config);  // throws before touching the disk

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) throw Error(cat(out_dir.string(), ": cannot create directory: ", ec.message()));
  remove_stale_checkpoint(out_dir);

  // Group tensors into shards in state-dict order: a tensor that would push the current shard
  // past the limit starts a new one (a tensor larger than the limit gets a shard of its own).
  const std::vector<TensorSpec> specs = find_architecture(config.architecture)->tensors(config);
  std::vector<std::vector<const TensorSpec*>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const TensorSpec& spec : specs) {
    const uint64_t bytes = tensor_bytes(dtype, spec.shape);
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&spec);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  RandomTensorStreamer streamer;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file_name = shards.size() == 1 ? "model.safetensors" : shard_name(s, shards.size());
    std::vector<PlannedTensor> planned;
    std::map<std::string, const TensorSpec*> by_name;
    for (const TensorSpec* spec : shards[s]) {
      planned.push_back({spec->name, dtype, spec->shape, tensor_bytes(dtype, spec->shape)});
      by_name[spec->name] = spec;
      weight_map[spec->name] = file_name;
    }
    const std::string header = plan_safetensors(planned, {{"format", "pt"}});
    OutputFile out(out_dir / file_name);
    out.write(header.data(), header.size());
    for (const PlannedTensor& p : planned) {
      const TensorSpec& spec = *by_name.at(p.name);
      streamer.write(out, tensor_key(seed, spec.name), init_rule(spec.init), dtype,
                     uint64_t(spec.num_elements()));
    }
    out.commit();
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}},
                                  {"weight_map", weight_map}};
    write_text_file(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  write_text_file(out_dir / "config.json", config_text);
}

}  // namespace xy::model
