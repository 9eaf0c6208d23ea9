#!/usr/bin/env python3
"""PyTorch SDPA baselines for bench/cuda/attention_bench (same cases, same counting rules).

Llama-3-8B heads (32 query, 8 KV, head_dim 128), bf16, contiguous KV. Backends FLASH_ATTENTION
and CUDNN_ATTENTION, each forced with torch.nn.attention.sdpa_kernel. GQA: enable_gqa=True where
the backend takes it, else KV heads expanded to 32 (the line says which; TB/s then counts the
expanded bytes the kernel really reads, and "KV8" the bytes of the 8 KV heads).
TFLOP/s: 4 * head_dim * query heads * pairs; a causal prefill of L counts L^2 / 2 pairs.
The hybrid step is two calls (4 prefill chunks of 1024 on 1024 cached, bottom-right causal;
128 decodes at 2k), timed together.
Run: python3 tools/attention_baseline.py [--iters N]
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D = 32, 8, 128


def timed(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / 1e3 / iters


def make_call(q, k, v, backend, **kw):
    """Returns (fn, mode): GQA natively when the backend accepts it, else expanded heads."""
    def native():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    try:
        native()
        return native, "gqa", k.numel() + v.numel()
    except Exception:
        ke = k.repeat_interleave(H // HKV, dim=1).contiguous()
        ve = v.repeat_interleave(H // HKV, dim=1).contiguous()

        def expanded():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, ke, ve, **kw)
        expanded()
        return expanded, "expanded", ke.numel() + ve.numel()


def rand(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    print(f"attention_baseline: torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"cudnn {torch.backends.cudnn.version()}", flush=True)
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]
    for L in (512, 2048, 8192):
        b = 16384 // L
        q, k, v = rand(b, H, L, D), rand(b, HKV, L, D), rand(b, HKV, L, D)
        flops = 4.0 * D * H * b * L * L / 2
        for name, be in backends:
            try:
                fn, mode, _ = make_call(q, k, v, be, is_causal=True)
                t = timed(fn, args.iters)
                print(f"prefill causal L={L} x{b:<6} sdpa-{name:<6} {mode:<8} {t*1e6:9.1f} us "
                      f"{flops/t/1e12:7.1f} TFLOP/s", flush=True)
            except Exception as e:  # a backend that cannot run the case says so and why
                print(f"prefill causal L={L} x{b} sdpa-{name}: unavailable ({str(e)[:120]})", flush=True)
        del q, k, v
    for b, ctx in ((64, 1024), (64, 4096), (256, 2048), (8, 32768)):
        q, k, v = rand(b, H, 1, D), rand(b, HKV, ctx, D), rand(b, HKV, ctx, D)
        kv8 = 2.0 * (k.numel() + v.numel())
        flops = 4.0 * D * H * b * ctx
        for name, be in backends:
            try:
                fn, mode, elems = make_call(q, k, v, be)
                t = timed(fn, args.iters)
                print(f"decode {b} x {ctx:<6} sdpa-{name:<6} {mode:<8} {t*1e6:9.1f} us "
                      f"{flops/t/1e12:7.1f} TFLOP/s  {2.0*elems/t/1e12:5.2f} TB/s read  "
                      f"{kv8/t/1e12:5.2f} TB/s KV8", flush=True)
            except Exception as e:
                print(f"decode {b} x {ctx} sdpa-{name}: unavailable ({str(e)[:120]})", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    # Hybrid: 4 chunks of 1024 queries on 1024 cached (keys 2048, bottom-right causal) + 128 decodes.
    from torch.nn.attention.bias import causal_lower_right
    qp, kp, vp = rand(4, H, 1024, D), rand(4, HKV, 2048, D), rand(4, HKV, 2048, D)
    qd, kd, vd = rand(128, H, 1, D), rand(128, HKV, 2048, D), rand(128, HKV, 2048, D)
    pairs = 4 * sum(1024 + j + 1 for j in range(1024)) + 128 * 2048
    flops = 4.0 * D * H * pairs
    for name, be in backends:
        try:
            mask = causal_lower_right(1024, 2048)
            fp, mp, _ = make_call(qp, kp, vp, be, attn_mask=mask)
            fd, md, _ = make_call(qd, kd, vd, be)
            t = timed(lambda: (fp(), fd()), args.iters)
            print(f"hybrid 4x1024@1024 + 128x2k sdpa-{name:<6} {mp}/{md} {t*1e6:9.1f} us "
                  f"{flops/t/1e12:7.1f} TFLOP/s", flush=True)
        except Exception as e:
            print(f"hybrid sdpa-{name}: unavailable ({str(e)[:120]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
