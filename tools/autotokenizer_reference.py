#!/usr/bin/env python3
"""Reference ids and decoded text from transformers.AutoTokenizer: what users of vLLM and
SGLang get. Same input and output format as tools/tokenizer_reference.mjs.

usage: python3 tools/autotokenizer_reference.py [--tokenizers-library] <tokenizer_dir> <corpus.json> <out.json>

--tokenizers-library: use the Rust tokenizers library directly
(tokenizers.Tokenizer.from_file(dir/tokenizer.json)) instead of AutoTokenizer, and write only
the list of ids per string (add_special_tokens=True). Used for
data/qwen2_5_added_token_flags_tokenizers.json, on the file that
tests/tokenizer/added_token_flags_test.cpp writes (XY_KEEP_FLAGS_TOKENIZER=<dir> keeps it).

corpus.json: [{"text": s} | {"bytes_b64": b64}, ...]; bytes are read with
bytes.decode("utf-8", errors="replace"). out.json: [{"text", "ids", "ids_no_special",
"decoded", "decoded_skip"}, ...] in corpus order. Needs transformers (run on the GPU machine; not in CI). The
versions used are printed to stderr; record them with the committed output.
"""
import base64
import json
import sys


def read_text(entry):
    if "bytes_b64" in entry:
        return base64.b64decode(entry["bytes_b64"]).decode("utf-8", errors="replace")
    return entry["text"]


def main():
    args = sys.argv[1:]
    library = "--tokenizers-library" in args
    args = [a for a in args if a != "--tokenizers-library"]
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    tokenizer_dir, corpus_path, out_path = args
    import tokenizers
    if library:
        from tokenizers import Tokenizer
        print(f"tokenizers {tokenizers.__version__}", file=sys.stderr)
        tok = Tokenizer.from_file(tokenizer_dir + "/tokenizer.json")
        with open(corpus_path, encoding="utf-8") as f:
            corpus = json.load(f)
        ids = [tok.encode(read_text(e)).ids for e in corpus]
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(ids, f, separators=(",", ":"))
        return

    import transformers
    from transformers import AutoTokenizer

    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
          file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    print(f"class {type(tok).__name__}", file=sys.stderr)
    with open(corpus_path, encoding="utf-8") as f:
        corpus = json.load(f)
    out = []
    for entry in corpus:
        text = read_text(entry)
        ids = tok(text)["input_ids"]
        ids_plain = tok(text, add_special_tokens=False)["input_ids"]
        out.append({
            "text": text,
            "ids": ids,
            "ids_no_special": ids_plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    main()
