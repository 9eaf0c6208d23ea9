// Request parsing and validation of /v1/completions and /v1/chat/completions: every field's
// type and range errors (status, type, param), every accepted prompt and message form,
// unknown fields ignored, null read as absent.
#include "xyserve/server/openai_request.h"

#include <gtest/gtest.h>

#include <functional>
#include <random>

namespace xy::server {
namespace {

using Json = nlohmann::ordered_json;

const RequestLimits kLimits{/*max_n=*/8, /*max_logprobs=*/20, /*vocab_size=*/1000};

Json completion_body() { return Json{{"model", "m"}, {"prompt", "hello"}}; }
Json chat_body() {
  return Json{{"model", "m"}, {"messages", Json::array({Json{{"role", "user"}, {"content", "hi"}}})}};
}

enum class Endpoint { kCompletions, kChat };

void parse(Endpoint e, const Json& body) {
  if (e == Endpoint::kCompletions) parse_completion_request(body.dump(), kLimits);
  else parse_chat_request(body.dump(), kLimits);
}

// The ApiError that parsing `body` raises; fails the test when it parses.
ApiError error_of(const std::function<void()>& run) {
  try {
    run();
  } catch (const ApiException& e) {
    return e.error();
  }
  ADD_FAILURE() << "expected an ApiException";
  return {};
}

ApiError error_of(Endpoint e, const Json& body) { return error_of([&] { parse(e, body); }); }

void expect_invalid(Endpoint e, const Json& body, const std::string& param) {
  const ApiError err = error_of(e, body);
  EXPECT_EQ(err.http_status, 400) << body.dump();
  EXPECT_EQ(err.type, "invalid_request_error") << body.dump();
  EXPECT_EQ(err.param, param) << body.dump() << " -> " << err.message;
  EXPECT_FALSE(err.message.empty());
}

Json with(Json body, const std::string& key, Json value) {
  body[key] = std::move(value);
  return body;
}

struct FieldCase {
  std::string field;
  Json value;
};

// Wrong types for the fields both endpoints share.
const std::vector<FieldCase> kSharedTypeErrors = {
    {"model", 3},          {"n", "2"},               {"n", true},
    {"n", 1.5},            {"stream", "true"},       {"stream", 1},
    {"stop", 5},           {"stop", Json::object()}, {"stop_token_ids", 3},
    {"ignore_eos", "no"},  {"skip_special_tokens", 0}, {"temperature", "0.5"},
    {"temperature", true}, {"top_p", Json::array()}, {"top_k", 2.5},
    {"top_k", "5"},        {"min_p", "0"},           {"presence_penalty", false},
    {"frequency_penalty", "1"}, {"repetition_penalty", Json::object()},
    {"seed", 1.25},        {"seed", "7"},            {"max_tokens", "16"},
    {"max_tokens", 3.5},   {"user", 12},             {"response_format", "text"},
    {"stream_options", true}, {"best_of", "1"},
};

// Values out of range for the fields both endpoints share.
const std::vector<FieldCase> kSharedRangeErrors = {
    {"temperature", -0.01}, {"temperature", 2.01},  {"temperature", 1e300},
    {"top_p", 0.0},         {"top_p", -0.5},        {"top_p", 1.0001},
    {"top_k", -2},          {"top_k", 1LL << 40},   {"min_p", -0.1},
    {"min_p", 1.5},         {"presence_penalty", 2.5}, {"presence_penalty", -2.5},
    {"frequency_penalty", 2.0001}, {"frequency_penalty", -3},
    {"repetition_penalty", 0.0},   {"repetition_penalty", -1.0},
    {"n", 0},               {"n", 9},               {"n", -1},
    {"max_tokens", 0},      {"max_tokens", -5},     {"best_of", 2},
};

TEST(OpenAiRequest, EverySharedFieldTypeErrorIs400NamingTheField) {
  for (Endpoint e : {Endpoint::kCompletions, Endpoint::kChat})
    for (const FieldCase& c : kSharedTypeErrors) {
      const Json base = e == Endpoint::kCompletions ? completion_body() : chat_body();
      expect_invalid(e, with(base, c.field, c.value), c.field);
    }
}

TEST(OpenAiRequest, EverySharedFieldRangeErrorIs400NamingTheField) {
  for (Endpoint e : {Endpoint::kCompletions, Endpoint::kChat})
    for (const FieldCase& c : kSharedRangeErrors) {
      const Json base = e == Endpoint::kCompletions ? completion_body() : chat_body();
      expect_invalid(e, with(base, c.field, c.value), c.field);
    }
}

TEST(OpenAiRequest, NestedFieldErrorsNameTheirPath) {
  for (Endpoint e : {Endpoint::kCompletions, Endpoint::kChat}) {
    const Json base = e == Endpoint::kCompletions ? completion_body() : chat_body();
    expect_invalid(e, with(with(base, "stream", true), "stream_options", {{"include_usage", 1}}),
                   "stream_options.include_usage");
    expect_invalid(e, with(base, "stop", Json::array({"a", 3})), "stop[1]");
    expect_invalid(e, with(base, "stop_token_ids", Json::array({1, "2"})), "stop_token_ids[1]");
    expect_invalid(e, with(base, "stop_token_ids", Json::array({1, -2})), "stop_token_ids[1]");
    expect_invalid(e, with(base, "stop_token_ids", Json::array({1000})), "stop_token_ids[0]");
    // stream_options without stream, as OpenAI and vLLM refuse it.
    expect_invalid(e, with(base, "stream_options", {{"include_usage", true}}), "stream_options");
    expect_invalid(e, with(base, "response_format", Json::object()), "response_format.type");
    expect_invalid(e, with(base, "response_format", {{"type", "json_schema"}}),
                   "response_format.type");
    expect_invalid(e, with(base, "response_format", {{"type", "json_object"}}),
                   "response_format.type");
    expect_invalid(e, with(base, "response_format", {{"type", "xml"}}), "response_format.type");
  }
}

TEST(OpenAiRequest, BoundaryValuesAreAccepted) {
  const Json base = completion_body();
  const std::vector<FieldCase> ok = {
      {"temperature", 0},   {"temperature", 2},   {"top_p", 1},       {"top_p", 1e-9},
      {"top_k", -1},        {"top_k", 0},         {"top_k", 1},       {"min_p", 0},
      {"min_p", 1},         {"presence_penalty", -2}, {"presence_penalty", 2},
      {"frequency_penalty", -2}, {"frequency_penalty", 2}, {"repetition_penalty", 1e-6},
      {"repetition_penalty", 5}, {"n", 1}, {"n", 8}, {"max_tokens", 1}, {"max_tokens", 2.0},
      {"seed", -1},         {"seed", 0},          {"best_of", 1},     {"logprobs", 0},
      {"logprobs", 20},     {"stop", ""},         {"stop", Json::array()},
      {"response_format", {{"type", "text"}}},   {"user", "u"},
  };
  for (const FieldCase& c : ok)
    EXPECT_NO_THROW(parse_completion_request(with(base, c.field, c.value).dump(), kLimits))
        << c.field << "=" << c.value.dump();
}

// Random values: inside the documented range they parse to the same value; outside they are
// rejected naming the field.
TEST(OpenAiRequest, RandomFloatFieldsParseInsideTheirRangeAndFailOutside) {
  struct Range {
    std::string field;
    double lo, hi;
    bool lo_open;
  };
  const std::vector<Range> ranges = {{"temperature", 0, 2, false},
                                     {"top_p", 0, 1, true},
                                     {"min_p", 0, 1, false},
                                     {"presence_penalty", -2, 2, false},
                                     {"frequency_penalty", -2, 2, false}};
  std::mt19937_64 rng(1234);
  for (const Range& r : ranges)
    for (int trial = 0; trial < 200; ++trial) {
      const double inside = std::uniform_real_distribution<double>(r.lo, r.hi)(rng);
      if (r.lo_open && inside == r.lo) continue;
      const auto req = parse_chat_request(with(chat_body(), r.field, inside).dump(), kLimits);
      const meta::SamplingParams p = to_sampling_params(req.options, {});
      const float got = r.field == "temperature"         ? p.temperature
                        : r.field == "top_p"             ? p.top_p
                        : r.field == "min_p"             ? p.min_p
                        : r.field == "presence_penalty" ? p.presence_penalty
                                                          : p.frequency_penalty;
      EXPECT_FLOAT_EQ(got, static_cast<float>(inside)) << r.field;
      const double width = r.hi - r.lo;
      const double outside = trial % 2 ? r.hi + std::uniform_real_distribution<double>(1e-6, 10)(rng) * width
                                       : r.lo - std::uniform_real_distribution<double>(1e-6, 10)(rng) * width;
      expect_invalid(Endpoint::kChat, with(chat_body(), r.field, outside), r.field);
    }
}

TEST(OpenAiRequest, NullIsReadAsAbsent) {
  Json body = completion_body();
  for (const char* key : {"temperature", "top_p", "top_k", "min_p", "n", "seed", "stop",
                          "stream", "stream_options", "logprobs", "max_tokens", "echo", "user",
                          "response_format", "best_of", "presence_penalty"})
    body[key] = nullptr;
  const CompletionRequest r = parse_completion_request(body.dump(), kLimits);
  EXPECT_EQ(r.options.n, 1);
  EXPECT_FALSE(r.options.temperature);
  EXPECT_FALSE(r.options.max_tokens);
  EXPECT_EQ(r.options.logprobs, -1);
  EXPECT_TRUE(r.options.stop.empty());
}

TEST(OpenAiRequest, UnknownFieldsAreIgnored) {
  std::mt19937 rng(77);
  const Json values[] = {1, "x", Json::array({1, 2}), Json::object({{"a", nullptr}}), true,
                         nullptr, 3.5};
  const Json base = with(with(completion_body(), "temperature", 0.5), "stop", Json::array({"\n"}));
  const CompletionRequest expected = parse_completion_request(base.dump(), kLimits);
  for (int trial = 0; trial < 100; ++trial) {
    Json body = base;
    const int extra = 1 + static_cast<int>(rng() % 5);
    for (int k = 0; k < extra; ++k)
      body["x_unknown_" + std::to_string(rng() % 1000)] = values[rng() % std::size(values)];
    const CompletionRequest got = parse_completion_request(body.dump(), kLimits);
    EXPECT_EQ(got.prompts, expected.prompts);
    EXPECT_EQ(got.options.temperature, expected.options.temperature);
    EXPECT_EQ(got.options.stop, expected.options.stop);
  }
}

TEST(OpenAiRequest, MalformedJsonIs400WithTheParsePosition) {
  for (const std::string body : {"{\"prompt\": \"x\",}", "{\"prompt\": ", "", "{'a': 1}",
                                 "{\"prompt\": \"x\"} trailing"}) {
    const ApiError err = error_of([&] { parse_completion_request(body, kLimits); });
    EXPECT_EQ(err.http_status, 400) << body;
    EXPECT_EQ(err.type, "invalid_request_error");
    EXPECT_NE(err.message.find("line 1, column"), std::string::npos) << err.message;
  }
}

TEST(OpenAiRequest, NonObjectBodiesAndDeepNestingAre400) {
  for (const std::string body : {"[]", "3", "\"s\"", "null"})
    EXPECT_EQ(error_of([&] { parse_chat_request(body, kLimits); }).http_status, 400) << body;
  const std::string deep = "{\"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  const ApiError err = error_of([&] { parse_completion_request(deep, kLimits); });
  EXPECT_EQ(err.http_status, 400);
  EXPECT_NE(err.message.find("deeper"), std::string::npos) << err.message;
  // Nesting under the limit is fine (an unknown field holding it is still ignored).
  const std::string ok = "{\"prompt\": \"a\", \"x\": " + std::string(30, '[') +
                         std::string(30, ']') + "}";
  EXPECT_NO_THROW(parse_completion_request(ok, kLimits));
}

// ---- prompts ----

TEST(OpenAiRequest, EveryPromptFormGivesItsPrompts) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    const int count = 1 + static_cast<int>(rng() % 4);
    std::vector<Prompt> expected;
    Json prompt = Json::array();
    const int form = trial % 4;
    for (int i = 0; i < (form == 0 || form == 2 ? 1 : count); ++i) {
      if (form <= 1) {
        std::string text = "p" + std::to_string(rng() % 100) + " \xC3\xA9";
        expected.emplace_back(text);
        prompt.push_back(text);
      } else {
        std::vector<int32_t> ids(1 + rng() % 6);
        for (auto& id : ids) id = static_cast<int32_t>(rng() % kLimits.vocab_size);
        expected.emplace_back(ids);
        prompt.push_back(ids);
      }
    }
    // form 0: "text"; 1: ["t1", ...]; 2: [id, ...]; 3: [[id, ...], ...]
    const Json sent = form == 0 ? prompt[0] : form == 2 ? prompt[0] : prompt;
    const auto r = parse_completion_request(with(completion_body(), "prompt", sent).dump(), kLimits);
    EXPECT_EQ(r.prompts, expected) << sent.dump();
  }
}

TEST(OpenAiRequest, EmptyOrMixedPromptsAre400) {
  const Json base = completion_body();
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", ""), "prompt");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array()), "prompt");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({"a", ""})), "prompt[1]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({Json::array()})),
                 "prompt[0]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({"a", 3})), "prompt[1]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({1, "a"})), "prompt[1]");
  expect_invalid(Endpoint::kCompletions,
                 with(base, "prompt", Json::array({Json::array({1}), 2})), "prompt[1]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({-1})), "prompt[0]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({1000})), "prompt[0]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::array({true})), "prompt[0]");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", 5), "prompt");
  expect_invalid(Endpoint::kCompletions, with(base, "prompt", Json::object()), "prompt");
  Json missing = base;
  missing.erase("prompt");
  expect_invalid(Endpoint::kCompletions, missing, "prompt");
}

TEST(OpenAiRequest, CompletionLogprobsIsACountUpToTheLimit) {
  const Json base = completion_body();
  for (int k : {0, 1, 5, 20}) {
    const auto r = parse_completion_request(with(base, "logprobs", k).dump(), kLimits);
    EXPECT_EQ(r.options.logprobs, k);
    EXPECT_EQ(to_sampling_params(r.options, {}).logprobs, k);
  }
  expect_invalid(Endpoint::kCompletions, with(base, "logprobs", 21), "logprobs");
  expect_invalid(Endpoint::kCompletions, with(base, "logprobs", -1), "logprobs");
  expect_invalid(Endpoint::kCompletions, with(base, "logprobs", true), "logprobs");
  expect_invalid(Endpoint::kCompletions, with(base, "echo", "yes"), "echo");
  EXPECT_TRUE(parse_completion_request(with(base, "echo", true).dump(), kLimits).echo);
}

TEST(OpenAiRequest, SharedFieldsReachTheOptions) {
  Json body = with(completion_body(), "stream", true);
  body["stream_options"] = {{"include_usage", true}};
  body["stop"] = "END";
  body["stop_token_ids"] = {7, 9};
  body["ignore_eos"] = true;
  body["skip_special_tokens"] = false;
  body["top_k"] = 0;
  body["seed"] = -3;
  body["n"] = 3;
  body["best_of"] = 3;
  body["max_tokens"] = 12;
  body["repetition_penalty"] = 1.3;
  const auto r = parse_completion_request(body.dump(), kLimits);
  EXPECT_TRUE(r.options.stream);
  EXPECT_TRUE(r.options.include_usage);
  EXPECT_EQ(r.options.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(r.options.stop_token_ids, (std::vector<int32_t>{7, 9}));
  EXPECT_TRUE(r.options.ignore_eos);
  EXPECT_FALSE(r.options.skip_special_tokens);
  EXPECT_EQ(r.options.top_k, -1);  // 0 means "no limit", as vLLM reads it
  EXPECT_EQ(r.options.seed, static_cast<uint64_t>(int64_t{-3}));
  EXPECT_EQ(r.options.n, 3);
  EXPECT_EQ(r.options.max_tokens, 12);
  meta::SamplingParams defaults;
  defaults.temperature = 0.6f;  // a generation_config default the request does not override
  const meta::SamplingParams p = to_sampling_params(r.options, defaults);
  EXPECT_FLOAT_EQ(p.temperature, 0.6f);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.3f);
  EXPECT_EQ(p.top_k, -1);
  EXPECT_EQ(p.logprobs, -1);
}

TEST(OpenAiRequest, UnknownModelIs404ModelNotFound) {
  const std::vector<std::string> served = {"llama", "qwen"};
  EXPECT_EQ(resolve_model("", served), "llama");
  EXPECT_EQ(resolve_model("qwen", served), "qwen");
  const ApiError err = error_of([&] { resolve_model("gpt-9", served); });
  EXPECT_EQ(err.http_status, 404);
  EXPECT_EQ(err.code, "model_not_found");
  EXPECT_EQ(err.message, "The model `gpt-9` does not exist.");
  const Json body = error_body(err);
  EXPECT_EQ(body["error"]["message"], err.message);
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["code"], "model_not_found");
}

TEST(OpenAiRequest, ErrorBodyHasOpenAiShapeWithNullsForEmptyFields) {
  const ApiError err = error_of(Endpoint::kChat, with(chat_body(), "temperature", 9));
  const Json body = error_body(err);
  ASSERT_EQ(body.size(), 1u);
  const Json& e = body["error"];
  EXPECT_EQ(e.size(), 4u);
  EXPECT_TRUE(e["message"].is_string());
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_EQ(e["param"], "temperature");
  EXPECT_TRUE(e["code"].is_null());
  const Json malformed = error_body(error_of([] { parse_chat_request("{", kLimits); }));
  EXPECT_TRUE(malformed["error"]["param"].is_null());
}

}  // namespace
}  // namespace xy::server
