#!/usr/bin/env python3
"""Rewrites a SmoothGEMM table (`xyserve tune`'s JSON) so that every bucket up to --max-m runs a
given kernel: --square for shapes with n == k (o_proj), --other for the rest (qkv, gate_up, down).
For experiments that compare a hand-picked choice with the tuner's, e.g. the kernels that won
gemm_bench's decode-layer chain but lose the tuner's isolated timing:

  tools/gemm_table_override.py TABLE.json OUT.json --max-m 8 --square gemv_t8 --other stream_t16_n64
  cuda_decode_bench --gemm both --gemm-table OUT.json ...
"""
import argparse
import json

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("table")
p.add_argument("out")
p.add_argument("--max-m", type=int, required=True)
p.add_argument("--square", required=True, help="candidate id for n == k")
p.add_argument("--other", required=True, help="candidate id for the other shapes")
args = p.parse_args()
with open(args.table) as f:
    table = json.load(f)
for shape in table["shapes"]:
    pick = args.square if shape["n"] == shape["k"] else args.other
    for bucket in shape["buckets"]:
        if bucket["max_m"] <= args.max_m:
            bucket["candidate"] = pick
            bucket.pop("us", None)  # no longer what was measured for this candidate
with open(args.out, "w") as f:
    json.dump(table, f)
print(f"gemm_table_override: wrote {args.out}")
