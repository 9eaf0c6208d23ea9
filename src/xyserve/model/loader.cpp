// load_model: config.json, then the safetensors files (one, or shards listed by
// model.safetensors.index.json), then every tensor the architecture expects, checked against
// the config's shapes.
#include "xyserve/model/weights.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <unordered_map>

#include "xyserve/common/check.h"
#include "xyserve/common/error.h"
#include "xyserve/common/log.h"
#include "xyserve/model/architecture.h"
#include "xyserve/model/json_fields.h"
#include "xyserve/model/safetensors.h"

namespace xy::model {
namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Where each tensor lives: the opened files, and for a tensor name the file that holds it.
struct WeightFiles {
  std::vector<std::shared_ptr<const SafetensorsFile>> files;
  // Sharded checkpoints: tensor name -> position in `files`, from the index's weight_map.
  std::unordered_map<std::string, size_t> weight_map;
  bool sharded = false;
  std::filesystem::path index_path;
};

WeightFiles open_sharded(const std::filesystem::path& dir) {
  WeightFiles out;
  out.sharded = true;
  out.index_path = dir / kIndexFile;
  const nlohmann::json index = read_json_file(out.index_path);
  const JsonFields fields(index, out.index_path.string());
  const nlohmann::json* map = fields.get("weight_map");
  if (!map || !map->is_object()) fields.fail("weight_map", "an object of tensor name -> file name");
  std::unordered_map<std::string, size_t> file_positions;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      fields.fail_message("weight_map", cat("tensor '", it.key(), "': expected a file name, found ",
                                            describe_json(*it)));
    }
    const std::string shard = it->get<std::string>();
    // A shard name is a plain file name in the model directory, never a path out of it.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      fields.fail_message("weight_map", cat("tensor '", it.key(), "': invalid shard file name \"",
                                            shard, "\""));
    }
    auto [pos, inserted] = file_positions.emplace(shard, out.files.size());
    if (inserted) {
      const std::filesystem::path shard_path = dir / shard;
      std::error_code ec;
      if (!std::filesystem::exists(shard_path, ec)) {
        throw ModelError(cat(out.index_path.string(), ": names shard '", shard, "' (for tensor '",
                             it.key(), "'), but ", shard_path.string(), " does not exist"));
      }
      out.files.push_back(SafetensorsFile::open(shard_path));
    }
    out.weight_map[it.key()] = pos->second;
  }
  return out;
}

WeightFiles open_weight_files(const std::filesystem::path& dir) {
  std::error_code ec;
  if (std::filesystem::exists(dir / kIndexFile, ec)) return open_sharded(dir);
  if (std::filesystem::exists(dir / kSingleFile, ec)) {
    WeightFiles out;
    out.files.push_back(SafetensorsFile::open(dir / kSingleFile));
    return out;
  }
  throw ModelError(cat(dir.string(), ": no ", kSingleFile, " or ", kIndexFile,
                       " (xyserve loads Hugging Face safetensors checkpoints)"));
}

// Finds `spec` in the files; throws ModelError naming where it was looked for.
const SafetensorsTensor& find_tensor(const WeightFiles& wf, const TensorSpec& spec,
                                     const SafetensorsFile*& file) {
  if (wf.sharded) {
    auto it = wf.weight_map.find(spec.name);
    if (it == wf.weight_map.end()) {
      throw ModelError(cat(wf.index_path.string(), ": missing tensor '", spec.name,
                           "' (expected shape ", format_shape(spec.shape), ")"));
    }
    file = wf.files[it->second].get();
    const SafetensorsTensor* t = file->find(spec.name);
    if (!t) {
      throw ModelError(cat(file->path().string(), ": missing tensor '", spec.name,
                           "', which ", wf.index_path.filename().string(), " places in it"));
    }
    return *t;
  }
  file = wf.files[0].get();
  const SafetensorsTensor* t = file->find(spec.name);
  if (!t) {
    throw ModelError(cat(file->path().string(), ": missing tensor '", spec.name,
                         "' (expected shape ", format_shape(spec.shape), ")"));
  }
  return *t;
}

// Reads one byte per page so the kernel pages [data, data + num_bytes) in now.
void touch_pages(const std::byte* data, size_t num_bytes) {
  constexpr size_t kPage = 4096;
  const auto* p = reinterpret_cast<const volatile unsigned char*>(data);
  unsigned char sink = 0;
  for (size_t i = 0; i < num_bytes; i += kPage) sink ^= p[i];
  if (num_bytes) sink ^= p[num_bytes - 1];
  (void)sink;
}

struct ByteRange {
  const MappedFile* file;
  size_t offset, num_bytes;
};

// Pages every range in with several threads (a disk serves parallel reads faster than one stream
// of page faults), calling `on_progress` from this thread only, every 50 ms.
void prefault(const std::vector<ByteRange>& ranges, size_t total_bytes,
              const std::function<void(size_t, size_t)>& on_progress) {
  // Pieces of at most 64 MB, so one large embedding table does not serialise the work.
  constexpr size_t kPiece = size_t(64) << 20;
  std::vector<ByteRange> pieces;
  for (const ByteRange& r : ranges) {
    for (size_t off = 0; off < r.num_bytes; off += kPiece) {
      pieces.push_back({r.file, r.offset + off, std::min(kPiece, r.num_bytes - off)});
    }
  }
  std::atomic<size_t> next{0}, done_bytes{0};
  const size_t num_threads =
      std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  std::vector<std::thread> workers;
  for (size_t t = 0; t < std::min(num_threads, pieces.size()); ++t) {
    workers.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
        const ByteRange& p = pieces[i];
        p.file->prefetch(p.offset, p.num_bytes);
        touch_pages(p.file->data() + p.offset, p.num_bytes);
        done_bytes.fetch_add(p.num_bytes);
      }
    });
  }
  while (on_progress && done_bytes.load() < total_bytes) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    on_progress(done_bytes.load(), total_bytes);
  }
  for (std::thread& w : workers) w.join();
}

}  // namespace

std::unique_ptr<ModelWeights> load_model(const std::filesystem::path& dir,
                                         const LoadOptions& options) {
  auto weights = std::make_unique<ModelWeights>();
  weights->config = load_config(dir);
  const ModelConfig& config = weights->config;
  const Architecture* arch = find_architecture(config.architecture);
  XY_CHECK(arch != nullptr, config.architecture);

  const WeightFiles wf = open_weight_files(dir);
  for (const auto& f : wf.files) weights->files.push_back(f->mapping());
  weights->layers.resize(size_t(config.num_layers));

  const std::vector<TensorSpec> specs = arch->tensors(config);
  // Resolve everything first: a bad checkpoint fails before any page is read.
  std::vector<std::pair<const SafetensorsTensor*, const SafetensorsFile*>> found;
  found.reserve(specs.size());
  size_t total_bytes = 0;
  for (const TensorSpec& spec : specs) {
    const SafetensorsFile* file = nullptr;
    const SafetensorsTensor& t = find_tensor(wf, spec, file);
    if (t.shape != spec.shape) {
      throw ModelError(cat(file->path().filename().string(), ": tensor '", spec.name,
                           "' has shape ", format_shape(t.shape), ", expected ",
                           format_shape(spec.shape), " (in ", file->path().string(), ")"));
    }
    // Backends read elements through typed pointers; Hugging Face's writer aligns every
    // tensor, so a misaligned one means a hand-made or damaged file.
    if (t.offset % dtype_size(t.dtype) != 0) {
      throw ModelError(cat(file->path().string(), ": tensor '", spec.name, "' starts at byte ",
                           t.offset, ", not a multiple of its ", dtype_name(t.dtype),
                           " element size"));
    }
    found.emplace_back(&t, file);
    total_bytes += t.num_bytes;
  }

  // Without prefault, "done" advances as views are set up (instant: pages are read on first
  // use); with it, as the pages come in from disk.
  size_t done_bytes = 0;
  if (options.on_progress) options.on_progress(0, total_bytes);
  std::vector<ByteRange> ranges;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const auto [t, file] = found[i];
    WeightTensor view{spec.name, t->dtype, t->shape, file->data(*t), t->num_bytes};
    if (spec.layer >= 0) {
      weights->layers[size_t(spec.layer)].*spec.layer_slot = std::move(view);
    } else {
      (*weights).*spec.model_slot = std::move(view);
    }
    if (options.prefault) {
      ranges.push_back({file->mapping().get(), t->offset, t->num_bytes});
    } else {
      done_bytes += t->num_bytes;
      if (options.on_progress) options.on_progress(done_bytes, total_bytes);
    }
  }
  if (options.prefault) {
    prefault(ranges, total_bytes, options.on_progress);
    if (options.on_progress) options.on_progress(total_bytes, total_bytes);
  }
  if (config.tie_word_embeddings) weights->lm_head = weights->embed_tokens;

  // Tensors nobody asked for (rotary inv_freq buffers, a tied lm_head copy) are ignored.
  if (log_level() <= LogLevel::kDebug) {
    std::set<std::string_view> expected;
    for (const TensorSpec& spec : specs) expected.insert(spec.name);
    for (const auto& f : wf.files) {
      for (const SafetensorsTensor& t : f->tensors()) {
        if (!expected.count(t.name)) {
          log_debug(f->path().filename().string(), ": ignoring unused tensor '", t.name, "'");
        }
      }
    }
  }
  return weights;
}

}  // namespace xy::model
