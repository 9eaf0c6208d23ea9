// Little-endian byte encoding of the messages the nodes of a multi-node group exchange (the
// rendezvous's hello, the step plans, the control messages): fixed-width integers, and strings
// and int32 arrays prefixed with their length. The reader checks every length against what is
// left, so a truncated or foreign message is an Error naming the message, never a read past
// the end.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "xyserve/common/error.h"

namespace xy::parallel {

// Integers are copied as they lie in memory; the wire is little-endian.
static_assert(std::endian::native == std::endian::little, "the wire format assumes a little-endian host");

class WireWriter {
 public:
  explicit WireWriter(std::vector<uint8_t>& out) : out_(out) {}

  template <class T>
  void put(T v) {
    static_assert(std::is_integral_v<T> || std::is_floating_point_v<T>);
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void put_bytes(std::span<const uint8_t> bytes) {
    put(uint32_t(bytes.size()));
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }
  void put_string(std::string_view s) {
    put_bytes({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  }
  void put_i32s(std::span<const int32_t> values) {
    put(uint32_t(values.size()));
    const size_t at = out_.size();
    out_.resize(at + values.size_bytes());
    if (!values.empty()) std::memcpy(out_.data() + at, values.data(), values.size_bytes());
  }

 private:
  std::vector<uint8_t>& out_;
};

class WireReader {
 public:
  // `what` names the message in errors ("step plan", "node 1's hello").
  WireReader(std::span<const uint8_t> bytes, std::string what) : bytes_(bytes), what_(std::move(what)) {}

  template <class T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }
  std::vector<uint8_t> get_bytes() {
    const uint32_t n = get<uint32_t>();
    const uint8_t* p = take(n);
    return std::vector<uint8_t>(p, p + n);
  }
  std::string get_string() {
    const uint32_t n = get<uint32_t>();
    return std::string(reinterpret_cast<const char*>(take(n)), n);
  }
  // Into `out`, reusing its storage.
  void get_i32s(std::vector<int32_t>& out) {
    const uint32_t n = get<uint32_t>();
    const uint8_t* p = take(size_t(n) * sizeof(int32_t));
    out.resize(n);
    if (n) std::memcpy(out.data(), p, size_t(n) * sizeof(int32_t));
  }
  // A count of elements that take at least `min_bytes_each` each: bounded by what is left, so
  // a corrupt count cannot make the caller allocate without limit.
  uint32_t get_count(size_t min_bytes_each) {
    const uint32_t n = get<uint32_t>();
    if (size_t(n) * min_bytes_each > remaining())
      throw Error(cat(what_, ": count ", n, " at byte ", pos_ - 4, " exceeds the ", remaining(), " bytes left"));
    return n;
  }

  size_t remaining() const { return bytes_.size() - pos_; }
  // Throws unless every byte was read: a longer message is not the one expected either.
  void expect_end() const {
    if (remaining() != 0)
      throw Error(cat(what_, ": ", remaining(), " unexpected bytes after byte ", pos_, " of ", bytes_.size()));
  }
  const std::string& what() const { return what_; }

 private:
  const uint8_t* take(size_t n) {
    if (n > remaining())
      throw Error(cat(what_, ": truncated: ", n, " bytes wanted at byte ", pos_, " of ", bytes_.size()));
    const uint8_t* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }

  std::span<const uint8_t> bytes_;
  std::string what_;
  size_t pos_ = 0;
};

}  // namespace xy::parallel
