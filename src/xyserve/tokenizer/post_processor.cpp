#include "xyserve/tokenizer/post_processor.h"

#include <string>

namespace xy::tokenizer {
namespace {

std::vector<int32_t> special_ids(const Json& specials, const std::string& name,
                                 const JsonPath& at) {
  if (!specials.is_object() || !specials.contains(name)) {
    at.fail(cat("special token \"", name, "\" is not in special_tokens"));
  }
  const JsonPath s = at.field("special_tokens").field(name);
  const Json& ids = require_array(specials[name], s, "ids");
  std::vector<int32_t> out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].is_number_integer()) s.field("ids").index(i).fail("expected an integer id");
    out.push_back(ids[i].get<int32_t>());
  }
  return out;
}

// A ["token", id] pair of Bert/RobertaProcessing.
int32_t pair_id(const Json& j, const JsonPath& at, const std::string& key) {
  const Json& v = require(j, at, key);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer()) {
    at.field(key).fail("expected [\"token\", id]");
  }
  return v[1].get<int32_t>();
}

}  // namespace

SpecialTokenWrap make_post_processor(const Json& j, const JsonPath& at) {
  SpecialTokenWrap wrap;
  if (j.is_null()) return wrap;
  const std::string type = require_string(j, at, "type");
  if (type == "ByteLevel") return wrap;
  if (type == "TemplateProcessing") {
    const Json& single = require_array(j, at, "single");
    const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : Json::object();
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const JsonPath item = at.field("single").index(i);
      if (single[i].contains("SpecialToken")) {
        const std::string name = require_string(single[i]["SpecialToken"],
                                                item.field("SpecialToken"), "id");
        auto ids = special_ids(specials, name, at);
        auto& dst = seen_sequence ? wrap.suffix : wrap.prefix;
        dst.insert(dst.end(), ids.begin(), ids.end());
      } else if (single[i].contains("Sequence")) {
        if (seen_sequence) item.fail("the single template names a sequence twice");
        seen_sequence = true;
      } else {
        item.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    if (!seen_sequence) at.field("single").fail("the single template has no $A sequence");
    return wrap;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    wrap.prefix.push_back(pair_id(j, at, "cls"));
    wrap.suffix.push_back(pair_id(j, at, "sep"));
    return wrap;
  }
  if (type == "Sequence") {
    const Json& items = require_array(j, at, "processors");
    for (size_t i = 0; i < items.size(); ++i) {
      // Each processor wraps the result of the previous one.
      SpecialTokenWrap inner = make_post_processor(items[i], at.field("processors").index(i));
      inner.prefix.insert(inner.prefix.end(), wrap.prefix.begin(), wrap.prefix.end());
      wrap.suffix.insert(wrap.suffix.end(), inner.suffix.begin(), inner.suffix.end());
      wrap.prefix = std::move(inner.prefix);
    }
    return wrap;
  }
  at.field("type").fail(cat("unsupported post_processor type \"", type,
                            "\" (supported: TemplateProcessing, ByteLevel, BertProcessing, "
                            "RobertaProcessing, Sequence)"));
}

}  // namespace xy::tokenizer
