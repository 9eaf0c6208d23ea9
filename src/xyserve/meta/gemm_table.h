// The SmoothGEMM dispatch table (DESIGN.md, "SmoothGEMM"): for each linear-layer shape (N, K),
// buckets of M, each naming the candidate that offline profiling (`xyserve tune`) found fastest
// at the bucket's upper M. Plain data: the ids are strings that the backend resolves
// (backend/cuda/smooth_gemm.h): a kernel of the family ("stream_t16", "wgmma_128x256"),
// "cublaslt" (cuBLASLt's own per-M choice) or "cublaslt:<i>" (the i-th algorithm of cuBLASLt's
// heuristic at the bucket's upper M).
//
// File format (JSON, written by save()):
//   {"version": 1, "device": "NVIDIA H200",
//    "shapes": [{"n": 6144, "k": 4096,
//                "buckets": [{"max_m": 1, "candidate": "stream_t16", "us": 16.1, "cublaslt_us": 16.4},
//                            {"max_m": 2, ...}, ...]}, ...]}
// A bucket covers the M above the previous bucket's max_m up to its own (inclusive); "us" and
// "cublaslt_us" (optional) record what the tuner measured at max_m: the time the GEMM adds after
// the kernel that writes its input (`xyserve tune`).
//
// Threading: const methods are thread-safe; the table is immutable once built.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace xy::meta {

// What lookup() returns when the table has no entry for a shape or M: the caller runs its
// default (cuBLASLt).
inline constexpr std::string_view kNoGemmCandidate = "none";

struct GemmBucket {
  int32_t max_m = 0;      // upper bound of the bucket's M, inclusive
  std::string candidate;  // id of the candidate to run
  double us = 0;          // measured time of the candidate at max_m; 0: not recorded
  double cublaslt_us = 0; // measured time of cuBLASLt's default at max_m; 0: not recorded
};

struct GemmShapeEntry {
  int32_t n = 0;  // rows of W (output features)
  int32_t k = 0;  // columns of W (input features)
  std::vector<GemmBucket> buckets;  // max_m strictly increasing
};

class GemmTable {
 public:
  // An empty table: every lookup is kNoGemmCandidate.
  GemmTable() = default;
  // `device`: the name of the GPU the table was measured on (cudaDeviceProp::name).
  // `source`: where it came from, the start of every error message about it (a file's path).
  explicit GemmTable(std::string device, std::string source = "gemm table");

  // Adds the buckets of shape (n, k). Throws InvalidArgument naming the source and the shape
  // when (n, k) is already present or not positive, `buckets` is empty, a max_m is not positive
  // or not above the previous one, or a candidate id is empty or "none".
  void add_shape(int32_t n, int32_t k, std::vector<GemmBucket> buckets);

  // The candidate of the first bucket of (n, k) with m <= max_m; kNoGemmCandidate when the
  // table has no entry for (n, k), m is above the last bucket, or m < 1.
  std::string_view lookup(int64_t n, int64_t k, int64_t m) const;

  const std::string& device() const { return device_; }
  const std::string& source() const { return source_; }
  std::span<const GemmShapeEntry> shapes() const { return shapes_; }
  bool empty() const { return shapes_.empty(); }

  // The JSON text of the table (the format above), and the table of a JSON text; parse errors
  // throw InvalidArgument naming `source` and the field ("shapes[1].buckets[0].max_m").
  std::string to_json() const;
  static GemmTable from_json(std::string_view text, const std::string& source);

  // File forms of the above. load() throws InvalidArgument naming the path when the file is
  // missing, unreadable or malformed; save() writes a temporary file beside `path` and renames
  // it, so a reader never sees half a table, and throws Error when it cannot.
  static GemmTable load(const std::filesystem::path& path);
  void save(const std::filesystem::path& path) const;

 private:
  std::string device_;
  std::string source_ = "gemm table";
  std::vector<GemmShapeEntry> shapes_;
};

// The file name of the table for a device, "xyserve_gemm_table_<device>.json", with every
// character of the name other than [A-Za-z0-9._-] replaced by '_' ("NVIDIA H200" ->
// "xyserve_gemm_table_NVIDIA_H200.json"). `xyserve tune` writes it into the model directory by
// default and the CUDA backend looks for it there: one directory can hold the tables of
// several kinds of GPU that share it.
std::string gemm_table_file_name(std::string_view device_name);

}  // namespace xy::meta
