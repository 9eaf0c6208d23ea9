#!/usr/bin/env python3
"""Plots and tables of the CUDA kernel benchmarks for docs/PERFORMANCE.md, from their logs.

  plot_bench.py attention --ours attention_bench.log --baseline attention_baseline.log --out a.png
      one panel per case family (prefill TFLOP/s, decode TB/s of KV, hybrid/sweep time in us),
      one bar per kernel: ours (every kernel the bench ran) and PyTorch SDPA's backends.
  plot_bench.py gemm --csv gemm_bench.csv [--torch torch_linear.csv] --out g.png
      time against M per (model, layer), log-log: cuBLASLt, our best kernel (and launched with
      programmatic dependent launch, back to back, where the bench measured it), torch's F.linear
      with --torch (tools/torch_linear_bench.py's CSV, same method, best run in the same device
      call), and the best of cuBLASLt and ours (what a tuned table serves).
  plot_bench.py gemm-table --csv gemm_bench.csv [--torch torch_linear.csv] [--out-md t.md]
      the performance issue's table, as Markdown on stdout (and in --out-md): per (shape, M) our
      fastest kernel launched plainly (name, us, TB/s, TFLOP/s, % of copy bandwidth), cuBLASLt's
      us and cuBLASLt us / ours, torch's us and torch us / ours (--torch), our fastest "+pdl"
      figure (M <= 64) and cuBLASLt us / it; then a summary against each baseline, plain and with
      PDL where measured: geomean, min and max (where), points below 0.97x, geomeans per M range,
      qkv and o at M <= 64 (target 1.3x), gate_up and down's % of copy bandwidth at M <= 64
      (target 85%), the minimum at M >= 2048 (target 1.0x).
  In gemm and gemm-table, rows that do not parse and the gemv ablation's (names with "[") are
  left out, and so are our rows that disagree with cuBLASLt (max_scaled_diff_vs_cublas > 2e-2),
  as the bench leaves them out of its best.

attention and gemm run where matplotlib is (the GPU machine has it; Debian's python3-matplotlib
elsewhere); gemm-table needs only the standard library.
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


AGREE_BOUND = 2e-2  # gemm_bench's kAgreeBound: a kernel past it is not a candidate
M_RANGES = [(1, 16), (32, 64), (100, 512), (777, 1024), (2048, 8192)]
PDL_MAX_M = 64  # gemm_bench's kPdlMaxM


def _num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_gemm_rows(path):
    """gemm_bench's (or torch_linear_bench's) CSV rows that parse, as dicts; the gemv ablation's
    rows (names with "[") and rows without a finite time are left out."""
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            try:
                shape, m, us = (r["model"], r["layer"], int(r["n"]), int(r["k"])), int(r["m"]), float(r["us"])
            except (TypeError, ValueError, KeyError):
                continue
            kernel = r.get("kernel") or ""
            if "[" in kernel or not (math.isfinite(us) and us > 0):
                continue
            rows.append({"shape": shape, "m": m, "kernel": kernel, "us": us,
                         "tbps": _num(r.get("tbps")), "frac": _num(r.get("frac_copy_bw")),
                         "tflops": _num(r.get("tflops")), "diff": _num(r.get("max_scaled_diff_vs_cublas"))})
    return rows


def gemm_points(path, torch_path=None):
    """{shape: {m: {"lt", "ours", "pdl", "torch": best row or None}}} in the CSV's order: cuBLASLt,
    our fastest kernel launched plainly, our fastest "+pdl" figure, torch F.linear (kernel
    "torch_linear" of torch_path, only at (shape, M) that the gemm CSV has). Our rows that disagree
    with cuBLASLt (max_scaled_diff_vs_cublas > 2e-2, inf included) are not candidates, as in the bench."""
    points = collections.OrderedDict()

    def keep(point, slot, row):
        if point[slot] is None or row["us"] < point[slot]["us"]:
            point[slot] = row

    for r in read_gemm_rows(path):
        point = points.setdefault(r["shape"], {}).setdefault(r["m"], dict.fromkeys(("lt", "ours", "pdl", "torch")))
        if r["kernel"].startswith("cublaslt"):
            keep(point, "lt", r)
        elif r["diff"] is not None and r["diff"] > AGREE_BOUND:  # nan: not measured, kept
            continue
        elif r["kernel"].endswith("+pdl"):
            keep(point, "pdl", r)
        else:
            keep(point, "ours", r)
    if torch_path:
        for r in read_gemm_rows(torch_path):
            if r["kernel"] == "torch_linear" and r["m"] in points.get(r["shape"], {}):
                keep(points[r["shape"]][r["m"]], "torch", r)
    for shape in points:
        points[shape] = dict(sorted(points[shape].items()))
    return points


def shape_title(shape):
    model, layer, n, k = shape
    return f"{model} {layer} (N {n}, K {k})"


def plot_gemm(args, plt):
    points = gemm_points(args.csv, args.torch)
    if not points:
        sys.exit(f"plot_bench: no rows in {args.csv}")
    n = len(points)
    cols = 2
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(12, 3.6 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (shape, by_m) in zip(axes.flat, points.items()):
        def us_of(slot):
            return {m: p[slot]["us"] for m, p in by_m.items() if p[slot]}
        lt, ours = us_of("lt"), us_of("ours")
        both = {m: min(lt.get(m, math.inf), ours.get(m, math.inf)) for m in set(lt) | set(ours)}
        lines = [("cuBLASLt", lt, "o-"), ("ours (best kernel)", ours, "s--"),
                 ("ours, PDL back to back", us_of("pdl"), "^-.")]
        if args.torch:
            lines.append(("torch F.linear (cuBLAS)", us_of("torch"), "d-"))
        lines.append(("table (best of cuBLASLt and ours)", both, "k:"))
        for name, pts, style in lines:
            xs = sorted(pts)
            if not xs:
                continue
            ax.plot(xs, [pts[m] for m in xs], style, label=name, markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("us")
        ax.set_title(shape_title(shape), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(args.title or "SmoothGEMM: time against M")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)


def _ours_us(point, pdl):
    """Our time at a point: the plain launch, or with pdl the faster of it and "+pdl" where measured."""
    times = [point[s]["us"] for s in (("ours", "pdl") if pdl else ("ours",)) if point[s]]
    return min(times) if times else None


def _geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _where(shape, m):
    return f"{shape[0]} {shape[1]} M={m}"


def gemm_table(args):
    """The issue's table and its summary, as Markdown: printed, and written to --out-md if given."""
    points = gemm_points(args.csv, args.torch)
    if not points:
        sys.exit(f"plot_bench: no rows in {args.csv}")
    has_torch = any(p["torch"] for by_m in points.values() for p in by_m.values())
    has_pdl = any(p["pdl"] for by_m in points.values() for p in by_m.values())
    if args.torch and not has_torch:
        print(f"plot_bench: no torch_linear rows of {args.torch} match the shapes and M of {args.csv}", file=sys.stderr)
    f2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    ratio = lambda base, us: None if base is None or us is None else base / us  # noqa: E731
    out = [f"## SmoothGEMM against cuBLASLt{' and torch F.linear' if has_torch else ''}: {args.csv}", "",
           "ours: our fastest kernel launched plainly; ×X: X's us / ours (> 1: ours faster); %bw: bytes "
           "2(MK + NK + MN) per us against the run's copy bandwidth; +PDL: our fastest PDL-aware kernel "
           f"launched with programmatic dependent launch back to back (M <= {PDL_MAX_M})"
           + ("." if has_pdl else ": none in this CSV.")]
    head = ["layer", "M", "ours", "us", "TB/s", "TFLOP/s", "%bw", "cuBLASLt us", "×cuBLASLt"]
    if has_torch:
        head += ["torch us", "×torch"]
    if has_pdl:
        head += ["+PDL kernel", "+PDL us", "+PDL ×cuBLASLt"]
    by_model = collections.OrderedDict()
    for shape, by_m in points.items():
        by_model.setdefault(shape[0], []).append((shape, by_m))
    for model, shapes in by_model.items():
        out += ["", f"### {model}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for shape, by_m in shapes:
            for m, p in by_m.items():
                o, lt, t, pdl = p["ours"], p["lt"], p["torch"], p["pdl"]
                ous = o["us"] if o else None
                cells = [f"{shape[1]}", str(m), o["kernel"] if o else "-", f2(ous),
                         f2(o and o["tbps"]), "-" if not o or o["tflops"] is None else f"{o['tflops']:.1f}",
                         "-" if not o or o["frac"] is None else f"{100 * o['frac']:.0f}%",
                         f2(lt and lt["us"]), f2(ratio(lt and lt["us"], ous))]
                if has_torch:
                    cells += [f2(t and t["us"]), f2(ratio(t and t["us"], ous))]
                if has_pdl:
                    cells += [pdl["kernel"].removesuffix("+pdl") if pdl else "-", f2(pdl and pdl["us"]),
                              f2(ratio(lt and lt["us"], pdl and pdl["us"]))]
                out.append("| " + " | ".join(cells) + " |")

    # Summary: one column per (baseline, variant).
    columns = [(name, base, pdl) for name, base in (("cuBLASLt", "lt"), ("torch", "torch"))
               if base == "lt" or has_torch
               for name, pdl in ((name, False), (f"{name}, with PDL where measured (M <= {PDL_MAX_M})", True))
               if has_pdl or not pdl]

    def speedups(base, pdl, keep=lambda shape, m: True):
        res = []
        for shape, by_m in points.items():
            for m, p in by_m.items():
                us = _ours_us(p, pdl)
                if p[base] and us and keep(shape, m):
                    res.append((p[base]["us"] / us, shape, m))
        return res

    def gm(xs):
        return f2(_geomean([x for x, *_ in xs]))

    def extreme(xs, fn):
        if not xs:
            return "-"
        x, shape, m = fn(xs, key=lambda t: t[0])
        return f"{x:.2f} ({_where(shape, m)})"

    every = lambda shape, m: True  # noqa: E731
    small_qkv_o = lambda shape, m: m <= PDL_MAX_M and shape[1] in ("qkv", "o")  # noqa: E731
    rows = [("points", lambda s: str(len(s(every)))),
            ("geomean", lambda s: gm(s(every))),
            ("min", lambda s: extreme(s(every), min)),
            ("max", lambda s: extreme(s(every), max)),
            ("points below 0.97x", lambda s: str(sum(x < 0.97 for x, *_ in s(every))))]
    for lo, hi in M_RANGES:
        rows.append((f"geomean, M {lo}-{hi}", lambda s, lo=lo, hi=hi: gm(s(lambda shape, m: lo <= m <= hi))))
    rows += [(f"qkv, o at M <= {PDL_MAX_M}: min (target 1.30)", lambda s: extreme(s(small_qkv_o), min)),
             (f"qkv, o at M <= {PDL_MAX_M}: geomean (target 1.30)", lambda s: gm(s(small_qkv_o))),
             ("M >= 2048: min (target 1.00)", lambda s: extreme(s(lambda shape, m: m >= 2048), min))]
    out += ["", "### Summary", "", "speedup = baseline us / ours us" + ("; with PDL: ours = the faster of the plain "
            "and the +PDL launch where +PDL was measured." if has_pdl else "."), "",
            "| | " + " | ".join(f"vs {name}" for name, *_ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(fn(lambda keep, b=base, d=pdl: speedups(b, d, keep))
                                                 for _, base, pdl in columns) + " |")

    # Copy bandwidth on the weight-streaming shapes at small M.
    out += ["", f"gate_up, down at M <= {PDL_MAX_M}: % of copy bandwidth (target 85%), min / mean:"]
    for label, slots in (("plain", ("ours",)), ("with PDL where measured", ("ours", "pdl")))[:2 if has_pdl else 1]:
        fracs = []
        for shape, by_m in points.items():
            if shape[1] not in ("gate_up", "down"):
                continue
            for m, p in by_m.items():
                cand = [p[s] for s in slots if p[s] and p[s]["frac"] is not None and m <= PDL_MAX_M]
                if cand:
                    fracs.append((max(r["frac"] for r in cand), shape, m))
        if fracs:
            lo = min(fracs, key=lambda t: t[0])
            out.append(f"- {label}: {100 * lo[0]:.0f}% ({_where(lo[1], lo[2])}) / "
                       f"{100 * sum(x for x, *_ in fracs) / len(fracs):.0f}% over {len(fracs)} points")
        else:
            out.append(f"- {label}: no points")
    missing = [_where(shape, m) for shape, by_m in points.items() for m, p in by_m.items() if not p["ours"]]
    if missing:
        out += ["", f"no kernel of ours that agreed with cuBLASLt at {len(missing)} points: {', '.join(missing)}"]
    text = "\n".join(out) + "\n"
    print(text, end="")
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(text)
        print(f"plot_bench: wrote {args.out_md}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("attention")
    a.add_argument("--ours", required=True)
    a.add_argument("--baseline")
    a.add_argument("--skip", default="cuda-core", help="kernels to leave out, comma-separated")
    g = sub.add_parser("gemm")
    t = sub.add_parser("gemm-table")
    for s in (g, t):
        s.add_argument("--csv", required=True, help="gemm_bench's CSV")
        s.add_argument("--torch", help="tools/torch_linear_bench.py's CSV (kernel torch_linear)")
    t.add_argument("--out-md", help="also write the tables as Markdown to this file")
    for s in (a, g):
        s.add_argument("--out", required=True)
        s.add_argument("--title")
    args = p.parse_args()
    if args.what == "gemm-table":  # text only: no matplotlib
        gemm_table(args)
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    (plot_attention if args.what == "attention" else plot_gemm)(args, plt)
    print(f"plot_bench: wrote {args.out}")


if __name__ == "__main__":
    main()
