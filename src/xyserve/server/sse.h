// Server-Sent Events framing (html.spec.whatwg.org, "server-sent events"), as OpenAI streams:
// each chunk is one event "data: <json>\n\n"; the stream ends with "data: [DONE]\n\n".
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace xy::server {

// "data: <compact json>\n\n". The JSON is dumped with invalid UTF-8 replaced by U+FFFD so that
// framing never throws; compact JSON has no raw newline, so one data line carries it.
std::string sse_event(const nlohmann::ordered_json& payload);

// "data: [DONE]\n\n": the last event of every stream, after errors too.
std::string sse_done();

// ": <text>\n\n": a comment line, ignored by clients; sent to keep idle connections open.
// Newlines in `text` are replaced by spaces (a newline would end the comment).
std::string sse_comment(const std::string& text);

// The HTTP Content-Type of a stream.
inline constexpr const char* kSseContentType = "text/event-stream";

// A JSON body (non-streaming responses, error bodies) as text, never throwing on bad UTF-8.
std::string json_text(const nlohmann::ordered_json& value);

}  // namespace xy::server
