#!/usr/bin/python3
"""Writes corpus.json: the strings every tokenizer parity test encodes.

Deterministic (fixed seed); run `/usr/bin/python3 tests/tokenizer/data/make_corpus.py` to
regenerate. Entries are {"text": str} or, for byte strings that are not valid UTF-8,
{"bytes_b64": str}; a reference reads those as bytes.decode("utf-8", errors="replace").
"""
import base64
import json
import os
import random

rng = random.Random(20261125)

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.",
    "She said, \"I'll be there at 5 o'clock,\" but she didn't show up until half past six.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong's first words were broadcast worldwide.",
    "The committee's report, released on Tuesday, recommends a 3.5% increase in funding.",
    "Dr. Smith (who'd been working late) noticed the anomaly at 2:47 a.m. and called the lab.",
    "We're not sure whether they've finished, but we'll find out soon enough.",
    "HELLO WORLD! THIS IS SHOUTING. DON'T YOU THINK IT'S TOO LOUD? IT'S JOHN'S.",
    "Well... that's one way to put it -- though I'd argue otherwise; wouldn't you?",
    "Mr. O'Neil's dog's bone was buried under the neighbours' oak tree.",
    "E-mail me at john.doe@example.com or visit https://example.org/path?query=1&x=y#frag.",
    "The temperature dropped to -40 degrees, where Celsius and Fahrenheit agree.",
    "Tokenization is the process of splitting text into smaller units called tokens.",
    "Large language models predict the next token given all the previous ones.",
    "A paragraph break follows.\n\nAnd a new paragraph begins here, after two newlines.",
    "Lists:\n- first item\n- second item\n  - nested item\n* starred item",
    "Price: $1,299.99 (was $1,499.00) -- save 13%!",
    "The year 2024 had 366 days; 2023 had 365.",
    "i'm lowercase and i'd like it that way, y'all.",
]

CODE = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import numpy as np\n\nx = np.arange(10, dtype=np.float32)\nprint(x.mean(), x.std())\n",
    "class Node:\n\tdef __init__(self, value):\n\t\tself.value = value\n\t\tself.next = None\n",
    "#include <vector>\n\nint main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return 0;\n}\n",
    "template <class T>\nT max_of(const T& a, const T& b) { return a < b ? b : a; }\n",
    "{\"name\": \"xyserve\", \"version\": \"0.1.0\", \"tags\": [\"llm\", \"serving\"], \"gpu\": true, \"n\": null}",
    "{\n  \"model\": \"llama\",\n  \"max_tokens\": 128,\n  \"temperature\": 0.7\n}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "if (x != nullptr && x->size() > 0) { return x->at(0); } // check first",
    "for i in range(100):\n    if i % 15 == 0: print('FizzBuzz')\n    elif i % 3 == 0: print('Fizz')\n",
    "const f = async (a, b) => { await sleep(10); return a ?? b; };",
    "x<<=2; y>>=3; z**=4; a||=b; c&&=d; e!==f; g===h; i=>j;",
    "    \n\t\t  \r\n  indented\r\n\r\n\tcode  \n",
]

CJK = [
    "我爱自然语言处理。今天天气很好，我们去公园散步吧！",
    "人工智能正在改变世界，大型语言模型是其中的重要技术。",
    "東京は日本の首都です。私は毎朝コーヒーを飲みます。",
    "ひらがなとカタカナと漢字が混ざった文章です。",
    "안녕하세요. 저는 학생입니다. 한국어를 공부하고 있어요.",
    "中文，English混合，以及数字123和符号！？",
    "「こんにちは」と彼は言った。『本当に？』",
]

OTHER_SCRIPTS = [
    "مرحبا بالعالم! كيف حالك اليوم؟ أنا بخير، شكرا.",
    "اللغة العربية تكتب من اليمين إلى اليسار ٠١٢٣٤٥٦٧٨٩",
    "नमस्ते दुनिया! आप कैसे हैं? मैं ठीक हूँ। १२३४",
    "हिन्दी देवनागरी लिपि में लिखी जाती है।",
    "Привет, мир! Как дела? Всё хорошо.",
    "Γειά σου Κόσμε! Αλφα βήτα γάμμα.",
    "שלום עולם! מה שלומך?",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "Xin chào thế giới! Tiếng Việt có nhiều dấu.",
    "Ça va? Où est la bibliothèque? Straße, Größe, naïve café, façade, résumé.",
]

EMOJI = [
    "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🇺🇸🇯🇵🇫🇷", "1️⃣", "❤️", "🧑‍🤝‍🧑",
    "😀😃😄😁", "🤖 robots 🤖", "🦀🐍☕", "🫠🫶🏼",
]

COMBINING = [
    "e\u0301", "A\u030a", "n\u0303", "o\u0308", "u\u0308ber", "cafe\u0301", "Cre\u0300me bru\u0302le\u0301e",
    "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "a\u0301\u0302\u0303\u0304",
    "\u0041\u030a\u0301", "i\u0307", "\u0915\u093c", "\u00e9 vs e\u0301", "\u212b", "\u2126",
]

SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    "<|endoftext|>", "<s>", "</s>", "<unk>", "<|start_header_id|>", "<|end_header_id|>",
    "<tool_call>", "</tool_call>", "<think>", "</think>", "<|fim_prefix|>", "<|im_start",
    "<|im_end", "<s", "</s", "<|", "|>",
]

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u0085",
              "\u200b", "\ufeff", "\u2003", "\x0b", "\x0c", "\x1c"]

CONTRACTIONS = ["it's", "IT'S", "I'll", "I'LL", "don't", "DON'T", "we've", "WE'VE", "you're",
                "YOU'RE", "I'm", "I'M", "he'd", "HE'D", "John's", "JOHN'S", "'s", "'S", "'ll",
                "'LL", "o'clock", "rock'n'roll", "'tis"]

WORDS = ("the of and to in is was for on that with as by at from his her it be are this "
         "an not which have one had or but their were all they she there been has when who "
         "more will would if no out so said what up its about into than them can only other "
         "new some time could these two may then do first any my now such like our over man "
         "me even most made after also did many before must through back years where much your "
         "way well down should because each just those people how too little state good very "
         "make world still own see men work long get here between both life being under never "
         "day same another know while last might us great old year off come since against go "
         "came right used take three").split()


def number():
    n = rng.randint(1, 30)
    digits = "".join(rng.choice("0123456789") for _ in range(n))
    form = rng.randrange(6)
    if form == 0:
        return digits
    if form == 1:
        return "-" + digits
    if form == 2:
        return digits + "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    if form == 3:
        return f"{int(digits):,}"
    if form == 4:
        return "0x" + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(rng.randint(1, 16)))
    return digits + rng.choice(["%", "px", "th", "st", "k", "e10", "E-5"])


def random_prose():
    n = rng.randint(3, 40)
    words = [rng.choice(WORDS) for _ in range(n)]
    for i in range(len(words)):
        r = rng.random()
        if r < 0.08:
            words[i] = words[i].capitalize()
        elif r < 0.1:
            words[i] = words[i].upper()
        elif r < 0.13:
            words[i] += rng.choice([",", ";", ":", ".", "!", "?"])
        elif r < 0.15:
            words[i] = rng.choice(CONTRACTIONS)
        elif r < 0.17:
            words[i] = number()
    return " ".join(words).capitalize() + rng.choice([".", "!", "?", "", "\n"])


def random_whitespace_run():
    return "".join(rng.choice(WHITESPACE[:6]) for _ in range(rng.randint(1, 40)))


def random_codepoints():
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
              (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2190, 0x23ff),
              (0x3040, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xfe00, 0xfe0f),
              (0xff00, 0xffef), (0x1f300, 0x1faff), (0x20000, 0x2a6df), (0x300, 0x36f)]
    out = []
    for _ in range(rng.randint(1, 30)):
        lo, hi = rng.choice(blocks)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def random_bytes():
    """Byte strings that are mostly not valid UTF-8."""
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    pieces = []
    for _ in range(rng.randint(1, 8)):
        r = rng.randrange(8)
        if r == 0:
            pieces.append(b"\xff")
        elif r == 1:
            pieces.append("中".encode()[: rng.randint(1, 2)])  # truncated 3-byte char
        elif r == 2:
            pieces.append("😀".encode()[: rng.randint(1, 3)])  # truncated 4-byte char
        elif r == 3:
            pieces.append(b"\xed\xa0\x80")  # encoded surrogate
        elif r == 4:
            pieces.append(b"\xc0\xaf")  # overlong
        elif r == 5:
            pieces.append(b"\x80\x80")  # stray continuations
        elif r == 6:
            pieces.append(b"\xf4\x90\x80\x80")  # above U+10FFFF
        else:
            pieces.append(random_prose().encode())
    return b"".join(pieces)


def fragment():
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice(PROSE)
    if kind == 1:
        return rng.choice(CODE)
    if kind == 2:
        return rng.choice(CJK)
    if kind == 3:
        return rng.choice(OTHER_SCRIPTS)
    if kind == 4:
        return rng.choice(EMOJI)
    if kind == 5:
        return rng.choice(COMBINING)
    if kind == 6:
        return rng.choice(SPECIALS)
    if kind == 7:
        return random_whitespace_run()
    if kind == 8:
        return number()
    if kind == 9:
        return rng.choice(CONTRACTIONS)
    if kind == 10:
        return random_codepoints()
    return random_prose()


def main():
    entries = [""]
    fixed = PROSE + CODE + CJK + OTHER_SCRIPTS + EMOJI + COMBINING + SPECIALS + WHITESPACE + CONTRACTIONS
    entries += fixed
    # Whitespace runs of every length 1..64 alone, leading, trailing and inside text.
    for n in range(1, 65):
        entries.append(" " * n)
        entries.append(" " * n + "leading spaces")
        entries.append("trailing spaces" + " " * n)
        entries.append("a" + " " * n + "b")
    entries += ["\t" * n + "x" for n in range(1, 9)] + ["\n" * n for n in range(1, 9)]
    entries += ["\r\n" * n + "line" for n in range(1, 6)]
    # Numbers of every length.
    entries += ["1234567890123456789012345678901234567890"[:n] for n in range(1, 41)]
    # Special tokens glued to and spaced from text.
    for s in SPECIALS:
        entries += [f"{s}hello", f"hello{s}", f" {s} ", f"x {s}y", f"{s}{s}", f"{s}\n{s}"]
    entries.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n")
    entries.append("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>")
    entries.append("<s>[INST] What is 2+2? [/INST] 4</s><s>[INST] And 3+3? [/INST]")
    entries.append("<unk> <pad> <unk>text")
    for _ in range(400):
        entries.append(random_prose())
    for _ in range(200):
        entries.append(number() + " " + number())
    for _ in range(200):
        entries.append(random_codepoints())
    for _ in range(700):
        entries.append("".join(fragment() for _ in range(rng.randint(1, 6))))
    byte_entries = [random_bytes() for _ in range(150)]
    # A long document: ~20 KB of mixed text, so that long-input code paths are exercised.
    entries.append("".join(fragment() for _ in range(300)))

    out = [{"text": e} for e in entries]
    for b in byte_entries:
        try:
            out.append({"text": b.decode("utf-8")})
        except UnicodeDecodeError:
            out.append({"bytes_b64": base64.b64encode(b).decode()})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"wrote {len(out)} entries to {path}")


if __name__ == "__main__":
    main()
