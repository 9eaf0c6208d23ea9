#!/usr/bin/python3
"""Writes suite.json: conversations for the real templates and small templates that exercise
every construct the C++ renderer supports, each with several contexts. The expected outputs
are not stored: the test renders every case with tools/render_chat_template.py (jinja2)."""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(1234)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "description": "City name, e.g. Zürich"},
               "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the web.",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                                                          "top_k": {"type": "integer", "default": 3}},
                         "required": ["q"]}}}

def user(c): return {"role": "user", "content": c}
def system(c): return {"role": "system", "content": c}
def assistant(c, **kw): return dict({"role": "assistant", "content": c}, **kw)
def tool(c, **kw): return dict({"role": "tool", "content": c}, **kw)
def call(name, args, as_string=False, wrap=True):
    a = json.dumps(args, ensure_ascii=False) if as_string else args
    f = {"name": name, "arguments": a}
    return {"id": "call_" + name, "type": "function", "function": f} if wrap else f

conversations = [
    {"name": "system_user", "messages": [system("You are terse."), user("Hi!")]},
    {"name": "user_only", "messages": [user("What is 2+2?")]},
    {"name": "multi_turn", "messages": [system("Be kind."), user("Hello"), assistant("Hi, how can I help?"),
                                        user("Tell me a joke."), assistant("Why did the GPU cross the road?"),
                                        user("Why?")]},
    {"name": "no_generation_prompt", "messages": [user("a"), assistant("b")], "add_generation_prompt": False},
    {"name": "unicode", "messages": [system("Réponds en français 🇫🇷"), user("Привет, 世界! こんにちは 👋🏽"),
                                     assistant("你好 — «ça va?» \u2028 ok"), user("émoji: 🤖\ttab")]},
    {"name": "empty_content", "messages": [system(""), user(""), assistant(""), user("still here")]},
    {"name": "template_like_content", "messages": [user("{{ messages }} {% if x %}y{% endif %} {# c #}"),
                                                   assistant("{{- raise_exception('no') -}}"), user("}} {{")]},
    {"name": "whitespace_content", "messages": [user("  padded  \n\n"), assistant("\n\nline1\nline2\n  "),
                                                user("\r\nwindows\r\n")]},
    {"name": "quotes_backslashes", "messages": [user("He said \"hi\" and 'bye' \\ back\\slash"),
                                                assistant("path C:\\\\temp\\n not newline")]},
    {"name": "tools_no_system", "messages": [user("Weather in Paris?")], "tools": [WEATHER]},
    {"name": "tools_with_system", "messages": [system("Use tools wisely."), user("Search cats")],
     "tools": [WEATHER, SEARCH]},
    {"name": "tool_call_dict_args", "tools": [WEATHER], "messages": [
        user("Weather in Zürich?"), assistant("", tool_calls=[call("get_weather", {"city": "Zürich", "unit": "c"})]),
        tool('{"temp": 21, "sky": "sunny"}', tool_call_id="call_get_weather"), user("Thanks")]},
    {"name": "tool_call_string_args", "tools": [WEATHER], "messages": [
        user("Weather in Oslo?"),
        assistant(None, tool_calls=[call("get_weather", {"city": "Oslo"}, as_string=True)]),
        tool("-3C, snow")]},
    {"name": "tool_call_with_content", "tools": [WEATHER, SEARCH], "messages": [
        user("Two things"),
        assistant("Let me check both.", tool_calls=[call("get_weather", {"city": "Rome"}),
                                                   call("search", {"q": "Rome news", "top_k": 2})]),
        tool("30C"), tool("No news."), assistant("Rome: 30C, no news."), user("ok")]},
    {"name": "tool_call_unwrapped", "tools": [SEARCH], "messages": [
        user("find x"), assistant("", tool_calls=[call("search", {"q": "x", "nested": {"a": [1, 2.5, None, True]}},
                                                        wrap=False)]),
        tool("result x")]},
    {"name": "parallel_tool_results", "tools": [WEATHER], "messages": [
        system("sys"), user("Compare"),
        assistant("", tool_calls=[call("get_weather", {"city": c}) for c in ["A", "B", "C"]]),
        tool("1"), tool("2"), tool("3")], "add_generation_prompt": True},
    {"name": "tool_then_no_prompt", "tools": [WEATHER], "messages": [
        user("q"), assistant("", tool_calls=[call("get_weather", {"city": "Q"})]), tool("r"),
        assistant("done")], "add_generation_prompt": False},
    {"name": "think_in_content", "messages": [
        user("Solve"), assistant("<think>\nstep 1\nstep 2\n</think>\n\nThe answer is 4."), user("Again")]},
    {"name": "think_last_turn", "messages": [
        user("Q1"), assistant("A1"), user("Q2"), assistant("<think>\nhmm\n</think>\n\nA2")],
     "add_generation_prompt": False},
    {"name": "reasoning_content_field", "messages": [
        user("Q"), assistant("Final.", reasoning_content="I reasoned."), user("Next")]},
    {"name": "reasoning_none", "messages": [user("Q"), assistant("Plain", reasoning_content=None), user("N")]},
    {"name": "thinking_disabled", "messages": [user("Quick answer please")], "extra": {"enable_thinking": False}},
    {"name": "thinking_enabled", "messages": [user("Think hard")], "extra": {"enable_thinking": True}},
    {"name": "thinking_disabled_multi", "messages": [
        system("S"), user("a"), assistant("<think>x</think>b"), user("c")], "extra": {"enable_thinking": False}},
    {"name": "tool_response_user_content", "messages": [
        user("<tool_response>\nold\n</tool_response>"), user("real question"),
        assistant("", tool_calls=[call("search", {"q": "real"})]), tool("found"), assistant("<think>\nuse it\n</think>\n\nok")],
     "tools": [SEARCH]},
    {"name": "system_mid_conversation", "messages": [system("first"), user("u1"), system("second"), user("u2")]},
    {"name": "long_conversation", "messages": [m for i in range(12) for m in (user(f"question {i} " * (i % 3 + 1)),
                                                                             assistant(f"answer {i}"))] + [user("end")]},
    {"name": "bos_eos_tokens", "messages": [user("tok")], "bos_token": "<s>", "eos_token": "</s>"},
    {"name": "extra_kwargs", "messages": [user("x")], "extra": {"custom_flag": True, "date_string": "26 Jul 2024"}},
    {"name": "numbers_in_args", "tools": [SEARCH], "messages": [
        user("n"), assistant("", tool_calls=[call("search", {"q": "n", "top_k": 10, "ratio": 0.1, "big": 1e20,
                                                              "neg": -0.0, "list": [], "obj": {}})])]},
    {"name": "newline_heavy", "messages": [system("\n"), user("\n\n\n"), assistant("\n")]},
    {"name": "tools_empty_list", "messages": [user("no tools")], "tools": []},
]

REAL = ["llama3_1", "qwen2_5", "qwen3"]

def conv_context(c, bos, eos):
    ctx = {"messages": c["messages"], "tools": c.get("tools"), "documents": None,
           "add_generation_prompt": c.get("add_generation_prompt", True),
           "bos_token": c.get("bos_token", bos), "eos_token": c.get("eos_token", eos)}
    ctx.update(c.get("extra", {}))
    return ctx

# Small templates, each for a group of constructs, with the contexts they run against.
MSGS = [user("Hi"), assistant("Hello!"), user("Bye")]
own = [
    ("whitespace_control", "A  {{- ' x ' -}}  B\n  {%- if true %}  C  {% endif -%}\n  D {# note #}\n  {% if t %}\n    E\n  {% endif %}\nF{%+ if true %}G{% endif +%}\n  {#- c -#}  H\n", [{"t": True}, {"t": False}]),
    ("trim_lstrip_blocks", "start\n    {% for i in xs %}\n        item {{ i }}\n    {% endfor %}\n  {{ 'v' }}  \n{% raw %}\n  {{ raw }} {% x %}\n{% endraw %}\nend\n\n", [{"xs": [1, 2]}, {"xs": []}]),
    ("literals_and_repr", "{{ [1, 2.5, 'a', \"b'c\", none, true, False, (1,), (1, 2), {'k': [None]}] }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}|{{ 10 / 4 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7.5 // 2 }}|{{ 2 ** 10 }}|{{ 'ab' * 3 }}|{{ 1 ~ 2 ~ none }}|{{ 'a' 'b' }}|{{ '\\u00e9\\x41\\n\\t' }}|{{ 1_000 }}|{{ -x }}|{{ x - -1 }}", [{"x": 3}, {"x": 2.5}]),
    ("comparisons_logic", "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ 'b' in 'abc' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ x and 'yes' }} {{ x or 'no' }} {{ not x }} {{ 'y' if x else 'n' }} [{{ 'y' if x }}] {{ [1, 2] == [1, 2] }} {{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }} {{ [1, 'a'] < [1, 'b'] }}", [{"x": 0}, {"x": "s"}, {"x": []}, {}]),
    ("attributes_items_slices", "{{ d.a }}|{{ d['a'] }}|{{ d.missing is defined }}|{{ d.get('a') }}|{{ d.get('z', 'dflt') }}|{{ d.get('z') }}|{{ l[0] }}|{{ l[-1] }}|{{ l[1:] }}|{{ l[::-1] }}|{{ l[:-1] }}|{{ l[10] is defined }}|{{ s[1:3] }}|{{ s[-2:] }}|{{ s[::2] }}|{{ d.items() | list }}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ l.0 }}|{{ none.x is defined }}|{{ l.index(2) }}|{{ l.count(2) }}", [{"d": {"a": 1, "b": [2]}, "l": [1, 2, 3, 2], "s": "héllo"}, {"d": {"a": "x"}, "l": ["p", 2], "s": "ab"}]),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' h') }}|{{ s.split() }}|{{ s.split('l') }}|{{ s.split('l', 1) }}|{{ s.startswith(' ') }}|{{ s.endswith(('o ', 'x')) }}|{{ s.upper() }}|{{ s.lower() }}|{{ s.replace('l', 'L') }}|{{ s.replace('l', '', 1) }}|{{ s.find('l') }}|{{ s.rfind('l') }}|{{ s.title() }}|{{ s.capitalize() }}|{{ '{} and {x}'.format(1, x=s) }}|{{ '-'.join(['a', 'b']) }}|{{ s.count('l') }}|{{ '42'.isdigit() }}", [{"s": " hello world "}, {"s": "ÉCOLE élève ß "}, {"s": ""}]),
    ("filters_text", "{{ s|trim }}|{{ s|upper }}|{{ s|lower }}|{{ s|capitalize }}|{{ s|title }}|{{ s|length }}|{{ s|count }}|{{ s|replace('a', 'A') }}|{{ s|trim('x ') }}|{{ s|wordcount }}|{{ s|center(20) }}|{{ s|indent(2) }}|{{ s|indent(2, true) }}|{{ s|indent(first=true, blank=true) }}|{{ s|reverse }}|{{ s|string }}|{{ s|safe }}|{{ s|first }}|{{ s|last }}|{{ s|e }}", [{"s": "  xa b-c(d) they're <b>&\n\nline two  "}, {"s": "élan"}, {"s": "x"}]),
    ("filters_collections", "{{ l|length }}|{{ l|first }}|{{ l|last }}|{{ l|join(', ') }}|{{ l|sort }}|{{ l|sort(reverse=true) }}|{{ l|unique|list }}|{{ l|reverse|list }}|{{ l|list }}|{{ l|min }}|{{ l|max }}|{{ l|sum }}|{{ l|select('odd')|list }}|{{ l|reject('even')|list }}|{{ l|map('string')|join }}|{{ l|batch(2)|list }}|{{ l|batch(3, 0)|list }}|{{ (l|select('gt', 2)|list)|length }}|{{ l|select|list }}", [{"l": [3, 1, 2, 3, 5]}, {"l": [0, 7]}]),
    ("filters_dicts_attrs", "{{ d|items|list }}|{{ d|dictsort }}|{{ d|dictsort(by='value', reverse=true) }}|{{ d|length }}|{{ d|list }}|{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}|{{ ms|rejectattr('role', 'eq', 'user')|list|length }}|{{ ms|map(attribute='role')|unique|list }}|{{ ms|sort(attribute='content')|map(attribute='content')|list }}|{{ ms|selectattr('name', 'defined')|list }}|{{ ms|map(attribute='name', default='?')|list }}|{{ ms|first|tojson }}|{{ ms|selectattr('role')|list|length }}", [{"d": {"b": 2, "a": 3, "C": 1}, "ms": MSGS}, {"d": {}, "ms": [user("z")]}]),
    ("filters_numbers", "{{ x|int }}|{{ x|float }}|{{ x|abs }}|{{ x|round }}|{{ x|round(1) }}|{{ x|round(0, 'floor') }}|{{ x|round(1, 'ceil') }}|{{ '42'|int }}|{{ '4.7'|int }}|{{ 'zz'|int(7) }}|{{ '2.5'|float }}|{{ 'q'|float }}|{{ x|string }}|{{ x is number }}|{{ x is integer }}|{{ x is float }}", [{"x": 2.5}, {"x": -3.45}, {"x": 7}, {"x": 0.125}]),
    ("defaults_undefined", "[{{ missing }}]|{{ missing|default('d') }}|{{ missing|d('d2') }}|{{ none|default('n') }}|{{ ''|default('e', true) }}|{{ missing is defined }}|{{ missing is undefined }}|{{ missing|length }}|{{ missing ~ 'x' }}|{% for i in missing %}never{% else %}empty{% endfor %}|{{ missing == missing }}|{{ 'a' in missing }}|{{ missing|list }}", [{}, {"missing": "here"}]),
    ("tests", "{% for v in vals %}{{ v is none }}{{ v is boolean }}{{ v is true }}{{ v is false }}{{ v is integer }}{{ v is float }}{{ v is number }}{{ v is string }}{{ v is mapping }}{{ v is iterable }}{{ v is sequence }}{{ v is callable }}{{ v is defined }};{% endfor %}|{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 2 is in [1, 2] }}{{ 2 is eq 2 }}{{ 2 is ne 2 }}{{ 2 is lt 3 }}{{ 2 is gt 3 }}{{ 3 is ge 3 }}{{ 3 is le 2 }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ none is sameas none }}{{ 'x' is not string }}{{ range is callable }}{{ 'upper' is filter }}{{ 'odd' is test }}", [{"vals": [None, True, False, 0, 1.5, "s", {"a": 1}, [1], []]}]),
    ("loops", "{% for m in ms %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.cycle('a', 'b') }}/{{ loop.previtem.content if loop.previtem is defined }}/{{ loop.nextitem.role if loop.nextitem is defined else '-' }};{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for c in 'héy' %}{{ c }}.{% endfor %}|{% for m in ms if m.role == 'user' %}{{ loop.index }}{{ m.content }}{% endfor %}|{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}|{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}|{% for x in [] %}x{% else %}none{% endfor %}|{% for i in range(2) %}{% for j in range(2) %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.index }}{% endfor %}|{{ range(3, 0, -1)|list }}", [{"ms": MSGS, "d": {"x": 1, "y": [2]}}, {"ms": [user("solo")], "d": {}}]),
    ("scoping_namespace", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}|{% set ns = namespace(n=0, last=none) %}{% for m in ms %}{% set ns.n = ns.n + 1 %}{% set ns.last = m.role %}{% endfor %}{{ ns.n }} {{ ns.last }}|{% if true %}{% set y = 'set-in-if' %}{% endif %}{{ y }}|{% set a, b = 1, 'two' %}{{ a }}{{ b }}|{% set blk %}  block {{ x }} {% endset %}[{{ blk }}]|{% set t | upper | trim %} up {% endset %}[{{ t }}]|{% set d = dict(k=1, j='v') %}{{ d }}|{% set ns2 = namespace(d) %}{{ ns2.k }}", [{"ms": MSGS}, {"ms": []}]),
    ("macros_calls_filters", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }}|{{ greet('B', '?') }}|{{ greet(punct='.', name='C') }}|{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ greet('D') }}{% endcall %}|{% macro row(x) %}[{{ x }}{{ top }}]{% endmacro %}{% set top = 'T' %}{{ row(1) }}|{% filter upper %}shout {{ 'this' }}{% endfilter %}|{% filter trim|replace(' ', '_') %}  a b c  {% endfilter %}|{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}|{% set j = joiner('+') %}{% for i in [1, 2, 3] %}{{ j() }}{{ i }}{% endfor %}", [{}]),
    ("tojson_variants", "{{ v|tojson }}|{{ v|tojson(indent=2) }}|{{ v|tojson(sort_keys=true) }}|{{ v|tojson(separators=(',', ':')) }}|{{ v|tojson(ensure_ascii=true) }}|{{ v|tojson(indent=0) }}", [{"v": {"b": [1, 2.0, None, True], "a": "é\"\\\n\u0001\u007f😀", "c": {}, "d": [], "e": -0.5e-7}}, {"v": "plain"}, {"v": [1e16, 123.456, 0.0001]}]),
    ("raise_and_errors", "{% if ms|length == 0 %}{{ raise_exception('No messages!') }}{% endif %}{% for m in ms %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Bad role: ' + m.role) }}{% endif %}{{ m.content }}{% endfor %}", [{"ms": MSGS}, {"ms": []}, {"ms": [system("s")]}]),
    ("runtime_errors", "{{ x.y.z }}", [{}, {"x": {"y": {"z": 1}}}, {"x": {"y": None}}, {"x": None}]),
    ("runtime_errors_2", "{{ a + b }}", [{"a": 1, "b": "s"}, {"a": "s", "b": "t"}, {"a": 1}, {"a": [1], "b": [2]}, {"a": None, "b": 1}]),
    ("strftime_and_globals", "{{ strftime_now('%Y')|length }}|{{ range(3)|list }}|{{ namespace(a=1).a }}|{{ dict(x=1)|tojson }}", [{}]),
    ("generation_tag", "{% for m in ms %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}", [{"ms": MSGS}]),
]

own.append(("lexer_edges", "line1\r\n  {% if a %}\r\n\tX{{ a }}  {% endif %}\r\n{{ a }} {% if a %}same-line{% endif %}\n  {#- trimmed -#}  \n\u3000 {% if a %}ideographic-space{% endif %}\n{%- raw -%}  {{ kept }}  {%- endraw -%}\n{{ {'a': {'b': 1}} }}{{ 'ok' if false }}|{{ 'ok' if true }}\n", [{"a": 1}, {"a": 0}]))
own.append(("lexer_edges_2", "{{ a }}\n{% for i in [1,2] -%}\n  [{{ i }}]\n{%- endfor %}\n{{ 'multi\nline' }}{{ \"dq\\\"\" }}{{ 'x' ~ '\\q\\101\\U0001F600' }}\n\n", [{"a": "A"}]))
own.append(("syntax_error", "{{ [x for] }}", [{}]))
own.append(("mutation_is_unsafe", "{% set l = [1] %}{{ l.append(2) }}{{ l }}", [{}]))
# Random contexts for the literals/filters templates: fixed seed, varied values.
def rand_value(depth=0):
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] if depth < 2 else [])
    k = rng.choice(kinds)
    if k == "int": return rng.randint(-1000, 1000)
    if k == "float": return round(rng.uniform(-100, 100), rng.randint(0, 6))
    if k == "str": return "".join(rng.choice("ab cé\n'\"\\{}%#😀") for _ in range(rng.randint(0, 8)))
    if k == "bool": return rng.random() < 0.5
    if k == "none": return None
    if k == "list": return [rand_value(depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": rand_value(depth + 1) for i in range(rng.randint(0, 4))}

random_printer = "{{ v }}|{{ v|tojson }}|{{ v|string|length }}|{{ v is string }}{{ v is mapping }}{{ v is number }}|{% if v %}T{% else %}F{% endif %}|{{ v|default('D', true) }}|{{ v|tojson(indent=1, sort_keys=true) }}"
own.append(("random_values", random_printer, [{"v": rand_value()} for _ in range(40)]))

suite = {"real_templates": REAL, "conversations": [
    {"name": c["name"], "context": conv_context(c, None, None), "bos_from_config": "bos_token" not in c}
    for c in conversations],
    "templates": [{"name": n, "source": s, "contexts": ctxs} for n, s, ctxs in own]}
with open(os.path.join(HERE, "suite.json"), "w", encoding="utf-8") as f:
    json.dump(suite, f, ensure_ascii=False, indent=1)
print(len(conversations), "conversations,", len(own), "templates,",
      sum(len(c) for _, _, c in own), "own contexts")
