// Response shapes, field by field against OpenAI's API reference (text_completion,
// chat.completion, their logprobs objects) with vLLM's stop_reason; stream chunk sequences;
// SSE framing.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "xyserve/server/openai_response.h"
#include "xyserve/server/openai_stream.h"
#include "xyserve/server/sse.h"

namespace xy::server {
namespace {

using Json = nlohmann::ordered_json;

const ResponseHeader kHeader{"cmpl-abc", 1700000000, "llama"};

std::set<std::string> keys(const Json& obj) {
  std::set<std::string> out;
  for (auto it = obj.begin(); it != obj.end(); ++it) out.insert(it.key());
  return out;
}

TokenLogprobs token(std::string text, float lp, std::vector<TopLogprob> top = {}) {
  return TokenLogprobs{std::move(text), lp, std::move(top)};
}

TEST(OpenAiResponse, CompletionHasOpenAiFieldsAndUsageSums) {
  std::vector<ChoiceOutput> choices(2);
  choices[0].text = "Hello";
  choices[0].finish_reason = FinishReason::kLength;
  choices[1].text = " world";
  choices[1].finish_reason = FinishReason::kStop;
  choices[1].stop_reason = std::string("\n\n");
  const Json r = completion_response(kHeader, choices, {}, false, Usage{7, 9});
  EXPECT_EQ(keys(r), (std::set<std::string>{"id", "object", "created", "model", "choices", "usage"}));
  EXPECT_EQ(r["id"], "cmpl-abc");
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "llama");
  ASSERT_EQ(r["choices"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const Json& c = r["choices"][i];
    EXPECT_EQ(keys(c), (std::set<std::string>{"index", "text", "logprobs", "finish_reason", "stop_reason"}));
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["text"], choices[i].text);
    EXPECT_TRUE(c["logprobs"].is_null());
  }
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(r["choices"][0]["stop_reason"].is_null());
  EXPECT_EQ(r["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(r["choices"][1]["stop_reason"], "\n\n");
  EXPECT_EQ(r["usage"], Json({{"prompt_tokens", 7}, {"completion_tokens", 9}, {"total_tokens", 16}}));
}

TEST(OpenAiResponse, CompletionLogprobsHaveParallelListsAndCharacterOffsets) {
  std::mt19937 rng(3);
  const std::vector<std::string> pieces = {"a", " b", "\xC3\xA9t\xC3\xA9", "\xE2\x82\xAC", "xyz", "\n"};
  for (int trial = 0; trial < 50; ++trial) {
    ChoiceOutput c;
    const int n = 1 + static_cast<int>(rng() % 8);
    std::vector<int64_t> expected_offsets;
    int64_t chars = 0;
    for (int i = 0; i < n; ++i) {
      const std::string& p = pieces[rng() % pieces.size()];
      expected_offsets.push_back(chars);
      // Characters as Python counts them: é and € are one each.
      for (unsigned char ch : p) chars += (ch & 0xC0) != 0x80;
      c.text += p;
      c.logprobs.push_back(token(p, -0.1f * static_cast<float>(i + 1),
                                 {{p, -0.1f * static_cast<float>(i + 1)}, {"zz", -5.0f}}));
    }
    const Json r = completion_response(kHeader, std::span(&c, 1), {}, true, Usage{1, n});
    const Json& lp = r["choices"][0]["logprobs"];
    EXPECT_EQ(keys(lp), (std::set<std::string>{"tokens", "token_logprobs", "top_logprobs", "text_offset"}));
    ASSERT_EQ(lp["tokens"].size(), static_cast<size_t>(n));
    ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(n));
    ASSERT_EQ(lp["top_logprobs"].size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(lp["tokens"][i], c.logprobs[i].token);
      EXPECT_FLOAT_EQ(lp["token_logprobs"][i].get<float>(), *c.logprobs[i].logprob);
      EXPECT_TRUE(lp["top_logprobs"][i].is_object());
      EXPECT_FLOAT_EQ(lp["top_logprobs"][i]["zz"].get<float>(), -5.0f);
      EXPECT_EQ(lp["text_offset"][i], expected_offsets[i]);
    }
  }
}

TEST(OpenAiResponse, EchoPrependsThePromptAndItsLogprobsWithANullFirst) {
  ChoiceOutput c;
  c.text = " there";
  c.logprobs = {token(" there", -1.0f)};
  EchoedPrompt echo{"Hi", {TokenLogprobs{"Hi", std::nullopt, {}}}};
  const Json r = completion_response(kHeader, std::span(&c, 1), std::span(&echo, 1), true, {});
  const Json& choice = r["choices"][0];
  EXPECT_EQ(choice["text"], "Hi there");
  EXPECT_EQ(choice["logprobs"]["tokens"], Json::array({"Hi", " there"}));
  EXPECT_TRUE(choice["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_TRUE(choice["logprobs"]["top_logprobs"][0].is_null());
  EXPECT_EQ(choice["logprobs"]["text_offset"], Json::array({0, 2}));
}

TEST(OpenAiResponse, ChatHasMessageAndTokenLogprobsWithBytes) {
  std::vector<ChoiceOutput> choices(1);
  choices[0].text = "\xC3\xA9!";
  choices[0].reasoning_content = "think";
  choices[0].finish_reason = FinishReason::kStop;
  choices[0].stop_reason = int32_t{128009};
  // A byte-level token can be half a character: "bytes" keeps it, "token" stays valid UTF-8.
  choices[0].logprobs = {token("\xC3", -0.5f, {{"\xC3", -0.5f}, {"x", -1.0f / 0.0f}}),
                         token("\xA9!", -0.25f)};
  const ResponseHeader header{"chatcmpl-1", 5, "qwen"};
  const Json r = chat_response(header, choices, true, Usage{3, 2});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"], "chatcmpl-1");
  const Json& c = r["choices"][0];
  EXPECT_EQ(keys(c), (std::set<std::string>{"index", "message", "logprobs", "finish_reason", "stop_reason"}));
  EXPECT_EQ(c["message"], Json({{"role", "assistant"}, {"content", "\xC3\xA9!"}, {"reasoning_content", "think"}}));
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_EQ(c["stop_reason"], 128009);
  const Json& content = c["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(keys(content[0]), (std::set<std::string>{"token", "logprob", "bytes", "top_logprobs"}));
  EXPECT_EQ(content[0]["token"], "\xEF\xBF\xBD");
  EXPECT_EQ(content[0]["bytes"], Json::array({0xC3}));
  EXPECT_EQ(content[1]["bytes"], Json::array({0xA9, '!'}));
  EXPECT_FLOAT_EQ(content[1]["logprob"].get<float>(), -0.25f);
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(keys(content[0]["top_logprobs"][0]), (std::set<std::string>{"token", "logprob", "bytes"}));
  EXPECT_EQ(content[0]["top_logprobs"][1]["logprob"], -9999.0);  // -inf has no JSON form
  EXPECT_TRUE(content[1]["top_logprobs"].empty());
  EXPECT_NO_THROW(r.dump());
  const Json no_lp = chat_response(header, choices, false, Usage{3, 2});
  EXPECT_TRUE(no_lp["choices"][0]["logprobs"].is_null());
}

TEST(OpenAiResponse, InvalidUtf8IsReplacedSoDumpNeverThrows) {
  std::mt19937 rng(9);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes(rng() % 12, '\0');
    for (char& b : bytes) b = static_cast<char>(rng() & 0xFF);
    const std::string fixed = valid_utf8(bytes);
    // Valid input is unchanged; the output always dumps (nlohmann throws on invalid UTF-8).
    EXPECT_NO_THROW(Json(fixed).dump());
    EXPECT_EQ(valid_utf8(fixed), fixed);
    EXPECT_EQ(count_chars(bytes), count_chars(fixed));
  }
  EXPECT_EQ(valid_utf8("a\xC0\xAF" "b"), "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");  // overlong
  EXPECT_EQ(valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(valid_utf8("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
}

TEST(OpenAiResponse, ResponseIdsHavePrefixAndDiffer) {
  std::mt19937_64 rng(1);
  const std::string a = make_response_id("chatcmpl-", rng), b = make_response_id("chatcmpl-", rng);
  EXPECT_EQ(a.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.size(), 9u + 32u);
  EXPECT_NE(a, b);
}

// ---- streams ----

// Random deltas for `num_choices` choices, interleaved, each choice ending with a finish.
std::vector<ChoiceDelta> random_deltas(std::mt19937& rng, int num_choices) {
  std::vector<std::vector<ChoiceDelta>> per(num_choices);
  for (int c = 0; c < num_choices; ++c) {
    const int n = 1 + static_cast<int>(rng() % 5);
    for (int k = 0; k < n; ++k) {
      ChoiceDelta d;
      d.index = c;
      d.text = rng() % 4 ? "t" + std::to_string(rng() % 10) : "";
      if (!d.text.empty()) d.logprobs = {token(d.text, -0.5f)};
      if (k == n - 1) d.finish_reason = rng() % 2 ? FinishReason::kStop : FinishReason::kLength;
      per[c].push_back(d);
    }
  }
  std::vector<ChoiceDelta> out;
  std::vector<size_t> next(num_choices, 0);
  while (true) {
    std::vector<int> open;
    for (int c = 0; c < num_choices; ++c)
      if (next[c] < per[c].size()) open.push_back(c);
    if (open.empty()) break;
    const int c = open[rng() % open.size()];
    out.push_back(per[c][next[c]++]);
  }
  return out;
}

TEST(OpenAiStream, ChatChunksStartWithRoleEndWithFinishAndUsageOnlyWhenAsked) {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 200; ++trial) {
    const int num_choices = 1 + static_cast<int>(rng() % 3);
    const bool include_usage = trial % 2;
    const bool with_logprobs = trial % 3 == 0;
    ChatStream stream({"chatcmpl-x", 1, "m"}, num_choices, with_logprobs, include_usage);
    std::vector<Json> chunks;
    std::vector<std::string> expected_text(num_choices);
    for (const ChoiceDelta& d : random_deltas(rng, num_choices)) {
      expected_text[d.index] += d.text;
      for (Json& c : stream.chunks(d)) chunks.push_back(std::move(c));
    }
    if (auto u = stream.usage_chunk(Usage{4, 6})) chunks.push_back(*u);

    std::vector<int> seen(num_choices, 0);
    std::vector<bool> finished(num_choices, false);
    std::vector<std::string> text(num_choices);
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Json& c = chunks[i];
      EXPECT_EQ(c["object"], "chat.completion.chunk");
      EXPECT_EQ(c["id"], "chatcmpl-x");
      EXPECT_EQ(c.contains("usage"), include_usage);
      if (c["choices"].empty()) {
        // The usage chunk: last, only with include_usage.
        EXPECT_TRUE(include_usage);
        EXPECT_EQ(i, chunks.size() - 1);
        EXPECT_EQ(c["usage"]["total_tokens"], 10);
        continue;
      }
      if (include_usage) {
        EXPECT_TRUE(c["usage"].is_null());
      }
      ASSERT_EQ(c["choices"].size(), 1u);
      const Json& ch = c["choices"][0];
      const int idx = ch["index"].get<int>();
      EXPECT_FALSE(finished[idx]) << "chunk after finish_reason";
      if (seen[idx]++ == 0) {
        EXPECT_EQ(ch["delta"], Json({{"role", "assistant"}, {"content", ""}}));
      } else {
        EXPECT_FALSE(ch["delta"].contains("role"));
        text[idx] += ch["delta"].value("content", "");
        if (with_logprobs) {
          EXPECT_TRUE(ch["logprobs"]["content"].is_array());
        } else {
          EXPECT_TRUE(ch["logprobs"].is_null());
        }
      }
      if (!ch["finish_reason"].is_null()) finished[idx] = true;
    }
    for (int k = 0; k < num_choices; ++k) {
      EXPECT_TRUE(finished[k]);
      EXPECT_EQ(text[k], expected_text[k]);
    }
    EXPECT_EQ(chunks.back()["choices"].empty(), include_usage);
  }
}

TEST(OpenAiStream, CompletionChunksCarryTextOffsetsAcrossDeltas) {
  std::mt19937 rng(8);
  for (int trial = 0; trial < 100; ++trial) {
    const int num_choices = 1 + static_cast<int>(rng() % 3);
    const bool include_usage = trial % 2;
    CompletionStream stream({"cmpl-y", 2, "m"}, num_choices, true, include_usage);
    std::vector<int64_t> chars(num_choices, 0);
    for (const ChoiceDelta& d : random_deltas(rng, num_choices)) {
      const Json c = stream.chunk(d);
      EXPECT_EQ(c["object"], "text_completion");
      EXPECT_EQ(c.contains("usage"), include_usage);
      const Json& ch = c["choices"][0];
      EXPECT_EQ(ch["index"], d.index);
      EXPECT_EQ(ch["text"], d.text);
      EXPECT_EQ(ch["finish_reason"].is_null(), !d.finish_reason.has_value());
      if (!d.text.empty()) {
        EXPECT_EQ(ch["logprobs"]["text_offset"][0], chars[d.index]);
      }
      chars[d.index] += count_chars(d.text);
    }
    const auto usage = stream.usage_chunk(Usage{1, 2});
    EXPECT_EQ(usage.has_value(), include_usage);
    if (usage) {
      EXPECT_TRUE((*usage)["choices"].empty());
      EXPECT_EQ((*usage)["usage"]["completion_tokens"], 2);
    }
  }
}

TEST(Sse, EventsAreDataLinesEndingInBlankLineAndDoneIsLast) {
  const Json payload{{"text", "a\nb\r\n"}, {"bad", std::string("\xFF")}};
  const std::string event = sse_event(payload);
  ASSERT_EQ(event.rfind("data: ", 0), 0u);
  ASSERT_GE(event.size(), 8u);
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  const std::string data = event.substr(6, event.size() - 8);
  EXPECT_EQ(data.find('\n'), std::string::npos);  // one data line per event
  EXPECT_EQ(Json::parse(data)["text"], "a\nb\r\n");
  EXPECT_EQ(Json::parse(data)["bad"], "\xEF\xBF\xBD");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  EXPECT_EQ(sse_comment("ping\nx"), ": ping x\n\n");
}

}  // namespace
}  // namespace xy::server
