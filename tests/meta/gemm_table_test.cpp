#include "xyserve/meta/gemm_table.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "xyserve/common/error.h"

namespace xy::meta {
namespace {

GemmTable two_shape_table() {
  GemmTable t("NVIDIA H200", "table.json");
  t.add_shape(6144, 4096, {{1, "stream_t16", 16.1, 16.4}, {16, "stream_t16_n64"}, {128, "cublaslt:2"},
                           {8192, "wgmma_128x256", 2700.5, 2710.25}});
  t.add_shape(4096, 14336, {{64, "cublaslt"}});
  return t;
}

// The message of the InvalidArgument that `parse` throws for `text` (empty if none).
std::string parse_error(const std::string& text) {
  try {
    GemmTable::from_json(text, "t.json");
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(GemmTable, LookupPicksTheFirstBucketHoldingM) {
  const GemmTable t = two_shape_table();
  EXPECT_EQ(t.lookup(6144, 4096, 1), "stream_t16");
  EXPECT_EQ(t.lookup(6144, 4096, 2), "stream_t16_n64");   // just above a bound
  EXPECT_EQ(t.lookup(6144, 4096, 16), "stream_t16_n64");  // bounds are inclusive
  EXPECT_EQ(t.lookup(6144, 4096, 17), "cublaslt:2");
  EXPECT_EQ(t.lookup(6144, 4096, 129), "wgmma_128x256");
  EXPECT_EQ(t.lookup(6144, 4096, 8192), "wgmma_128x256");
  EXPECT_EQ(t.lookup(4096, 14336, 33), "cublaslt");
}

TEST(GemmTable, LookupMissesAreNone) {
  const GemmTable t = two_shape_table();
  EXPECT_EQ(t.lookup(6144, 4096, 8193), kNoGemmCandidate);  // above the last bucket: not measured
  EXPECT_EQ(t.lookup(6144, 4096, 0), kNoGemmCandidate);
  EXPECT_EQ(t.lookup(4096, 6144, 1), kNoGemmCandidate);      // n and k swapped
  EXPECT_EQ(t.lookup(4096, 14336, 65), kNoGemmCandidate);
  EXPECT_EQ(GemmTable().lookup(6144, 4096, 1), kNoGemmCandidate);
  EXPECT_TRUE(GemmTable().empty());
}

// Every M of random tables: lookup agrees with a direct reading of the bucket rule.
TEST(GemmTable, LookupMatchesTheBucketRuleOnRandomTables) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<GemmBucket> buckets;
    int32_t bound = 0;
    const int num = 1 + int(rng() % 8);
    for (int i = 0; i < num; ++i) {
      bound += 1 + int32_t(rng() % 100);
      buckets.push_back({bound, cat("c", i)});
    }
    GemmTable t("dev");
    t.add_shape(256, 512, buckets);
    for (int32_t m = 1; m <= bound + 5; ++m) {
      std::string want(kNoGemmCandidate);
      int32_t lower = 0;  // bucket i holds (bound of i - 1, bound of i]
      for (const GemmBucket& b : buckets) {
        if (m > lower && m <= b.max_m) want = b.candidate;
        lower = b.max_m;
      }
      ASSERT_EQ(t.lookup(256, 512, m), want) << "trial " << trial << " m " << m;
    }
  }
}

TEST(GemmTable, JsonRoundTripKeepsEverything) {
  const GemmTable t = two_shape_table();
  const GemmTable back = GemmTable::from_json(t.to_json(), "round trip");
  EXPECT_EQ(back.device(), "NVIDIA H200");
  EXPECT_EQ(back.source(), "round trip");
  ASSERT_EQ(back.shapes().size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const GemmShapeEntry &a = t.shapes()[i], &b = back.shapes()[i];
    EXPECT_EQ(a.n, b.n);
    EXPECT_EQ(a.k, b.k);
    ASSERT_EQ(a.buckets.size(), b.buckets.size());
    for (size_t j = 0; j < a.buckets.size(); ++j) {
      EXPECT_EQ(a.buckets[j].max_m, b.buckets[j].max_m);
      EXPECT_EQ(a.buckets[j].candidate, b.buckets[j].candidate);
      EXPECT_EQ(a.buckets[j].us, b.buckets[j].us);
      EXPECT_EQ(a.buckets[j].cublaslt_us, b.buckets[j].cublaslt_us);
    }
  }
  EXPECT_EQ(back.to_json(), t.to_json());
  // An empty table round-trips too.
  const GemmTable empty = GemmTable::from_json(GemmTable("x").to_json(), "e");
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.device(), "x");
}

TEST(GemmTable, SaveThenLoadReadsTheSameTable) {
  const auto dir = std::filesystem::temp_directory_path() / cat("xy_gemm_table_", ::getpid());
  std::filesystem::create_directories(dir);
  const auto path = dir / gemm_table_file_name("NVIDIA H200");
  const GemmTable t = two_shape_table();
  t.save(path);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  const GemmTable back = GemmTable::load(path);
  EXPECT_EQ(back.to_json(), t.to_json());
  EXPECT_EQ(back.source(), path.string());
  EXPECT_EQ(back.lookup(6144, 4096, 100), "cublaslt:2");
  std::filesystem::remove_all(dir);
}

TEST(GemmTable, LoadOfAMissingFileNamesIt) {
  try {
    GemmTable::load("/nonexistent/dir/table.json");
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/table.json: file not found"), std::string::npos) << e.what();
  }
}

TEST(GemmTable, MalformedTablesNameTheFileAndField) {
  struct Case {
    const char* text;
    const char* message;  // expected substring
  };
  const Case cases[] = {
      {"{", "t.json: invalid JSON"},
      {"[]", "t.json: the file: expected a JSON object, found []"},
      {R"({"device": "d", "shapes": []})", "t.json: field 'version': expected an integer in [1, 2147483647], found nothing (missing)"},
      {R"({"version": 2, "device": "d", "shapes": []})", "field 'version': expected 1 (the only format this xyserve reads), found 2"},
      {R"({"version": 1, "shapes": []})", "t.json: field 'device': expected a string, found nothing (missing)"},
      {R"({"version": 1, "device": 3, "shapes": []})", "field 'device': expected a string, found 3"},
      {R"({"version": 1, "device": "d", "shapes": {}})", "field 'shapes': expected an array, found {}"},
      {R"({"version": 1, "device": "d", "shapes": [5]})", "t.json: field 'shapes[0]': expected a JSON object, found 5"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 0, "k": 64, "buckets": []}]})",
       "field 'shapes[0].n': expected an integer in [1, 2147483647], found 0"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 1.5, "buckets": []}]})",
       "field 'shapes[0].k': expected an integer in [1, 2147483647], found 1.5"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 99999999999, "buckets": []}]})",
       "field 'shapes[0].k': expected an integer in [1, 2147483647], found 99999999999"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64}]})",
       "field 'shapes[0].buckets': expected an array, found nothing (missing)"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": []}]})",
       "t.json: shape n=64 k=64: no buckets"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 4}]}]})",
       "field 'shapes[0].buckets[0].candidate': expected a string, found nothing (missing)"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": -4, "candidate": "a"}]}]})",
       "field 'shapes[0].buckets[0].max_m': expected an integer in [1, 2147483647], found -4"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": "a"}, {"max_m": 8, "candidate": "b"}]}]})",
       "t.json: shape n=64 k=64: bucket 1: max_m 8 is not above the previous bucket's 8"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": ""}]}]})",
       "t.json: shape n=64 k=64: bucket 0 (max_m 8): candidate '' is not a candidate id"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": "none"}]}]})",
       "candidate 'none' is not a candidate id"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": "a", "us": -1}]}]})",
       "field 'shapes[0].buckets[0].us': expected a non-negative number, found -1"},
      {R"({"version": 1, "device": "d", "shapes": [{"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": "a"}]},
                                                    {"n": 64, "k": 64, "buckets": [{"max_m": 8, "candidate": "a"}]}]})",
       "t.json: shape n=64 k=64: listed twice"},
  };
  for (const Case& c : cases) {
    const std::string message = parse_error(c.text);
    EXPECT_NE(message.find(c.message), std::string::npos) << "input: " << c.text << "\nmessage: " << message;
  }
}

TEST(GemmTable, AddShapeRejectsBadBuckets) {
  GemmTable t("d", "src");
  EXPECT_THROW(t.add_shape(0, 64, {{1, "a"}}), InvalidArgument);
  EXPECT_THROW(t.add_shape(64, 64, {{0, "a"}}), InvalidArgument);
  EXPECT_THROW(t.add_shape(64, 64, {{4, "a"}, {2, "b"}}), InvalidArgument);
  EXPECT_TRUE(t.empty());  // a rejected shape leaves nothing behind
  t.add_shape(64, 64, {{4, "a"}});
  EXPECT_THROW(t.add_shape(64, 64, {{8, "b"}}), InvalidArgument);
  EXPECT_EQ(t.lookup(64, 64, 3), "a");
}

TEST(GemmTable, FileNameKeysTheDevice) {
  EXPECT_EQ(gemm_table_file_name("NVIDIA H200"), "xyserve_gemm_table_NVIDIA_H200.json");
  EXPECT_EQ(gemm_table_file_name("NVIDIA H100 80GB HBM3"), "xyserve_gemm_table_NVIDIA_H100_80GB_HBM3.json");
  EXPECT_EQ(gemm_table_file_name("a/b\\c:d"), "xyserve_gemm_table_a_b_c_d.json");
  EXPECT_EQ(gemm_table_file_name(""), "xyserve_gemm_table_unknown_device.json");
}

}  // namespace
}  // namespace xy::meta
