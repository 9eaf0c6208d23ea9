#include "xyserve/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "xyserve/common/error.h"
#include "xyserve/model/json_fields.h"
#include "xyserve/model/tensor_layout.h"

namespace xy::model {

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ModelError(cat(path.string(), ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw ModelError(cat(path.string(), ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ModelError(cat(path.string(), ": not a regular file"));
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {  // mmap of length 0 fails; an empty file maps to nothing
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw ModelError(cat(path.string(), ": cannot mmap ", size_, " bytes: ", std::strerror(err)));
    }
    data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);  // the mapping keeps the file open
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

void MappedFile::prefetch(size_t offset, size_t length) const {
  if (!data_ || offset >= size_) return;
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  const size_t end = std::min(size_, offset + length);
  ::madvise(const_cast<std::byte*>(data_) + begin, end - begin, MADV_WILLNEED);
}

namespace {

bool parse_dtype(std::string_view name, DType& out) {
  if (name == "F32") { out = DType::kF32; return true; }
  if (name == "F16") { out = DType::kF16; return true; }
  if (name == "BF16") { out = DType::kBF16; return true; }
  return false;
}

SafetensorsTensor parse_tensor_entry(const std::string& name, const nlohmann::json& entry,
                                     size_t data_start, size_t data_size,
                                     const std::string& source) {
  const std::string where = cat(source, ": tensor '", name, "'");
  if (!entry.is_object()) {
    throw ModelError(cat(where, ": expected an object with dtype, shape and data_offsets, found ",
                         describe_json(entry)));
  }
  SafetensorsTensor t;
  t.name = name;
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    throw ModelError(cat(where, ": field 'dtype': expected a string, found ",
                         dtype_it == entry.end() ? "nothing" : describe_json(*dtype_it)));
  }
  const std::string dtype = dtype_it->get<std::string>();
  if (!parse_dtype(dtype, t.dtype)) {
    throw ModelError(cat(where, ": dtype ", dtype,
                         " is not supported (supported: F32, F16, BF16)"));
  }
  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    throw ModelError(cat(where, ": field 'shape': expected a list of sizes, found ",
                         shape_it == entry.end() ? "nothing" : describe_json(*shape_it)));
  }
  uint64_t num_elements = 1;
  for (const nlohmann::json& d : *shape_it) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX) ||
        __builtin_mul_overflow(num_elements, d.get<uint64_t>(), &num_elements)) {
      throw ModelError(cat(where, ": field 'shape': expected non-negative sizes, found ",
                           describe_json(*shape_it)));
    }
    t.shape.push_back(d.get<int64_t>());
  }
  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    throw ModelError(cat(where, ": field 'data_offsets': expected [begin, end], found ",
                         offsets_it == entry.end() ? "nothing" : describe_json(*offsets_it)));
  }
  const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
  const uint64_t end = (*offsets_it)[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    throw ModelError(cat(where, ": data_offsets [", begin, ", ", end,
                         "] lie outside the data area of ", data_size,
                         " bytes (is the file truncated?)"));
  }
  uint64_t expected_bytes = 0;
  if (__builtin_mul_overflow(num_elements, uint64_t(dtype_size(t.dtype)), &expected_bytes) ||
      end - begin != expected_bytes) {
    throw ModelError(cat(where, ": data_offsets [", begin, ", ", end, "] hold ", end - begin,
                         " bytes, but shape ", format_shape(t.shape), " of ", dtype, " needs ",
                         expected_bytes));
  }
  t.offset = data_start + size_t(begin);
  t.num_bytes = size_t(end - begin);
  return t;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const std::byte* data, size_t size,
                                           const std::string& source) {
  if (size < 8) {
    throw ModelError(cat(source, ": file is ", size,
                         " bytes, too short for a safetensors header (truncated?)"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint64_t(data[i]);
  if (header_len > size - 8) {
    throw ModelError(cat(source, ": header length ", header_len, " exceeds the file size ", size,
                         " (truncated, or not a safetensors file?)"));
  }
  if (header_len > kMaxSafetensorsHeaderBytes) {
    throw ModelError(cat(source, ": header length ", header_len, " exceeds the limit of ",
                         kMaxSafetensorsHeaderBytes, " bytes"));
  }
  const char* text = reinterpret_cast<const char*>(data + 8);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, text + header_len);
  } catch (const nlohmann::json::parse_error& e) {
    throw ModelError(cat(source, ": header is not valid JSON: ", e.what()));
  }
  if (!json.is_object()) {
    throw ModelError(cat(source, ": header: expected a JSON object, found ", describe_json(json)));
  }
  SafetensorsHeader header;
  header.data_start = size_t(8 + header_len);
  const size_t data_size = size - header.data_start;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        throw ModelError(cat(source, ": __metadata__: expected an object of strings, found ",
                             describe_json(*it)));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          throw ModelError(cat(source, ": __metadata__ '", m.key(), "': expected a string, found ",
                               describe_json(*m)));
        }
        header.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(
        parse_tensor_entry(it.key(), *it, header.data_start, data_size, source));
  }
  // No two tensors may share bytes: a writer bug (or a crafted file) would otherwise alias
  // weights silently. Empty tensors occupy nothing.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : header.tensors) {
    if (t.num_bytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsTensor& prev = *by_offset[i - 1];
    const SafetensorsTensor& next = *by_offset[i];
    if (prev.offset + prev.num_bytes > next.offset) {
      throw ModelError(cat(source, ": tensors '", prev.name, "' and '", next.name,
                           "' overlap (data_offsets [", prev.offset - header.data_start, ", ",
                           prev.offset + prev.num_bytes - header.data_start, "] and [",
                           next.offset - header.data_start, ", ",
                           next.offset + next.num_bytes - header.data_start, "])"));
    }
  }
  return header;
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<const MappedFile> mapping,
                                 SafetensorsHeader header)
    : mapping_(std::move(mapping)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  auto mapping = std::make_shared<const MappedFile>(path);
  SafetensorsHeader header = parse_safetensors_header(mapping->data(), mapping->size(), path.string());
  return std::shared_ptr<const SafetensorsFile>(
      new SafetensorsFile(std::move(mapping), std::move(header)));
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

}  // namespace xy::model
