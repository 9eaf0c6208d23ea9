#!/usr/bin/env python3
"""Hugging Face transformers on an xyserve checkpoint: the reference point that `xyserve bench offline`
is compared with in the same run (issue 5; DESIGN.md, "Performance, measured").

Loads MODEL_DIR (e.g. `xyserve make-model --preset llama3-8b`) with AutoModelForCausalLM in bf16 on the
GPU with attn_implementation="sdpa", then measures output tokens/s of:
  generate_b1     `generate`, batch 1, 128 prompt / 128 output tokens
  generate_b64    `generate`, batch 64, same lengths
  generate_batch  transformers' continuous batching (`generate_batch`), 256 requests of 128 / 128
All greedy with EOS ignored: `generate` gets min_new_tokens = max_new_tokens; continuous batching
gets eos_token_id = -1 (its "disabled" value), and the tokens it really returned are counted.
Prompt ids are random (seeded). Every case runs once unmeasured first (`generate` with 8 new tokens;
continuous batching with 8 requests of the measured shape, keeping its manager, CUDA graphs and
cache for the measured call where this transformers version allows). Times are wall clock around
the call after torch.cuda.synchronize(). Prints a table; --json gets the figures, rewritten after
each case so a run cut short keeps what it measured. A case that fails is reported with its error
and the others still run.

  python3 tools/hf_generate_bench.py MODEL_DIR --json OUT [--seed 0] [--cases generate_b1,...]
"""
import argparse
import inspect
import json
import platform
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

PROMPT_LEN = 128
OUTPUT_LEN = 128
CASES = {"generate_b1": 1, "generate_b64": 64, "generate_batch": 256}  # name -> number of requests


def random_prompts(num, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num, PROMPT_LEN), generator=g)  # [num, PROMPT_LEN]


def load(model_dir):
    """The model in bf16 on the GPU with SDPA attention, and the seconds it took."""
    t0 = time.perf_counter()
    kwargs = dict(dtype=torch.bfloat16, attn_implementation="sdpa")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cuda", **kwargs)
    except (ImportError, ValueError, TypeError) as e:  # device_map needs accelerate on older versions
        print(f"hf_generate_bench: device_map='cuda' failed ({e}); loading on the CPU, then .to('cuda')",
              file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to("cuda")
    torch.cuda.synchronize()
    return model.eval(), time.perf_counter() - t0


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def eos_ids(model):
    eos = model.config.eos_token_id
    return eos if isinstance(eos, list) else [eos]


def bench_generate(model, batch, seed):
    """`generate` on `batch` prompts at once: all prompts have PROMPT_LEN tokens, so no padding."""
    ids = random_prompts(batch, model.config.vocab_size, seed).to("cuda")
    mask = torch.ones_like(ids)

    def run(new_tokens):
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=eos_ids(model)[0])

    with torch.inference_mode():
        run(8)  # warm-up: kernels, cuBLAS heuristics, allocator
        out, elapsed = timed(lambda: run(OUTPUT_LEN))
    output_tokens = (out.shape[1] - PROMPT_LEN) * batch  # out: [batch, PROMPT_LEN + new tokens]
    return {"requests": batch, "elapsed_s": elapsed, "output_tokens": int(output_tokens),
            "output_tokens_per_s": output_tokens / elapsed}


def generated_tokens(output):
    """The token ids a continuous-batching GenerationOutput carries (its field name moved between versions)."""
    for name in ("generated_tokens", "static_outputs"):
        tokens = getattr(output, name, None)
        if tokens is not None:
            return list(tokens)
    raise AttributeError(f"GenerationOutput has no generated_tokens/static_outputs: {sorted(vars(output))}")


def bench_generate_batch(model, num_requests, seed):
    """transformers' continuous batching on num_requests prompts submitted at once."""
    if not hasattr(model, "generate_batch"):
        raise RuntimeError(f"transformers {transformers.__version__} has no model.generate_batch "
                           "(continuous batching came in 4.54); no figure for this case")
    params = inspect.signature(model.generate_batch).parameters
    prompts = random_prompts(num_requests, model.config.vocab_size, seed).tolist()
    keeps_manager = "persistent_manager" in params

    def run(inputs, eos, keep):
        config = GenerationConfig(max_new_tokens=OUTPUT_LEN, do_sample=False, eos_token_id=eos,
                                  pad_token_id=eos_ids(model)[0])
        kwargs = {"generation_config": config}
        if "progress_bar" in params:
            kwargs["progress_bar"] = False
        if keep:
            kwargs["persistent_manager"] = True
        return model.generate_batch(inputs=inputs, **kwargs)

    # Warm-up with the measured shapes (the manager sizes its cache from the longest prompt and
    # output), kept for the measured call where the API allows. EOS off: -1 is continuous
    # batching's "disabled"; a version that rejects it gets None, which init_continuous_batching
    # turns into -1 (transformers 5.x).
    eos, warmup_error = -1, None
    try:
        _, warmup_s = timed(lambda: run(prompts[:8], eos, keeps_manager))
    except Exception as e:
        warmup_error, eos = f"{type(e).__name__}: {e}", None
        _, warmup_s = timed(lambda: run(prompts[:8], eos, keeps_manager))
    # A kept manager numbers requests on from the warm-up's (req_8, ...), but generate_batch
    # collects its results as req_0 ... req_{n-1} (transformers 5.x), so it would drop the first 8:
    # number from 0 again.
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    renumbered = manager is not None and hasattr(manager, "_request_counter")
    if renumbered:
        manager._request_counter = 0
    results, elapsed = timed(lambda: run(prompts, eos, False))
    if keeps_manager and hasattr(model, "destroy_cached_continuous_batching_manager"):
        model.destroy_cached_continuous_batching_manager()
    counts = [len(generated_tokens(r)) for r in results.values()]
    output_tokens = sum(counts)
    result = {"requests": num_requests, "elapsed_s": elapsed, "output_tokens": output_tokens,
              "output_tokens_per_s": output_tokens / elapsed, "warmup_s": warmup_s,
              "warm_manager_reused": manager is not None, "requests_renumbered": renumbered,
              "completed_requests": len(results), "eos_token_id": eos,
              "attn_implementation_used": getattr(model.config, "_attn_implementation", None)}
    if warmup_error:
        result["eos_minus_one_error"] = warmup_error
    if len(results) != num_requests or any(c != OUTPUT_LEN for c in counts):
        result["warning"] = (f"{len(results)} of {num_requests} requests returned, "
                             f"{min(counts, default=0)}-{max(counts, default=0)} tokens each (expected {OUTPUT_LEN})")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"hf_generate_bench: unknown case(s) {unknown}; known: {list(CASES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("hf_generate_bench: no CUDA device; this benchmark is for the GPU machine", file=sys.stderr)
        return 1

    report = {"model": args.model, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "prompt_len": PROMPT_LEN, "output_len": OUTPUT_LEN, "seed": args.seed, "cases": {}}

    def save():
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)

    model, report["load_s"] = load(args.model)
    report["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    save()
    print(f"{report['device']}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"loaded {args.model} in {report['load_s']:.1f} s", flush=True)
    print(f"{'case':<16} {'requests':>8} {'out tokens':>10} {'seconds':>8} {'out tok/s':>10}", flush=True)
    failed = False
    for name in cases:
        try:
            if name == "generate_batch":
                r = bench_generate_batch(model, CASES[name], args.seed)
            else:
                r = bench_generate(model, CASES[name], args.seed)
            print(f"{name:<16} {r['requests']:>8} {r['output_tokens']:>10} {r['elapsed_s']:>8.2f} "
                  f"{r['output_tokens_per_s']:>10.1f}" + (f"   warning: {r['warning']}" if "warning" in r else ""),
                  flush=True)
        except Exception as e:  # report and go on: one case must not lose the others
            r = {"error": f"{type(e).__name__}: {e}"}
            failed = True
            print(f"{name:<16} failed: {r['error']}", flush=True)
        report["cases"][name] = r
        save()
        torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
