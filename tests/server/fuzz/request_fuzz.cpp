// libFuzzer target: arbitrary bytes as a request body to both parsers. Properties: no crash,
// no leak (ASan), and no exception but ApiException; on success, the parsed request is
// consistent (limits held) and its template messages and a response dump without throwing.
//
// Build (clang): clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
//   tests/server/fuzz/request_fuzz.cpp src/xyserve/server/*.cpp -o request_fuzz
// Run: ./request_fuzz -max_total_time=60 tests/server/fuzz/corpus
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "xyserve/server/openai_request.h"
#include "xyserve/server/openai_response.h"
#include "xyserve/server/sse.h"

namespace {

const xy::server::RequestLimits kLimits{16, 20, 200000};

void check(bool ok) {
  if (!ok) std::abort();
}

void check_options(const xy::server::GenerationOptions& o) {
  check(o.n >= 1 && o.n <= kLimits.max_n);
  check(o.logprobs >= -1 && o.logprobs <= kLimits.max_logprobs);
  check(!o.max_tokens || *o.max_tokens >= 1);
  check(!o.include_usage || o.stream);
  for (const auto& s : o.stop) check(!s.empty());
  for (int32_t id : o.stop_token_ids) check(id >= 0 && id < kLimits.vocab_size);
  check(!o.temperature || (*o.temperature >= 0 && *o.temperature <= 2));
  check(!o.top_p || (*o.top_p > 0 && *o.top_p <= 1));
  check(!o.top_k || *o.top_k == -1 || *o.top_k >= 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  try {
    const auto r = xy::server::parse_completion_request(body, kLimits);
    check(!r.prompts.empty());
    check_options(r.options);
    xy::server::ChoiceOutput c;
    if (const auto* text = std::get_if<std::string>(&r.prompts[0])) c.text = *text;
    const auto json = xy::server::completion_response({"cmpl-f", 0, r.model}, std::span(&c, 1),
                                                      {}, false, {});
    (void)xy::server::sse_event(json);
  } catch (const xy::server::ApiException&) {
  }
  try {
    const auto r = xy::server::parse_chat_request(body, kLimits);
    check(!r.messages.empty());
    check_options(r.options);
    (void)xy::server::json_text(xy::server::to_template_messages(r.messages));
    (void)xy::server::json_text(r.tools);
    (void)xy::server::json_text(r.chat_template_kwargs);
  } catch (const xy::server::ApiException&) {
  }
  return 0;
}
