#!/usr/bin/python3
"""Reference renderer for chat templates: jinja2 set up exactly as transformers'
_compile_jinja_template (transformers/utils/chat_template_utils.py) sets it up.

  render_chat_template.py CASES.json OUT.json
      CASES: [{"template": "<source>", "context": {...}}, ...]
      OUT:   [{"ok": true, "text": "..."} | {"ok": false, "stage": "parse"|"render", "error": "..."}, ...]
  render_chat_template.py --template FILE --contexts CONTEXTS.json [--out OUT.json]
      FILE is a template, or a tokenizer_config.json whose "chat_template" is used;
      CONTEXTS is a list of contexts; OUT (default stdout) has one result per context.

Run it with Debian's /usr/bin/python3 (python3-jinja2 3.1).
"""
import argparse
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(Extension):
    """transformers' AssistantTracker accepts {% generation %}...{% endgeneration %}; for plain
    rendering it outputs the body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_all(env, source, contexts):
    try:
        tmpl = env.from_string(source)
    except Exception as e:  # noqa: BLE001 - any failure is a result to compare
        return [{"ok": False, "stage": "parse", "error": f"{type(e).__name__}: {e}"} for _ in contexts]
    out = []
    for ctx in contexts:
        try:
            out.append({"ok": True, "text": tmpl.render(**ctx)})
        except Exception as e:  # noqa: BLE001
            out.append({"ok": False, "stage": "render", "error": f"{type(e).__name__}: {e}"})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--template")
    ap.add_argument("--contexts")
    ap.add_argument("--out", dest="out_opt")
    args = ap.parse_args()
    env = make_env()
    if args.template:
        with open(args.template, encoding="utf-8") as f:
            source = f.read()
        if args.template.endswith(".json"):
            source = json.loads(source)["chat_template"]
        with open(args.contexts, encoding="utf-8") as f:
            results = render_all(env, source, json.load(f))
        out_path = args.out_opt
    else:
        with open(args.cases, encoding="utf-8") as f:
            cases = json.load(f)
        results = []
        for case in cases:
            results.extend(render_all(env, case["template"], [case["context"]]))
        out_path = args.out
    text = json.dumps(results, ensure_ascii=False, indent=1)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
