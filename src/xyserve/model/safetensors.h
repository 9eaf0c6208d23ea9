// Reading safetensors files: a read-only memory map and a validated header.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, then N bytes
// of JSON {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the data area; offsets are relative to its start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "xyserve/common/dtype.h"

namespace xy::model {

// A whole file mapped read-only. Thread-safe to read from once constructed.
class MappedFile {
 public:
  // Throws ModelError naming the file if it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  // Asks the kernel to read [offset, offset + length) ahead (madvise WILLNEED); a hint only.
  void prefetch(size_t offset, size_t length) const;

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t offset = 0;  // from the start of the file (not of the data area)
  size_t num_bytes = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;  // in header (name) order
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;  // 8 + header length
};

// The largest header accepted; the reference implementation's limit (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses and validates the header of a safetensors file held in [data, data + size); `source`
// (the file's name) starts every error message. Checks: the length prefix fits the file, the
// header is a JSON object, every tensor has a supported dtype (F32, F16, BF16), a shape of
// non-negative integers, data_offsets inside the data area whose length matches shape and dtype,
// and no two tensors overlap. Throws ModelError naming the file and the tensor.
SafetensorsHeader parse_safetensors_header(const std::byte* data, size_t size,
                                           const std::string& source);

// One opened safetensors file: its mapping and its validated header.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws ModelError naming it.
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);

  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // Null if the file has no tensor of that name.
  const SafetensorsTensor* find(std::string_view name) const;
  const void* data(const SafetensorsTensor& tensor) const { return mapping_->data() + tensor.offset; }
  const std::shared_ptr<const MappedFile>& mapping() const { return mapping_; }
  const std::filesystem::path& path() const { return mapping_->path(); }

 private:
  SafetensorsFile(std::shared_ptr<const MappedFile> mapping, SafetensorsHeader header);

  std::shared_ptr<const MappedFile> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in header_.tensors
};

}  // namespace xy::model
