#include "xyserve/server/openai_response.h"

#include <cmath>

#include "xyserve/common/check.h"

namespace xy::server {
namespace {

// Length of the valid UTF-8 sequence at text[i], or 0 when it is invalid (overlong forms,
// surrogates and code points past U+10FFFF included, per RFC 3629).
size_t utf8_sequence_length(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
  else if (b0 == 0xE0) len = 3, lo = 0xA0;
  else if (b0 == 0xED) len = 3, hi = 0x9F;
  else if (b0 >= 0xE1 && b0 <= 0xEF) len = 3;
  else if (b0 == 0xF0) len = 4, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) len = 4;
  else if (b0 == 0xF4) len = 4, hi = 0x8F;
  else return 0;
  if (i + len > text.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  return len;
}

// JSON has no infinity: -inf (a token the sampler masked out) is written as -9999.0, as vLLM
// writes it.
double json_logprob(float logprob) {
  return std::isfinite(logprob) ? static_cast<double>(logprob) : -9999.0;
}

Json bytes_of(std::string_view token) {
  Json bytes = Json::array();
  for (unsigned char c : token) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

Json stop_reason_json(const StopReason& reason) {
  if (const auto* id = std::get_if<int32_t>(&reason)) return *id;
  if (const auto* s = std::get_if<std::string>(&reason)) return valid_utf8(*s);
  return nullptr;
}

Json usage_json(const Usage& usage) {
  return Json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kToolCalls: return "tool_calls";
    case FinishReason::kAbort: return "abort";
  }
  return "stop";
}

std::string make_response_id(std::string_view prefix, std::mt19937_64& rng) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  for (int half = 0; half < 2; ++half) {
    uint64_t bits = rng();
    for (int k = 0; k < 16; ++k, bits >>= 4) id.push_back(kHex[bits & 0xF]);
  }
  return id;
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8_sequence_length(text, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for the one invalid byte, then resynchronize
      ++i;
    } else {
      out.append(text.substr(i, len));
      i += len;
    }
  }
  return out;
}

int64_t count_chars(std::string_view text) {
  int64_t n = 0;
  for (size_t i = 0; i < text.size(); ++n) {
    const size_t len = utf8_sequence_length(text, i);
    i += len == 0 ? 1 : len;
  }
  return n;
}

Json completion_logprobs(std::span<const TokenLogprobs> tokens, int64_t first_offset) {
  Json out_tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(),
       offsets = Json::array();
  int64_t offset = first_offset;
  for (const TokenLogprobs& t : tokens) {
    out_tokens.push_back(valid_utf8(t.token));
    token_logprobs.push_back(t.logprob ? Json(json_logprob(*t.logprob)) : Json());
    if (!t.logprob) {
      top.push_back(nullptr);  // the first prompt token has no context, hence no alternatives
    } else {
      Json alternatives = Json::object();
      for (const TopLogprob& alt : t.top)
        alternatives[valid_utf8(alt.token)] = json_logprob(alt.logprob);
      top.push_back(std::move(alternatives));
    }
    offsets.push_back(offset);
    offset += count_chars(t.token);
  }
  return Json{{"tokens", std::move(out_tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top)},
              {"text_offset", std::move(offsets)}};
}

Json chat_logprobs(std::span<const TokenLogprobs> tokens) {
  Json content = Json::array();
  for (const TokenLogprobs& t : tokens) {
    Json alternatives = Json::array();
    for (const TopLogprob& alt : t.top)
      alternatives.push_back(Json{{"token", valid_utf8(alt.token)},
                                  {"logprob", json_logprob(alt.logprob)},
                                  {"bytes", bytes_of(alt.token)}});
    content.push_back(Json{{"token", valid_utf8(t.token)},
                           {"logprob", json_logprob(t.logprob.value_or(-INFINITY))},
                           {"bytes", bytes_of(t.token)},
                           {"top_logprobs", std::move(alternatives)}});
  }
  return Json{{"content", std::move(content)}};
}

Json completion_response(const ResponseHeader& header, std::span<const ChoiceOutput> choices,
                         std::span<const EchoedPrompt> echo, bool with_logprobs,
                         const Usage& usage) {
  XY_CHECK(echo.empty() || echo.size() == choices.size(), "echo has ", echo.size(),
           " prompts for ", choices.size(), " choices");
  Json out_choices = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    Json logprobs;
    if (with_logprobs) {
      std::vector<TokenLogprobs> all;
      if (!echo.empty()) all = echo[i].logprobs;
      all.insert(all.end(), c.logprobs.begin(), c.logprobs.end());
      logprobs = completion_logprobs(all, 0);
    }
    const std::string text = echo.empty() ? c.text : echo[i].text + c.text;
    out_choices.push_back(Json{{"index", i},
                               {"text", valid_utf8(text)},
                               {"logprobs", std::move(logprobs)},
                               {"finish_reason", finish_reason_name(c.finish_reason)},
                               {"stop_reason", stop_reason_json(c.stop_reason)}});
  }
  return Json{{"id", header.id},
              {"object", "text_completion"},
              {"created", header.created},
              {"model", header.model},
              {"choices", std::move(out_choices)},
              {"usage", usage_json(usage)}};
}

Json chat_response(const ResponseHeader& header, std::span<const ChoiceOutput> choices,
                   bool with_logprobs, const Usage& usage) {
  Json out_choices = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    Json message{{"role", "assistant"}, {"content", valid_utf8(c.text)}};
    if (c.reasoning_content) message["reasoning_content"] = valid_utf8(*c.reasoning_content);
    out_choices.push_back(Json{{"index", i},
                               {"message", std::move(message)},
                               {"logprobs", with_logprobs ? chat_logprobs(c.logprobs) : Json()},
                               {"finish_reason", finish_reason_name(c.finish_reason)},
                               {"stop_reason", stop_reason_json(c.stop_reason)}});
  }
  return Json{{"id", header.id},
              {"object", "chat.completion"},
              {"created", header.created},
              {"model", header.model},
              {"choices", std::move(out_choices)},
              {"usage", usage_json(usage)}};
}

}  // namespace xy::server
