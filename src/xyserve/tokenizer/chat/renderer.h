// Renders a parsed template against a context with jinja2's scoping: a for loop gives every
// iteration a fresh scope (sets inside do not survive it; namespaces exist for that), `if`
// opens none, a macro runs in a scope whose parent is the one it was defined in.
#pragma once

#include <string>

#include "xyserve/tokenizer/chat/ast.h"

namespace xy::chat {

// Throws xy::Error "chat template L:C: ..." on a runtime error or raise_exception.
std::string render_template(const Body& body, const Dict& context);

}  // namespace xy::chat
