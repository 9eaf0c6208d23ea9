// /v1/chat/completions bodies: messages, tools, chat-template options, then the shared fields.
#include <optional>

#include "xyserve/server/openai_options.h"
#include "xyserve/server/openai_request.h"

namespace xy::server {
namespace {

Role read_role(const Json& message, const std::string& at) {
  const std::string param = field_param(at, "role");
  const auto role = read_string(message, "role", param);
  if (!role) throw_invalid(param, cat("`", param, "` is required"));
  if (*role == "system") return Role::kSystem;
  if (*role == "developer") return Role::kDeveloper;
  if (*role == "user") return Role::kUser;
  if (*role == "assistant") return Role::kAssistant;
  if (*role == "tool") return Role::kTool;
  throw_invalid(param, cat("`", param, "` must be one of system, developer, user, assistant, "
                           "tool; found \"", *role, "\""));
}

// content: a string, or an array of {"type": "text", "text": "..."} parts.
std::optional<std::string> read_content(const Json& message, const std::string& at) {
  const std::string param = field_param(at, "content");
  const Json* content = find_field(message, "content");
  if (!content) return std::nullopt;
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array())
    throw_invalid(param, cat("`", param, "` must be a string or an array of content parts; "
                             "found ", json_kind(*content)));
  std::string text;
  for (size_t i = 0; i < content->size(); ++i) {
    const Json& part = (*content)[i];
    const std::string part_param = index_param(param, i);
    if (!part.is_object())
      throw_invalid(part_param, cat("`", part_param, "` must be an object; found ",
                                    json_kind(part)));
    const auto type = read_string(part, "type", field_param(part_param, "type"));
    if (!type) throw_invalid(field_param(part_param, "type"),
                             cat("`", field_param(part_param, "type"), "` is required"));
    if (*type != "text")
      throw_invalid(field_param(part_param, "type"),
                    cat("content part type \"", *type,
                        "\" is not supported by this server; only \"text\" is"));
    const std::string text_param = field_param(part_param, "text");
    const auto part_text = read_string(part, "text", text_param);
    if (!part_text) throw_invalid(text_param, cat("`", text_param, "` is required"));
    // Parts are joined with "\n", as vLLM's "string" content format joins them.
    if (i > 0) text += '\n';
    text += *part_text;
  }
  return text;
}

std::vector<ToolCall> read_tool_calls(const Json& message, const std::string& at) {
  const std::string param = field_param(at, "tool_calls");
  const Json* calls = find_field(message, "tool_calls");
  std::vector<ToolCall> out;
  if (!calls) return out;
  if (!calls->is_array())
    throw_invalid(param, cat("`", param, "` must be an array; found ", json_kind(*calls)));
  for (size_t i = 0; i < calls->size(); ++i) {
    const Json& call = (*calls)[i];
    const std::string call_param = index_param(param, i);
    if (!call.is_object())
      throw_invalid(call_param, cat("`", call_param, "` must be an object; found ",
                                    json_kind(call)));
    ToolCall tc;
    tc.id = read_string(call, "id", field_param(call_param, "id")).value_or("");
    const std::string fn_param = field_param(call_param, "function");
    const Json* fn = find_field(call, "function");
    if (!fn || !fn->is_object())
      throw_invalid(fn_param, cat("`", fn_param, "` must be an object with name and arguments"));
    const auto name = read_string(*fn, "name", field_param(fn_param, "name"));
    if (!name) throw_invalid(field_param(fn_param, "name"),
                             cat("`", field_param(fn_param, "name"), "` is required"));
    tc.name = *name;
    // OpenAI sends arguments as a JSON-encoded string; some clients send the object itself.
    const Json* args = find_field(*fn, "arguments");
    if (!args) tc.arguments = "{}";
    else if (args->is_string()) tc.arguments = args->get<std::string>();
    else if (args->is_object()) tc.arguments = args->dump();
    else
      throw_invalid(field_param(fn_param, "arguments"),
                    cat("`", field_param(fn_param, "arguments"),
                        "` must be a JSON-encoded string; found ", json_kind(*args)));
    out.push_back(std::move(tc));
  }
  return out;
}

ChatMessage read_message(const Json& message, const std::string& at) {
  if (!message.is_object())
    throw_invalid(at, cat("`", at, "` must be an object; found ", json_kind(message)));
  ChatMessage m;
  m.role = read_role(message, at);
  m.content = read_content(message, at);
  m.name = read_string(message, "name", field_param(at, "name"));
  m.tool_call_id = read_string(message, "tool_call_id", field_param(at, "tool_call_id"));
  m.reasoning_content =
      read_string(message, "reasoning_content", field_param(at, "reasoning_content"));
  m.tool_calls = read_tool_calls(message, at);
  if (!m.tool_calls.empty() && m.role != Role::kAssistant)
    throw_invalid(field_param(at, "tool_calls"),
                  cat("`", field_param(at, "tool_calls"), "` is only allowed on assistant "
                      "messages"));
  // OpenAI: content is required except on an assistant message (which may carry only
  // tool_calls, or be the empty prefix that continue_final_message extends).
  if (!m.content && m.role != Role::kAssistant)
    throw_invalid(field_param(at, "content"),
                  cat("`", field_param(at, "content"), "` is required for role ",
                      role_name(m.role)));
  return m;
}

void read_tools(const Json& body, ChatCompletionRequest& r) {
  if (const Json* tools = find_field(body, "tools")) {
    if (!tools->is_array())
      throw_invalid("tools", cat("`tools` must be an array; found ", json_kind(*tools)));
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& tool = (*tools)[i];
      const std::string p = index_param("tools", i);
      if (!tool.is_object())
        throw_invalid(p, cat("`", p, "` must be an object; found ", json_kind(tool)));
      const auto type = read_string(tool, "type", field_param(p, "type"));
      if (type && *type != "function")
        throw_invalid(field_param(p, "type"), cat("`", field_param(p, "type"),
                                                  "` must be \"function\"; found \"", *type, "\""));
      const Json* fn = find_field(tool, "function");
      if (!fn || !fn->is_object())
        throw_invalid(field_param(p, "function"),
                      cat("`", field_param(p, "function"), "` must be an object"));
      const std::string name_param = field_param(field_param(p, "function"), "name");
      if (!read_string(*fn, "name", name_param))
        throw_invalid(name_param, cat("`", name_param, "` is required"));
      if (const Json* params = find_field(*fn, "parameters"); params && !params->is_object())
        throw_invalid(field_param(field_param(p, "function"), "parameters"),
                      "tool `parameters` must be a JSON Schema object");
    }
    r.tools = *tools;
  }
  const Json* choice = find_field(body, "tool_choice");
  if (!choice) return;
  const bool has_tools = r.tools.is_array() && !r.tools.empty();
  if (choice->is_string()) {
    const std::string& c = choice->get_ref<const std::string&>();
    if (c != "none" && c != "auto" && c != "required")
      throw_invalid("tool_choice", cat("`tool_choice` must be \"none\", \"auto\", \"required\" "
                                       "or a named function; found \"", c, "\""));
    if (c != "none" && !has_tools)
      throw_invalid("tool_choice", "`tool_choice` is only allowed when `tools` are specified");
  } else if (choice->is_object()) {
    const Json* fn = find_field(*choice, "function");
    const std::string name_param = "tool_choice.function.name";
    const auto name = fn && fn->is_object() ? read_string(*fn, "name", name_param) : std::nullopt;
    if (!name) throw_invalid(name_param, "`tool_choice.function.name` is required");
    bool found = false;
    if (has_tools)
      for (const Json& t : r.tools) found = found || t.at("function").at("name") == *name;
    if (!found)
      throw_invalid(name_param, cat("`tool_choice` names function \"", *name,
                                    "\", which is not in `tools`"));
  } else {
    throw_invalid("tool_choice", cat("`tool_choice` must be a string or an object; found ",
                                     json_kind(*choice)));
  }
  r.tool_choice = *choice;
}

// A tool call's arguments as an object when the string holds one (depth-bounded like the
// body, since templates dump it recursively), else the string itself.
Json parse_arguments(const std::string& arguments) {
  try {
    Json args = parse_body(arguments);  // objects only; throws ApiException otherwise
    return args;
  } catch (const ApiException&) {
    return Json(arguments);
  }
}

}  // namespace

ChatCompletionRequest parse_chat_request(std::string_view body_text, const RequestLimits& limits) {
  const Json body = parse_body(body_text);
  ChatCompletionRequest r;
  r.model = read_model(body);
  const Json* messages = find_field(body, "messages");
  if (!messages) throw_invalid("messages", "`messages` is required");
  if (!messages->is_array())
    throw_invalid("messages", cat("`messages` must be an array; found ", json_kind(*messages)));
  if (messages->empty()) throw_invalid("messages", "`messages` must not be empty");
  for (size_t i = 0; i < messages->size(); ++i)
    r.messages.push_back(read_message((*messages)[i], index_param("messages", i)));

  read_tools(body, r);
  if (const Json* kwargs = find_field(body, "chat_template_kwargs")) {
    if (!kwargs->is_object())
      throw_invalid("chat_template_kwargs", cat("`chat_template_kwargs` must be an object; found ",
                                                json_kind(*kwargs)));
    r.chat_template_kwargs = *kwargs;
  }
  r.add_generation_prompt =
      read_bool(body, "add_generation_prompt", "add_generation_prompt").value_or(true);
  r.continue_final_message =
      read_bool(body, "continue_final_message", "continue_final_message").value_or(false);
  if (r.continue_final_message && r.add_generation_prompt)
    throw_invalid("continue_final_message",
                  "`continue_final_message` and `add_generation_prompt` cannot both be true");
  if (r.continue_final_message && r.messages.back().role != Role::kAssistant)
    throw_invalid("continue_final_message",
                  "`continue_final_message` needs the last message to be an assistant message");

  r.options = read_generation_options(body, limits);
  // max_completion_tokens replaced max_tokens in OpenAI's chat API; the newer name wins.
  auto max_tokens = read_integer(body, "max_tokens", "max_tokens");
  if (max_tokens) check_min(*max_tokens, 1, "max_tokens");
  auto max_completion =
      read_integer(body, "max_completion_tokens", "max_completion_tokens");
  if (max_completion) check_min(*max_completion, 1, "max_completion_tokens");
  r.options.max_tokens = max_completion ? max_completion : max_tokens;

  // Chat's logprobs is a boolean; the count of alternatives is top_logprobs.
  const bool logprobs = read_bool(body, "logprobs", "logprobs").value_or(false);
  if (auto top = read_integer(body, "top_logprobs", "top_logprobs")) {
    if (*top < 0 || *top > limits.max_logprobs)
      throw_invalid("top_logprobs", cat("`top_logprobs` must be in [0, ", limits.max_logprobs,
                                        "]; found ", *top));
    if (!logprobs)
      throw_invalid("top_logprobs", "`logprobs` must be true when `top_logprobs` is used");
    r.top_logprobs = static_cast<int32_t>(*top);
  }
  r.options.logprobs = logprobs ? r.top_logprobs : -1;
  return r;
}

nlohmann::ordered_json to_template_messages(const std::vector<ChatMessage>& messages) {
  Json out = Json::array();
  for (const ChatMessage& m : messages) {
    Json j;
    j["role"] = role_name(m.role);
    j["content"] = m.content ? Json(*m.content) : Json();
    if (m.name) j["name"] = *m.name;
    if (m.tool_call_id) j["tool_call_id"] = *m.tool_call_id;
    if (m.reasoning_content) j["reasoning_content"] = *m.reasoning_content;
    if (!m.tool_calls.empty()) {
      Json calls = Json::array();
      for (const ToolCall& tc : m.tool_calls) {
        Json args = parse_arguments(tc.arguments);
        Json call;
        if (!tc.id.empty()) call["id"] = tc.id;
        call["type"] = "function";
        call["function"] = Json{{"name", tc.name}, {"arguments", std::move(args)}};
        calls.push_back(std::move(call));
      }
      j["tool_calls"] = std::move(calls);
    }
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace xy::server
