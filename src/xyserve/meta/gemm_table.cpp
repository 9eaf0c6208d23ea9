#include "xyserve/meta/gemm_table.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "xyserve/common/error.h"

namespace xy::meta {
namespace {

using nlohmann::json;

constexpr int64_t kFormatVersion = 1;

// A short rendering of a JSON value for error messages (long values are cut).
std::string describe(const json& value) {
  constexpr size_t kMaxChars = 60;
  std::string text = value.dump();
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

// Typed reads of one JSON object's fields; `where` is the object's path in the file
// ("shapes[2]"), so that a message reads "<file>: field 'shapes[2].n': expected ..., found ...".
class Fields {
 public:
  Fields(const json& object, const std::string& source, std::string where)
      : object_(object), source_(source), where_(std::move(where)) {
    if (!object.is_object()) {
      throw InvalidArgument(cat(source_, ": ", where_.empty() ? "the file" : cat("field '", where_, "'"),
                                ": expected a JSON object, found ", describe(object)));
    }
  }

  std::string name(std::string_view field) const {
    return where_.empty() ? std::string(field) : cat(where_, ".", field);
  }

  [[noreturn]] void fail(std::string_view field, std::string_view expected) const {
    auto it = object_.find(field);
    throw InvalidArgument(cat(source_, ": field '", name(field), "': expected ", expected, ", found ",
                              it == object_.end() ? std::string("nothing (missing)") : describe(*it)));
  }

  const json& require(std::string_view field, std::string_view expected) const {
    auto it = object_.find(field);
    if (it == object_.end()) fail(field, expected);
    return *it;
  }

  int64_t require_int(std::string_view field, int64_t min_value, int64_t max_value) const {
    const std::string expected = cat("an integer in [", min_value, ", ", max_value, "]");
    const json& v = require(field, expected);
    if (!v.is_number_integer()) fail(field, expected);
    // A value above INT64_MAX parses as unsigned; get<int64_t> would wrap it.
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(max_value)) fail(field, expected);
    const int64_t i = v.get<int64_t>();
    if (i < min_value || i > max_value) fail(field, expected);
    return i;
  }

  std::string require_string(std::string_view field) const {
    const json& v = require(field, "a string");
    if (!v.is_string()) fail(field, "a string");
    return v.get<std::string>();
  }

  const json& require_array(std::string_view field) const {
    const json& v = require(field, "an array");
    if (!v.is_array()) fail(field, "an array");
    return v;
  }

  // 0 when absent.
  double optional_non_negative(std::string_view field) const {
    auto it = object_.find(field);
    if (it == object_.end()) return 0;
    if (!it->is_number() || !(it->get<double>() >= 0)) fail(field, "a non-negative number");
    return it->get<double>();
  }

 private:
  const json& object_;
  const std::string& source_;
  std::string where_;
};

}  // namespace

GemmTable::GemmTable(std::string device, std::string source)
    : device_(std::move(device)), source_(std::move(source)) {}

void GemmTable::add_shape(int32_t n, int32_t k, std::vector<GemmBucket> buckets) {
  const std::string where = cat(source_, ": shape n=", n, " k=", k);
  if (n < 1 || k < 1) throw InvalidArgument(cat(where, ": n and k must be positive"));
  for (const GemmShapeEntry& s : shapes_) {
    if (s.n == n && s.k == k) throw InvalidArgument(cat(where, ": listed twice"));
  }
  if (buckets.empty()) throw InvalidArgument(cat(where, ": no buckets"));
  int32_t previous = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const GemmBucket& b = buckets[i];
    if (b.max_m <= previous) {
      throw InvalidArgument(cat(where, ": bucket ", i, ": max_m ", b.max_m,
                                i == 0 ? " is not positive" : cat(" is not above the previous bucket's ", previous)));
    }
    if (b.candidate.empty() || b.candidate == kNoGemmCandidate) {
      throw InvalidArgument(cat(where, ": bucket ", i, " (max_m ", b.max_m, "): candidate '", b.candidate,
                                "' is not a candidate id (leave the M out of the table instead)"));
    }
    previous = b.max_m;
  }
  shapes_.push_back(GemmShapeEntry{n, k, std::move(buckets)});
}

std::string_view GemmTable::lookup(int64_t n, int64_t k, int64_t m) const {
  if (m < 1) return kNoGemmCandidate;
  for (const GemmShapeEntry& s : shapes_) {
    if (s.n != n || s.k != k) continue;
    // Buckets are few (about 20) and sorted: the first whose bound holds m.
    auto it = std::find_if(s.buckets.begin(), s.buckets.end(),
                           [m](const GemmBucket& b) { return m <= b.max_m; });
    return it == s.buckets.end() ? kNoGemmCandidate : std::string_view(it->candidate);
  }
  return kNoGemmCandidate;
}

std::string GemmTable::to_json() const {
  // One line per bucket, so that a person can read the table and a diff of two tunes;
  // ordered_json keeps the keys in reading order (json sorts them).
  using ordered = nlohmann::ordered_json;
  std::string out = cat("{\n \"version\": ", kFormatVersion, ",\n \"device\": ", ordered(device_).dump(),
                        ",\n \"shapes\": [");
  for (size_t i = 0; i < shapes_.size(); ++i) {
    const GemmShapeEntry& s = shapes_[i];
    out += cat(i == 0 ? "\n" : ",\n", "  {\"n\": ", s.n, ", \"k\": ", s.k, ", \"buckets\": [");
    for (size_t j = 0; j < s.buckets.size(); ++j) {
      const GemmBucket& b = s.buckets[j];
      ordered bucket = {{"max_m", b.max_m}, {"candidate", b.candidate}};
      if (b.us > 0) bucket["us"] = b.us;
      if (b.cublaslt_us > 0) bucket["cublaslt_us"] = b.cublaslt_us;
      out += cat(j == 0 ? "\n" : ",\n", "   ", bucket.dump());
    }
    out += "]}";
  }
  out += "]\n}\n";
  return out;
}

GemmTable GemmTable::from_json(std::string_view text, const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw InvalidArgument(cat(source, ": invalid JSON: ", e.what()));
  }
  const Fields top(root, source, "");
  const int64_t version = top.require_int("version", 1, INT32_MAX);
  if (version != kFormatVersion) top.fail("version", cat(kFormatVersion, " (the only format this xyserve reads)"));
  GemmTable table(top.require_string("device"), source);
  const json& shapes = top.require_array("shapes");
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Fields shape(shapes[i], source, cat("shapes[", i, "]"));
    const auto n = int32_t(shape.require_int("n", 1, INT32_MAX));
    const auto k = int32_t(shape.require_int("k", 1, INT32_MAX));
    const json& buckets_json = shape.require_array("buckets");
    std::vector<GemmBucket> buckets;
    for (size_t j = 0; j < buckets_json.size(); ++j) {
      const Fields bucket(buckets_json[j], source, cat(shape.name("buckets"), "[", j, "]"));
      GemmBucket b;
      b.max_m = int32_t(bucket.require_int("max_m", 1, INT32_MAX));
      b.candidate = bucket.require_string("candidate");
      b.us = bucket.optional_non_negative("us");
      b.cublaslt_us = bucket.optional_non_negative("cublaslt_us");
      buckets.push_back(std::move(b));
    }
    table.add_shape(n, k, std::move(buckets));  // ordering, duplicates, empty ids: named there
  }
  return table;
}

GemmTable GemmTable::load(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw InvalidArgument(cat(path.string(), ": file not found"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(cat(path.string(), ": cannot open for reading"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InvalidArgument(cat(path.string(), ": read error"));
  return from_json(text.str(), path.string());
}

void GemmTable::save(const std::filesystem::path& path) const {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(cat(tmp.string(), ": cannot open for writing"));
    out << to_json();
    out.close();
    if (!out) throw Error(cat(tmp.string(), ": write error"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(cat("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message()));
}

std::string gemm_table_file_name(std::string_view device_name) {
  std::string slug(device_name);
  for (char& c : slug) {
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
    if (!keep) c = '_';
  }
  if (slug.empty()) slug = "unknown_device";
  return cat("xyserve_gemm_table_", slug, ".json");
}

}  // namespace xy::meta
