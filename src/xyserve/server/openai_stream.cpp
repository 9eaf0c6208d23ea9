#include "xyserve/server/openai_stream.h"

#include "xyserve/common/check.h"

namespace xy::server {
namespace {

Json finish_json(const ChoiceDelta& delta) {
  return delta.finish_reason ? Json(finish_reason_name(*delta.finish_reason)) : Json();
}

}  // namespace

CompletionStream::CompletionStream(ResponseHeader header, int32_t num_choices,
                                   bool with_logprobs, bool include_usage)
    : header_(std::move(header)),
      with_logprobs_(with_logprobs),
      include_usage_(include_usage),
      text_offset_(num_choices, 0),
      finished_(num_choices, false) {}

Json CompletionStream::chunk(const ChoiceDelta& delta) {
  XY_CHECK(delta.index >= 0 && delta.index < static_cast<int32_t>(finished_.size()),
           "choice index ", delta.index, " of ", finished_.size());
  XY_CHECK(!finished_[delta.index], "delta for finished choice ", delta.index);
  XY_CHECK(!usage_sent_, "delta after the usage chunk");
  finished_[delta.index] = delta.finish_reason.has_value();
  Json logprobs;
  if (with_logprobs_) logprobs = completion_logprobs(delta.logprobs, text_offset_[delta.index]);
  text_offset_[delta.index] += count_chars(delta.text);
  Json choice{{"index", delta.index},
              {"text", valid_utf8(delta.text)},
              {"logprobs", std::move(logprobs)},
              {"finish_reason", finish_json(delta)},
              {"stop_reason", stop_reason_json(delta.stop_reason)}};
  Json out{{"id", header_.id},
           {"object", "text_completion"},
           {"created", header_.created},
           {"model", header_.model},
           {"choices", Json::array({std::move(choice)})}};
  if (include_usage_) out["usage"] = nullptr;
  return out;
}

std::optional<Json> CompletionStream::usage_chunk(const Usage& usage) {
  XY_CHECK(!usage_sent_, "usage chunk requested twice");
  usage_sent_ = true;
  if (!include_usage_) return std::nullopt;
  return Json{{"id", header_.id},
              {"object", "text_completion"},
              {"created", header_.created},
              {"model", header_.model},
              {"choices", Json::array()},
              {"usage", usage_json(usage)}};
}

ChatStream::ChatStream(ResponseHeader header, int32_t num_choices, bool with_logprobs,
                       bool include_usage)
    : header_(std::move(header)),
      with_logprobs_(with_logprobs),
      include_usage_(include_usage),
      role_sent_(num_choices, false),
      finished_(num_choices, false) {}

Json ChatStream::make_chunk(Json choice) const {
  Json out{{"id", header_.id},
           {"object", "chat.completion.chunk"},
           {"created", header_.created},
           {"model", header_.model},
           {"choices", Json::array({std::move(choice)})}};
  if (include_usage_) out["usage"] = nullptr;
  return out;
}

std::vector<Json> ChatStream::chunks(const ChoiceDelta& delta) {
  XY_CHECK(delta.index >= 0 && delta.index < static_cast<int32_t>(finished_.size()),
           "choice index ", delta.index, " of ", finished_.size());
  XY_CHECK(!finished_[delta.index], "delta for finished choice ", delta.index);
  XY_CHECK(!usage_sent_, "delta after the usage chunk");
  std::vector<Json> out;
  if (!role_sent_[delta.index]) {
    // OpenAI's first chunk of a choice: the role, with empty content.
    role_sent_[delta.index] = true;
    out.push_back(make_chunk(Json{{"index", delta.index},
                                  {"delta", Json{{"role", "assistant"}, {"content", ""}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}));
  }
  finished_[delta.index] = delta.finish_reason.has_value();
  const bool has_content = !delta.text.empty() || delta.reasoning_content.has_value() ||
                           !delta.logprobs.empty() || delta.finish_reason.has_value();
  if (!has_content) return out;
  Json d = Json::object();
  if (delta.reasoning_content) d["reasoning_content"] = valid_utf8(*delta.reasoning_content);
  if (!delta.text.empty() || !delta.reasoning_content) d["content"] = valid_utf8(delta.text);
  Json choice{{"index", delta.index},
              {"delta", std::move(d)},
              {"logprobs", with_logprobs_ ? chat_logprobs(delta.logprobs) : Json()},
              {"finish_reason", finish_json(delta)}};
  if (delta.finish_reason) choice["stop_reason"] = stop_reason_json(delta.stop_reason);
  out.push_back(make_chunk(std::move(choice)));
  return out;
}

std::optional<Json> ChatStream::usage_chunk(const Usage& usage) {
  XY_CHECK(!usage_sent_, "usage chunk requested twice");
  usage_sent_ = true;
  if (!include_usage_) return std::nullopt;
  return Json{{"id", header_.id},
              {"object", "chat.completion.chunk"},
              {"created", header_.created},
              {"model", header_.model},
              {"choices", Json::array()},
              {"usage", usage_json(usage)}};
}

}  // namespace xy::server
