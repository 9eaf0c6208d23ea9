#!/usr/bin/env python3
"""Plots of the CUDA kernel benchmarks for docs/PERFORMANCE.md (PNG), from their logs.

  plot_bench.py attention --ours attention_bench.log --baseline attention_baseline.log --out a.png
      one panel per case family (prefill TFLOP/s, decode TB/s of KV, hybrid/sweep time in us),
      one bar per kernel: ours (every kernel the bench ran) and PyTorch SDPA's backends.
  plot_bench.py gemm --csv gemm_bench.csv --out g.png
      time against M per (model, layer), log-log: cuBLASLt, our best kernel (and launched with
      programmatic dependent launch, back to back, where the bench measured it), and the best of
      cuBLASLt and ours (what a tuned table serves).

Runs where matplotlib is (the GPU machine has it; Debian's python3-matplotlib elsewhere).
"""
import argparse
import collections
import csv
import math
import re
import sys

# "<case>  <kernel>  ...  <t> us  <f> TFLOP/s  [<b> TB/s ...]": case names hold single spaces,
# fields are separated by two or more.
LINE = re.compile(r"^(?P<case>\S.*?)\s{2,}(?P<kernel>\S+)\s.*?(?P<us>[\d.]+) us\s+(?P<tflops>[\d.]+) TFLOP/s"
                  r"(?:\s+(?P<tbps>[\d.]+) TB/s)?")


def read_attention(path, skip=()):
    rows, seen = [], set()
    with open(path) as f:
        for line in f:
            m = LINE.match(line.rstrip())
            if not m:
                continue
            case = " ".join(m["case"].split())
            kernel = m["kernel"]
            if case.split()[-1].startswith("sdpa-"):  # the baseline's hybrid lines have one space
                case, kernel = case.rsplit(" ", 1)
            # The bench prints several variants of one kernel (split sizes, launch modes) after the
            # kernel name; keep what tells them apart.
            extra = re.search(r"split\s+(\d+)", line)
            mode = re.search(r"\[(.+?)\]", line)
            label = kernel + (f" split {extra[1]}" if extra else "") + (f" [{mode[1]}]" if mode else "")
            if kernel == "decode":  # its first line per case is at its own split rule; the rest sweep splits
                label = "decode (its split rule)"
            if kernel in skip or (case, label) in seen:
                continue
            seen.add((case, label))
            rows.append((case, label, float(m["us"]), float(m["tflops"]),
                         float(m["tbps"]) if m["tbps"] else None))
    return rows


def plot_attention(args, plt):
    skip = set(args.skip.split(",")) if args.skip else set()
    rows = read_attention(args.ours, skip) + (read_attention(args.baseline, skip) if args.baseline else [])
    if not rows:
        sys.exit(f"plot_bench: no benchmark lines in {args.ours}")
    families = collections.OrderedDict()
    for case, label, us, tflops, tbps in rows:
        family = case.split()[0]
        if family == "decode":
            value, unit = tbps, "TB/s of KV read"
        elif family == "prefill":
            value, unit = tflops, "TFLOP/s"
        else:
            value, unit = us, "us (lower is better)"
        if value is None:
            continue
        families.setdefault(family, (unit, collections.OrderedDict()))[1].setdefault(case, {})[label] = value
    all_labels = sorted({label for _, label, *_ in rows})  # one colour per kernel across panels
    fig, axes = plt.subplots(len(families), 1, figsize=(13, 4.2 * len(families)), squeeze=False)
    for ax, (family, (unit, cases)) in zip(axes[:, 0], families.items()):
        labels = sorted({l for per in cases.values() for l in per})
        colors = {l: plt.cm.tab20(i % 20) for i, l in enumerate(all_labels)}
        width = 0.8 / max(len(labels), 1)
        for i, label in enumerate(labels):
            xs = [j + i * width for j, per in enumerate(cases.values()) if label in per]
            ys = [per[label] for per in cases.values() if label in per]
            ax.bar(xs, ys, width, label=label, color=colors[label])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels(list(cases), rotation=12, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(family)
        ax.legend(fontsize=7, ncol=3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(args.title or "attention kernels")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)


def plot_gemm(args, plt):
    series = collections.defaultdict(lambda: collections.defaultdict(dict))
    with open(args.csv) as f:
        for r in csv.DictReader(f):
            try:  # the gemv ablation's rows carry other columns: only the sweep's rows plot
                m, us = int(r["m"]), float(r["us"])
            except (TypeError, ValueError):
                continue
            shape = f"{r['model']} {r['layer']} (N {r['n']}, K {r['k']})"
            kernel = r["kernel"]
            if "[" in kernel:  # the gemv ablation's launch shapes: not candidates of the table
                continue
            who = "cuBLASLt" if kernel.startswith("cublaslt") else "ours + PDL" if kernel.endswith("+pdl") else "ours"
            best = series[shape][who]
            best[m] = min(best.get(m, math.inf), us)
    if not series:
        sys.exit(f"plot_bench: no rows in {args.csv}")
    n = len(series)
    cols = 2
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(12, 3.6 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (shape, by) in zip(axes.flat, series.items()):
        ms = sorted(set(by["cuBLASLt"]) | set(by["ours"]))
        both = {m: min(by["cuBLASLt"].get(m, math.inf), by["ours"].get(m, math.inf)) for m in ms}
        for name, pts, style in (("cuBLASLt", by["cuBLASLt"], "o-"), ("ours (best kernel)", by["ours"], "s--"),
                                 ("ours, PDL back to back", by["ours + PDL"], "^-."),
                                 ("table (best of cuBLASLt and ours)", both, "k:")):
            xs = [m for m in ms if m in pts and pts[m] < math.inf]
            ax.plot(xs, [pts[m] for m in xs], style, label=name, markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("us")
        ax.set_title(shape, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(args.title or "SmoothGEMM: time against M")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("attention")
    a.add_argument("--ours", required=True)
    a.add_argument("--baseline")
    a.add_argument("--skip", default="cuda-core", help="kernels to leave out, comma-separated")
    g = sub.add_parser("gemm")
    g.add_argument("--csv", required=True)
    for s in (a, g):
        s.add_argument("--out", required=True)
        s.add_argument("--title")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    (plot_attention if args.what == "attention" else plot_gemm)(args, plt)
    print(f"plot_bench: wrote {args.out}")


if __name__ == "__main__":
    main()
