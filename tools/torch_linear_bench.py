#!/usr/bin/env python3
"""torch's F.linear on the GEMM shapes of bench/cuda/gemm_bench, timed by gemm_bench's method.

Why: the performance issue states its baseline as "cuBLAS through torch's F.linear"; gemm_bench
compares against cuBLASLt called directly. This script measures the former, in the same device
call as gemm_bench, so that a report can give both ratios (tools/plot_bench.py gemm-table --torch).

What: y = F.linear(x, w), bf16, no bias; x [M, K], w [N, K] row-major (as Hugging Face stores a
Linear's weight), for Llama-3-8B and Qwen3-8B's qkv, o, gate_up and down, over M (default: the
sweep's 21 values, 1 to 8192). torch is left with the defaults a user gets (TF32, reduced-precision
bf16 reduction, preferred BLAS library: printed at the start, never changed).

What is timed: torch.mm(x, w.t(), out=y). For a 2-D input and no bias, F.linear is
at::matmul(x, w.t()) (aten/src/ATen/native/Linear.cpp), which for two 2-D operands is at::mm, the
same call (addmm_out_cuda_impl -> at::cuda::blas::gemm -> cuBLAS, w.t() passed as a transpose
flag, no copy); out= lets every launch write its own rotating output, with no allocation during
graph capture. Each (shape, M) checks once that F.linear(x, w) equals that mm bit for bit (column
"=lin"; "NO" there would mean the timed call is not F.linear's).

Method (gemm_bench's): per shape, S = max(2, ceil(200 MiB / weight bytes)) buffer sets of x
[maxM, K], w [N, K], y [maxM, N], so that no launch finds its operands in the 60 MB L2 from the
previous one (at most ~1.6 GB per shape at M = 8192); x ~ U(-1, 1), w ~ U(-0.05, 0.05). Per M:
one untimed launch, one probe launch timed with events, then a CUDA graph of `iters` launches
(iters = 3 ms / probe, within [8, 400]) rotating over the sets, one warm-up replay, 7 timed
replays: median / iters. Bytes = 2 (MK + NK + MN), TB/s = bytes / us * 1e-6, TFLOP/s = 2MNK / us
* 1e-6; frac_copy_bw against the copy bandwidth (1 GiB device-to-device, read + write bytes, the
larger of cudaMemcpyAsync and an elementwise kernel, as gemm_bench), or --copy-tbps to reuse
gemm_bench's figure of the same run. Correctness, once per (shape, M): max |y - ref| / (|ref| + 1)
on 4 rows against an fp64 reference (printed; "MISMATCH" past 2e-2).

Output: a table on stdout as it goes; a CSV (--csv) with gemm_bench's header, kernel
"torch_linear"; cublas_us, speedup_vs_cublas and max_scaled_diff_vs_cublas are "nan".

Run (GPU machine, repo root):
  python3 tools/torch_linear_bench.py [--ms 1,8,64,4096] [--models llama3-8b] [--csv torch_linear.csv]
      [--copy-tbps 3.91]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

SHAPES = [  # model, layer, N, K: gemm_bench's kShapes
    ("llama3-8b", "qkv", 6144, 4096), ("llama3-8b", "o", 4096, 4096),
    ("llama3-8b", "gate_up", 28672, 4096), ("llama3-8b", "down", 4096, 14336),
    ("qwen3-8b", "qkv", 6144, 4096), ("qwen3-8b", "o", 4096, 4096),
    ("qwen3-8b", "gate_up", 24576, 4096), ("qwen3-8b", "down", 4096, 12288),
]
MS = [1, 2, 4, 8, 16, 32, 33, 64, 100, 128, 192, 256, 257, 384, 512, 777, 1024, 2048, 3000, 4096, 8192]
REPS = 7
ROTATE_BYTES = 200 << 20  # > 3x the 60 MB L2
AGREE_BOUND = 2e-2
HEADER = "model,layer,m,n,k,kernel,us,tbps,frac_copy_bw,tflops,cublas_us,speedup_vs_cublas,max_scaled_diff_vs_cublas"


def time_us(stream, sets, launch):
    """Median time of one launch(set) in us: gemm_bench's time_us and graph_replay_us."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        launch(0)  # untimed: cuBLAS handle and workspace for this stream, module loads
        stream.synchronize()
        start.record()
        launch(1 % sets)
        stop.record()
        stop.synchronize()
        probe_ms = start.elapsed_time(stop)
    iters = min(max(int(3.0 / max(probe_ms, 1e-3)), 8), 400)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(iters):
            launch(i % sets)
    times = []
    with torch.cuda.stream(stream):
        graph.replay()  # warm-up replay
        for _ in range(REPS):
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            times.append(1e3 * start.elapsed_time(stop))
    graph.reset()
    times.sort()
    return times[len(times) // 2] / iters, iters


def copy_bandwidth_tbps(stream):
    nbytes = 1 << 30
    a = torch.ones(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    memcpy_us, _ = time_us(stream, 1, lambda _: b.copy_(a))  # same dtype, contiguous: cudaMemcpyAsync
    kernel_us, _ = time_us(stream, 1, lambda _: torch.neg(a, out=b))  # elementwise kernel, same bytes
    print(f"copy: cudaMemcpyAsync {2 * nbytes / memcpy_us * 1e-6:.2f} TB/s, elementwise kernel "
          f"{2 * nbytes / kernel_us * 1e-6:.2f} TB/s (read + write)")
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / min(memcpy_us, kernel_us) * 1e-6


def flag(get):
    """A torch setting for the log, or '?' where this version lacks or refuses it."""
    try:
        return get()
    except Exception:  # noqa: BLE001 - only printed
        return "?"


def scaled_diff_vs_fp64(x, w, y, m, n):
    """max |y - ref| / (|ref| + 1) over 4 rows of y[:m] (NaN counts as inf)."""
    rows = sorted({0, m // 3, (2 * m) // 3, m - 1})
    xr = x[rows].double()
    ref = torch.empty(len(rows), n, dtype=torch.float64, device=x.device)
    for n0 in range(0, n, 4096):  # bounded fp64 copies of w
        ref[:, n0:n0 + 4096] = xr @ w[n0:n0 + 4096].double().t()
    d = (y[rows].double() - ref).abs() / (ref.abs() + 1)
    return torch.nan_to_num(d, nan=math.inf).max().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ms", default=",".join(map(str, MS)), help="comma-separated M list")
    p.add_argument("--models", default="llama3-8b,qwen3-8b")
    p.add_argument("--csv", default="torch_linear.csv")
    p.add_argument("--copy-tbps", type=float, help="copy bandwidth to use (e.g. gemm_bench's); default: measure")
    args = p.parse_args()
    ms = sorted({int(v) for v in args.ms.split(",") if v.strip()})
    models = set(args.models.split(","))
    shapes = [s for s in SHAPES if s[0] in models]
    if not ms or min(ms) < 1 or not shapes:
        sys.exit("torch_linear_bench: need M >= 1 and a model among llama3-8b,qwen3-8b")
    if not torch.cuda.is_available():
        sys.exit("torch_linear_bench: no CUDA device")

    mm = torch.backends.cuda.matmul
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name()}")
    print(f"torch defaults, left as they are: allow_bf16_reduced_precision_reduction="
          f"{flag(lambda: mm.allow_bf16_reduced_precision_reduction)}, allow_tf32={flag(lambda: mm.allow_tf32)}, "
          f"preferred_blas_library={flag(lambda: torch.backends.cuda.preferred_blas_library())}; env TORCH_BLAS_PREFER_CUBLASLT="
          f"{os.environ.get('TORCH_BLAS_PREFER_CUBLASLT', '-')}, CUBLAS_WORKSPACE_CONFIG="
          f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG', '-')}")
    stream = torch.cuda.Stream()
    copy_tbps = args.copy_tbps or copy_bandwidth_tbps(stream)
    print(f"copy bandwidth (read + write) used for %bw: {copy_tbps:.2f} TB/s"
          f"{' (given)' if args.copy_tbps else ''}")
    print(f"timing: CUDA graph replays, median of {REPS}; operands rotate over >= {ROTATE_BYTES >> 20} MiB of "
          "weights; timed call torch.mm(x, w.t(), out=y) (= F.linear without bias)")

    max_m = max(ms)
    torch.manual_seed(0)
    out = open(args.csv, "w")
    out.write(HEADER + "\n")
    print(f"{'model':9} {'layer':7} {'M':>5} | {'us':>9} {'TB/s':>6} {'%bw':>5} {'TFLOP/s':>7} | {'iters':>5} "
          f"{'sets':>4} | {'diff fp64':>9} {'=lin':>4}")
    for model, layer, n, k in shapes:
        sets = max(2, -(-ROTATE_BYTES // (2 * n * k)))
        xs = [torch.empty(max_m, k, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1) for _ in range(sets)]
        ws = [torch.empty(n, k, dtype=torch.bfloat16, device="cuda").uniform_(-0.05, 0.05) for _ in range(sets)]
        ys = [torch.empty(max_m, n, dtype=torch.bfloat16, device="cuda") for _ in range(sets)]
        torch.cuda.synchronize()  # filled on the default stream; timed on `stream`
        for m in ms:
            nbytes = 2.0 * (m * k + n * k + m * n)
            flops = 2.0 * m * n * k

            def launch(s):
                torch.mm(xs[s][:m], ws[s].t(), out=ys[s][:m])

            us, iters = time_us(stream, sets, launch)
            # Correctness and the F.linear identity, on set 0, outside any graph.
            with torch.cuda.stream(stream):
                ys[0][:m].fill_(float("nan"))
                launch(0)
                diff = scaled_diff_vs_fp64(xs[0], ws[0], ys[0], m, n)
                same = torch.equal(F.linear(xs[0][:m], ws[0]), ys[0][:m])
            stream.synchronize()
            line = (f"{model:9} {layer:7} {m:5d} | {us:9.2f} {nbytes / us * 1e-6:6.2f} "
                    f"{100 * nbytes / us * 1e-6 / copy_tbps:4.0f}% {flops / us * 1e-6:7.1f} | {iters:5d} {sets:4d} | "
                    f"{diff:9.2e} {'yes' if same else 'NO':>4}")
            if not diff <= AGREE_BOUND:
                line += "  MISMATCH"
            print(line, flush=True)
            out.write(f"{model},{layer},{m},{n},{k},torch_linear,{us:.3f},{nbytes / us * 1e-6:.4f},"
                      f"{nbytes / us * 1e-6 / copy_tbps:.4f},{flops / us * 1e-6:.2f},nan,nan,nan\n")
            out.flush()
        del xs, ws, ys
        torch.cuda.empty_cache()
    out.close()
    print(f"torch_linear_bench: wrote {args.csv}")


if __name__ == "__main__":
    main()
