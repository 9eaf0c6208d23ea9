#include "xyserve/tokenizer/chat/chat_template.h"

#include "xyserve/common/error.h"
#include "xyserve/tokenizer/chat/ast.h"
#include "xyserve/tokenizer/chat/renderer.h"

namespace xy::chat {

ChatTemplate ChatTemplate::parse(std::string_view source) {
  ChatTemplate t;
  t.body_ = std::make_shared<const Body>(parse_template(source));
  return t;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object())
    throw Error(cat("chat template context: expected a JSON object, found ", context.type_name()));
  const Value ctx = Value::from_json(context);
  return render_template(*body_, ctx.as_dict());
}

std::string apply_chat_template(const ChatTemplate& tmpl, const ChatTemplateInputs& inputs) {
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  ctx["messages"] = inputs.messages.is_null() ? nlohmann::ordered_json::array() : inputs.messages;
  ctx["tools"] = inputs.tools;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = inputs.add_generation_prompt;
  ctx["bos_token"] = inputs.bos_token;
  ctx["eos_token"] = inputs.eos_token;
  if (inputs.extra.is_object())
    for (const auto& [k, v] : inputs.extra.items()) ctx[k] = v;
  return tmpl.render(ctx);
}

}  // namespace xy::chat
