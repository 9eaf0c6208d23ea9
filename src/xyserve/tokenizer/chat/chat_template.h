// Chat templates: the Jinja template in a model's tokenizer_config.json ("chat_template") that
// turns OpenAI-style messages into the prompt text. Rendered as transformers renders it
// (jinja2 ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its
// tojson/raise_exception/strftime_now), so the same request gives byte-identical prompts.
//
// Thread safety: a parsed ChatTemplate is immutable; render() may run on many threads at once.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace xy::chat {

struct Stmt;

class ChatTemplate {
 public:
  // Throws xy::Error "chat template L:C: ..." on a syntax error or on any construct this
  // renderer does not support (include/extends/..., an unknown filter or test), so that an
  // unsupported template fails at start-up instead of rendering something different.
  static ChatTemplate parse(std::string_view source);

  // Renders with `context` (a JSON object) as the template's variables. Throws xy::Error on
  // raise_exception or a runtime error (what jinja2 would raise), with line:col.
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

struct ChatTemplateInputs {
  nlohmann::ordered_json messages;  // array of {"role", "content", ...}
  nlohmann::ordered_json tools;     // array of tool schemas, or null (the template sees None)
  bool add_generation_prompt = true;
  nlohmann::ordered_json extra;  // chat_template_kwargs, e.g. {"enable_thinking": false}
  std::string bos_token, eos_token;
};

// The context transformers' apply_chat_template builds: messages, tools, documents (None),
// add_generation_prompt, bos_token, eos_token, then the extra kwargs on top.
std::string apply_chat_template(const ChatTemplate& tmpl, const ChatTemplateInputs& inputs);

}  // namespace xy::chat
