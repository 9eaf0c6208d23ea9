// /v1/chat/completions bodies: message roles and content forms, tool calls, tools and
// tool_choice, template options, chat's logprobs and max_completion_tokens.
#include <gtest/gtest.h>

#include <random>

#include "xyserve/server/openai_request.h"

namespace xy::server {
namespace {

using Json = nlohmann::ordered_json;

const RequestLimits kLimits{8, 20, 1000};

Json body_with(Json messages) { return Json{{"model", "m"}, {"messages", std::move(messages)}}; }
Json user(const std::string& text) { return Json{{"role", "user"}, {"content", text}}; }

ApiError error_of(const Json& body) {
  try {
    parse_chat_request(body.dump(), kLimits);
  } catch (const ApiException& e) {
    return e.error();
  }
  ADD_FAILURE() << "expected an ApiException for " << body.dump();
  return {};
}

void expect_invalid(const Json& body, const std::string& param) {
  const ApiError err = error_of(body);
  EXPECT_EQ(err.http_status, 400);
  EXPECT_EQ(err.type, "invalid_request_error");
  EXPECT_EQ(err.param, param) << body.dump() << " -> " << err.message;
}

TEST(OpenAiChatRequest, EveryRoleAndContentFormParses) {
  std::mt19937 rng(11);
  const char* roles[] = {"system", "developer", "user", "assistant", "tool"};
  const Role role_values[] = {Role::kSystem, Role::kDeveloper, Role::kUser, Role::kAssistant,
                              Role::kTool};
  for (int trial = 0; trial < 200; ++trial) {
    Json messages = Json::array();
    std::vector<std::pair<Role, std::string>> expected;
    const int count = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < count; ++i) {
      const int r = static_cast<int>(rng() % 5);
      Json m{{"role", roles[r]}};
      if (r == 4) m["tool_call_id"] = "call_" + std::to_string(i);
      std::string text;
      if (rng() % 2) {
        text = "t" + std::to_string(rng() % 1000);
        m["content"] = text;
      } else {
        // A list of text parts is joined with "\n" (vLLM's string content format).
        Json parts = Json::array();
        const int num_parts = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < num_parts; ++k) {
          const std::string piece = "part" + std::to_string(rng() % 100);
          parts.push_back(Json{{"type", "text"}, {"text", piece}});
          text += (k ? "\n" : "") + piece;
        }
        m["content"] = parts;
      }
      messages.push_back(m);
      expected.emplace_back(role_values[r], text);
    }
    const ChatCompletionRequest req = parse_chat_request(body_with(messages).dump(), kLimits);
    ASSERT_EQ(req.messages.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(req.messages[i].role, expected[i].first);
      EXPECT_EQ(req.messages[i].content, expected[i].second);
    }
    const Json tmpl = to_template_messages(req.messages);
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(tmpl[i]["role"], messages[i]["role"]);
      EXPECT_EQ(tmpl[i]["content"], expected[i].second);
    }
  }
}

TEST(OpenAiChatRequest, AssistantToolCallsAndToolResultsParse) {
  Json messages = Json::array();
  messages.push_back(user("weather?"));
  messages.push_back(Json{{"role", "assistant"},
                          {"content", nullptr},
                          {"reasoning_content", "need a tool"},
                          {"tool_calls", Json::array({Json{
                                             {"id", "call_1"},
                                             {"type", "function"},
                                             {"function", {{"name", "get_weather"},
                                                           {"arguments", "{\"city\": \"Oslo\"}"}}}}})}});
  messages.push_back(Json{{"role", "tool"}, {"tool_call_id", "call_1"}, {"name", "get_weather"},
                          {"content", "rain"}});
  const ChatCompletionRequest r = parse_chat_request(body_with(messages).dump(), kLimits);
  ASSERT_EQ(r.messages.size(), 3u);
  const ChatMessage& a = r.messages[1];
  EXPECT_FALSE(a.content);
  EXPECT_EQ(a.reasoning_content, "need a tool");
  ASSERT_EQ(a.tool_calls.size(), 1u);
  EXPECT_EQ(a.tool_calls[0].id, "call_1");
  EXPECT_EQ(a.tool_calls[0].name, "get_weather");
  EXPECT_EQ(a.tool_calls[0].arguments, "{\"city\": \"Oslo\"}");
  EXPECT_EQ(r.messages[2].tool_call_id, "call_1");
  EXPECT_EQ(r.messages[2].name, "get_weather");
  const Json tmpl = to_template_messages(r.messages);
  EXPECT_TRUE(tmpl[1]["content"].is_null());
  // Templates read arguments as a mapping; a string that is not a JSON object stays a string.
  EXPECT_EQ(tmpl[1]["tool_calls"][0]["function"]["arguments"], Json({{"city", "Oslo"}}));
  messages[1]["tool_calls"][0]["function"]["arguments"] = "not json";
  const Json tmpl2 = to_template_messages(parse_chat_request(body_with(messages).dump(), kLimits).messages);
  EXPECT_EQ(tmpl2[1]["tool_calls"][0]["function"]["arguments"], "not json");
}

TEST(OpenAiChatRequest, MessageErrorsNameTheMessageField) {
  expect_invalid(body_with(Json::array()), "messages");
  expect_invalid(Json{{"model", "m"}}, "messages");
  expect_invalid(body_with("hi"), "messages");
  expect_invalid(body_with(Json::array({"hi"})), "messages[0]");
  expect_invalid(body_with(Json::array({Json{{"content", "x"}}})), "messages[0].role");
  expect_invalid(body_with(Json::array({Json{{"role", "robot"}, {"content", "x"}}})),
                 "messages[0].role");
  expect_invalid(body_with(Json::array({Json{{"role", 1}, {"content", "x"}}})), "messages[0].role");
  expect_invalid(body_with(Json::array({user("a"), Json{{"role", "user"}}})), "messages[1].content");
  expect_invalid(body_with(Json::array({Json{{"role", "user"}, {"content", 5}}})),
                 "messages[0].content");
  expect_invalid(body_with(Json::array({Json{{"role", "user"}, {"content", Json::array({"x"})}}})),
                 "messages[0].content[0]");
  expect_invalid(body_with(Json::array({Json{
                     {"role", "user"},
                     {"content", Json::array({Json{{"type", "image_url"}, {"image_url", "u"}}})}}})),
                 "messages[0].content[0].type");
  expect_invalid(body_with(Json::array({Json{{"role", "user"},
                                             {"content", Json::array({Json{{"type", "text"}}})}}})),
                 "messages[0].content[0].text");
  expect_invalid(body_with(Json::array({Json{{"role", "user"}, {"content", "x"}, {"name", 3}}})),
                 "messages[0].name");
  expect_invalid(body_with(Json::array({Json{{"role", "tool"}, {"content", "x"}, {"tool_call_id", 3}}})),
                 "messages[0].tool_call_id");
  expect_invalid(body_with(Json::array({Json{{"role", "user"}, {"content", "x"},
                                             {"tool_calls", Json::array()}}, Json{
                                             {"role", "user"}, {"content", "x"},
                                             {"tool_calls", Json::array({Json{{"function", {{"name", "f"}}}}})}}})),
                 "messages[1].tool_calls");
  expect_invalid(body_with(Json::array({Json{{"role", "assistant"}, {"tool_calls", "x"}}})),
                 "messages[0].tool_calls");
  expect_invalid(body_with(Json::array({Json{{"role", "assistant"},
                                             {"tool_calls", Json::array({Json{{"function", {{"arguments", "{}"}}}}})}}})),
                 "messages[0].tool_calls[0].function.name");
  expect_invalid(body_with(Json::array({Json{{"role", "assistant"},
                                             {"tool_calls", Json::array({Json{{"function", {{"name", "f"}, {"arguments", 3}}}}})}}})),
                 "messages[0].tool_calls[0].function.arguments");
  expect_invalid(body_with(Json::array({Json{{"role", "assistant"}, {"content", "x"},
                                             {"reasoning_content", false}}})),
                 "messages[0].reasoning_content");
}

Json tool(const std::string& name) {
  return Json{{"type", "function"},
              {"function", {{"name", name}, {"parameters", {{"type", "object"}}}}}};
}

TEST(OpenAiChatRequest, ToolsAndToolChoiceAreKeptAsSentAndChecked) {
  Json body = body_with(Json::array({user("x")}));
  body["tools"] = Json::array({tool("a"), tool("b")});
  for (const Json& choice : {Json("none"), Json("auto"), Json("required"),
                             Json{{"type", "function"}, {"function", {{"name", "b"}}}}}) {
    body["tool_choice"] = choice;
    const ChatCompletionRequest r = parse_chat_request(body.dump(), kLimits);
    EXPECT_EQ(r.tools, body["tools"]);
    EXPECT_EQ(r.tool_choice, choice);
  }
  body["tool_choice"] = "sometimes";
  expect_invalid(body, "tool_choice");
  body["tool_choice"] = Json{{"type", "function"}, {"function", {{"name", "zzz"}}}};
  expect_invalid(body, "tool_choice.function.name");
  body["tool_choice"] = 3;
  expect_invalid(body, "tool_choice");
  body.erase("tool_choice");
  body["tools"] = Json::array({Json{{"type", "function"}, {"function", {{"description", "d"}}}}});
  expect_invalid(body, "tools[0].function.name");
  body["tools"] = Json::array({Json{{"type", "retrieval"}, {"function", {{"name", "a"}}}}});
  expect_invalid(body, "tools[0].type");
  body["tools"] = "a";
  expect_invalid(body, "tools");
  body.erase("tools");
  body["tool_choice"] = "auto";  // without tools: OpenAI refuses it
  expect_invalid(body, "tool_choice");
  body["tool_choice"] = "none";
  EXPECT_NO_THROW(parse_chat_request(body.dump(), kLimits));
}

TEST(OpenAiChatRequest, TemplateOptionsParseAndConflictsAre400) {
  Json body = body_with(Json::array({user("x"), Json{{"role", "assistant"}, {"content", "Sure"}}}));
  body["chat_template_kwargs"] = {{"enable_thinking", false}};
  body["add_generation_prompt"] = false;
  body["continue_final_message"] = true;
  const ChatCompletionRequest r = parse_chat_request(body.dump(), kLimits);
  EXPECT_EQ(r.chat_template_kwargs, body["chat_template_kwargs"]);
  EXPECT_FALSE(r.add_generation_prompt);
  EXPECT_TRUE(r.continue_final_message);
  Json both = body;
  both["add_generation_prompt"] = true;
  expect_invalid(both, "continue_final_message");
  Json last_user = body;
  last_user["messages"] = Json::array({user("x")});
  expect_invalid(last_user, "continue_final_message");
  Json bad = body;
  bad["chat_template_kwargs"] = "x";
  expect_invalid(bad, "chat_template_kwargs");
  bad = body;
  bad["add_generation_prompt"] = "yes";
  expect_invalid(bad, "add_generation_prompt");
  const ChatCompletionRequest d = parse_chat_request(body_with(Json::array({user("x")})).dump(), kLimits);
  EXPECT_TRUE(d.add_generation_prompt);
  EXPECT_FALSE(d.continue_final_message);
  EXPECT_TRUE(d.chat_template_kwargs.is_null());
  EXPECT_TRUE(d.tools.is_null());
}

TEST(OpenAiChatRequest, MaxCompletionTokensWinsOverMaxTokens) {
  Json body = body_with(Json::array({user("x")}));
  body["max_tokens"] = 10;
  EXPECT_EQ(parse_chat_request(body.dump(), kLimits).options.max_tokens, 10);
  body["max_completion_tokens"] = 3;
  EXPECT_EQ(parse_chat_request(body.dump(), kLimits).options.max_tokens, 3);
  body["max_completion_tokens"] = 0;
  expect_invalid(body, "max_completion_tokens");
  body["max_completion_tokens"] = "3";
  expect_invalid(body, "max_completion_tokens");
}

TEST(OpenAiChatRequest, LogprobsIsABooleanWithTopLogprobsUpToTheLimit) {
  Json body = body_with(Json::array({user("x")}));
  EXPECT_EQ(parse_chat_request(body.dump(), kLimits).options.logprobs, -1);
  body["logprobs"] = true;
  EXPECT_EQ(parse_chat_request(body.dump(), kLimits).options.logprobs, 0);
  for (int k : {0, 3, 20}) {
    body["top_logprobs"] = k;
    const ChatCompletionRequest r = parse_chat_request(body.dump(), kLimits);
    EXPECT_EQ(r.options.logprobs, k);
    EXPECT_EQ(r.top_logprobs, k);
  }
  body["top_logprobs"] = 21;
  expect_invalid(body, "top_logprobs");
  body["top_logprobs"] = -1;
  expect_invalid(body, "top_logprobs");
  body["logprobs"] = 5;  // completions' integer form is a type error here
  expect_invalid(body, "logprobs");
  body["logprobs"] = false;
  body["top_logprobs"] = 2;  // alternatives without logprobs: OpenAI refuses it
  expect_invalid(body, "top_logprobs");
}

}  // namespace
}  // namespace xy::server
