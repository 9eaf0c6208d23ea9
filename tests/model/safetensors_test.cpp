// The safetensors reader against hand-encoded files, the writer against an independent parse,
// and every malformed-file error.
#include <cstring>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "xyserve/common/error.h"
#include "xyserve/model/checkpoint_writer.h"
#include "xyserve/model/safetensors.h"

namespace xy::model {
namespace {

using testing::encode_safetensors;
using testing::random_bytes;
using testing::raw_safetensors;
using testing::RawTensor;
using testing::ScratchDir;

std::vector<int64_t> random_shape(std::mt19937_64& rng) {
  std::vector<int64_t> shape(rng() % 4);  // rank 0..3; rank 0 is a scalar of one element
  for (auto& d : shape) d = int64_t(rng() % 7);  // zero-sized dims included
  return shape;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TEST(SafetensorsTest, ReadsHandEncodedFilesExactly) {
  std::mt19937_64 rng(42);
  const std::pair<const char*, DType> kDtypes[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16}};
  for (int trial = 0; trial < 30; ++trial) {
    ScratchDir dir;
    std::vector<RawTensor> tensors;
    std::vector<DType> dtypes;
    const size_t n = 1 + rng() % 6;
    for (size_t i = 0; i < n; ++i) {
      const auto& [dname, dtype] = kDtypes[rng() % 3];
      RawTensor t{cat("t", i, ".", rng() % 1000), dname,
                  random_shape(rng), ""};
      t.bytes = random_bytes(rng, size_t(numel(t.shape)) * dtype_size(dtype));
      tensors.push_back(t);
      dtypes.push_back(dtype);
    }
    testing::write_file(dir / "a.safetensors", encode_safetensors(tensors));
    const auto file = SafetensorsFile::open(dir / "a.safetensors");
    ASSERT_EQ(file->tensors().size(), n);
    for (size_t i = 0; i < n; ++i) {
      const SafetensorsTensor* t = file->find(tensors[i].name);
      ASSERT_NE(t, nullptr) << tensors[i].name;
      EXPECT_EQ(t->dtype, dtypes[i]);
      EXPECT_EQ(t->shape, tensors[i].shape);
      ASSERT_EQ(t->num_bytes, tensors[i].bytes.size());
      EXPECT_EQ(0, std::memcmp(file->data(*t), tensors[i].bytes.data(), t->num_bytes));
    }
    EXPECT_EQ(file->find("absent"), nullptr);
  }
}

TEST(SafetensorsTest, AcceptsMetadataAndPaddedHeader) {
  ScratchDir dir;
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"
      "      ";
  testing::write_file(dir / "a.safetensors", raw_safetensors(header, std::string(8, '\x01')));
  const auto file = SafetensorsFile::open(dir / "a.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->tensors().size(), 1u);
}

// The writer's output, parsed here by hand: 8-byte length, a JSON header padded to 8 bytes,
// tensors laid out back to back ordered by element size (largest first) then name, each aligned
// to its element size, bytes unchanged.
TEST(SafetensorsTest, WriterOutputIsSortedAlignedAndExact) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    ScratchDir dir;
    std::vector<TensorToWrite> tensors;
    const size_t n = 1 + rng() % 8;
    for (size_t i = 0; i < n; ++i) {
      const DType dtype = DType(rng() % 3);
      TensorToWrite t{"layer." + std::to_string(rng() % 100000) + ".w" + std::to_string(i), dtype,
                      random_shape(rng), {}};
      const std::string bytes = random_bytes(rng, size_t(numel(t.shape)) * dtype_size(dtype));
      t.bytes.assign(bytes.begin(), bytes.end());
      tensors.push_back(std::move(t));
    }
    write_safetensors(dir / "w.safetensors", tensors);
    EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors.part"));
    const std::string file = testing::read_file(dir / "w.safetensors");
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(file[size_t(i)]);
    ASSERT_EQ(header_len % 8, 0u);
    const nlohmann::json header = nlohmann::json::parse(file.substr(8, header_len));
    EXPECT_EQ(header["__metadata__"]["format"], "pt");
    std::vector<std::string> names;
    for (const auto& [name, entry] : header.items()) {
      if (name != "__metadata__") names.push_back(name);
    }
    ASSERT_EQ(names.size(), n);
    std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
      auto size = [&](const std::string& n) { return header[n]["dtype"] == "F32" ? 4 : 2; };
      return size(a) > size(b);
    });  // json::items() gave them sorted by name
    uint64_t expected_begin = 0;
    for (const std::string& name : names) {
      const auto& entry = header[name];
      const auto it = std::find_if(tensors.begin(), tensors.end(),
                                   [&](const TensorToWrite& t) { return t.name == name; });
      ASSERT_NE(it, tensors.end());
      EXPECT_EQ(entry["dtype"], std::string(dtype_name(it->dtype)));
      EXPECT_EQ(entry["shape"].get<std::vector<int64_t>>(), it->shape);
      const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
      EXPECT_EQ(begin, expected_begin) << name;
      EXPECT_EQ((8 + header_len + begin) % dtype_size(it->dtype), 0u) << name;
      ASSERT_EQ(end - begin, it->bytes.size());
      if (!it->bytes.empty()) {  // memcmp's pointers must not be null, even for 0 bytes
        EXPECT_EQ(0, std::memcmp(file.data() + 8 + header_len + begin, it->bytes.data(),
                                 it->bytes.size()));
      }
      expected_begin = end;
    }
    EXPECT_EQ(file.size(), 8 + header_len + expected_begin);
  }
}

TEST(SafetensorsTest, WriterRejectsByteCountNotMatchingShape) {
  ScratchDir dir;
  TensorToWrite t{"w", DType::kBF16, {3, 4}, std::vector<uint8_t>(23)};
  EXPECT_THROW(write_safetensors(dir / "w.safetensors", {t}), InvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors"));
  TensorToWrite a{"same", DType::kF32, {1}, std::vector<uint8_t>(4)};
  EXPECT_THROW(write_safetensors(dir / "w.safetensors", {a, a}), InvalidArgument);
}

// Each malformed file, and what the error must name besides the file.
struct BrokenFile {
  const char* what;
  std::string bytes;
  std::vector<std::string> expected;
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

std::vector<BrokenFile> broken_files() {
  const std::string good = "{" + entry("a", "F32", "[2,2]", 0, 16) + "}";
  std::string length_too_big(8, '\0');
  length_too_big[0] = char(0xff);
  length_too_big[1] = char(0x10);  // 4351 bytes of header claimed
  length_too_big += "{}";
  std::string huge(8, '\0');
  huge[7] = char(0x7f);  // about 9.2e18
  std::string truncated = raw_safetensors(good, std::string(16, 'x'));
  truncated.resize(truncated.size() - 5);
  return {
      {"empty file", "", {"too short"}},
      {"shorter than the length prefix", std::string(5, '\0'), {"too short"}},
      {"header length beyond the file", length_too_big, {"header length 4351", "exceeds"}},
      {"absurd header length", huge, {"header length", "exceeds"}},
      {"header not JSON", raw_safetensors("{\"a\": [", ""), {"not valid JSON"}},
      {"header not an object", raw_safetensors("[1,2]", ""), {"expected a JSON object"}},
      {"truncated data", truncated, {"'a'", "outside the data area", "truncated"}},
      {"offsets past the end",
       raw_safetensors("{" + entry("w", "F32", "[4]", 16, 32) + "}", std::string(16, 'x')),
       {"'w'", "[16, 32]", "outside"}},
      {"begin after end",
       raw_safetensors("{" + entry("w", "F32", "[0]", 8, 4) + "}", std::string(16, 'x')),
       {"'w'", "[8, 4]"}},
      {"overlapping tensors",
       raw_safetensors("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}",
                       std::string(12, 'x')),
       {"'a'", "'b'", "overlap"}},
      {"bytes do not match shape",
       raw_safetensors("{" + entry("w", "BF16", "[3,3]", 0, 16) + "}", std::string(16, 'x')),
       {"'w'", "[3, 3]", "BF16", "needs 18"}},
      {"unsupported dtype",
       raw_safetensors("{" + entry("ids", "I64", "[2]", 0, 16) + "}", std::string(16, 'x')),
       {"'ids'", "I64", "not supported"}},
      {"negative dim",
       raw_safetensors("{" + entry("w", "F32", "[-1]", 0, 0) + "}", ""), {"'w'", "'shape'"}},
      {"missing offsets",
       raw_safetensors(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, 'x')),
       {"'w'", "'data_offsets'"}},
      {"entry not an object", raw_safetensors(R"({"w":3})", ""), {"'w'"}},
      {"metadata not strings", raw_safetensors(R"({"__metadata__":{"a":1}})", ""), {"__metadata__"}},
  };
}

TEST(SafetensorsTest, RejectsMalformedFilesNamingFileAndTensor) {
  for (const BrokenFile& bf : broken_files()) {
    SCOPED_TRACE(bf.what);
    ScratchDir dir;
    const auto path = dir / "broken.safetensors";
    testing::write_file(path, bf.bytes);
    try {
      SafetensorsFile::open(path);
      ADD_FAILURE() << "no error";
    } catch (const ModelError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      for (const std::string& s : bf.expected) {
        EXPECT_NE(message.find(s), std::string::npos) << "'" << s << "' not in: " << message;
      }
    }
  }
}

// Random corruption of a valid file never crashes the parser: it either reads a valid header or
// throws ModelError (run under ASan in CI).
TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(99);
  std::string good = raw_safetensors(
      "{" + entry("a", "F32", "[2,2]", 0, 16) + "," + entry("b", "BF16", "[3]", 16, 22) + "}",
      std::string(22, 'x'));
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) bytes[rng() % bytes.size()] = char(rng() & 0xff);
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    try {
      const SafetensorsHeader h = parse_safetensors_header(
          reinterpret_cast<const std::byte*>(bytes.data()), bytes.size(), "fuzz.safetensors");
      for (const auto& t : h.tensors) EXPECT_LE(t.offset + t.num_bytes, bytes.size());
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find("fuzz.safetensors"), std::string::npos);
    }
  }
}

TEST(SafetensorsTest, MissingFileIsNamed) {
  ScratchDir dir;
  try {
    SafetensorsFile::open(dir / "nope.safetensors");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace xy::model
