#!/usr/bin/env python3
"""Logits of a Hugging Face checkpoint (e.g. one `xyserve make-model` wrote) from transformers,
the independent reference for the CUDA backend (DESIGN.md, "Correctness, by reference").

Loads the directory with AutoModelForCausalLM in bf16 on the GPU (fp32 with --dtype float32 or on
a machine without one), runs one forward pass over the given token ids and writes the logits of
every position as JSON: {"model": DIR, "dtype": ..., "ids": [...], "logits": [[...], ...]}.

  python3 tools/hf_reference.py --model DIR --ids 1,2,3 [--out FILE] [--dtype bfloat16]
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--out", default="-", help="output JSON file; - for stdout")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = p.parse_args()

    ids = [int(x) for x in args.ids.split(",") if x]
    if not ids:
        print("hf_reference: --ids is empty", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device)).logits[0].float().cpu()
    result = {"model": args.model, "dtype": args.dtype, "device": device, "ids": ids,
              "logits": out.tolist()}
    if args.out == "-":
        json.dump(result, sys.stdout)
    else:
        with open(args.out, "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
