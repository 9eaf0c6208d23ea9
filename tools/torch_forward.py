#!/usr/bin/python3
"""Independent PyTorch reference forward for Hugging Face decoder checkpoints.

Reads a model directory (config.json + model.safetensors or a sharded index) of a Llama,
Qwen2, Qwen3 or Mistral model and a list of token ids, and prints JSON:
  {"logits": [[vocab floats] for every position], "greedy": [N token ids]}
The greedy continuation is computed by full recompute (no KV cache): each new token is the
argmax (lowest id on ties) of the last position's logits over the whole sequence so far.

Written from the model definitions in transformers (modeling_llama / qwen2 / qwen3 / mistral)
and their configs' documented fields, for Debian's python3-torch 1.13 on the CPU: no
safetensors package (the header is parsed here) and no scaled_dot_product_attention (attention
is written out). Computes in float64 by default, so it is a reference for the fp32 engine.

With --perplexity the logits are left out and the JSON carries instead
  "perplexity": exp(mean NLL of tokens[1:], each predicted from the tokens before it),
  "mean_nll" and "num_predicted" (computed in the forward's dtype; log-softmax per row).

usage: /usr/bin/python3 tools/torch_forward.py --model DIR --tokens 1,2,3 [--greedy N]
           [--perplexity]
       --tokens-file PATH reads the comma-separated ids from a file instead (long sequences).
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}


def read_safetensors(path):
    """Returns {name: tensor} for one .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        raw = bytearray(data[base + begin:base + end])  # writable copy: frombuffer wants one
        t = torch.frombuffer(raw, dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return weights


def inv_freq_for(cfg, head_dim):
    """transformers' ROPE_INIT_FUNCTIONS: default, linear and llama3, in float64."""
    # transformers v5 moves both into "rope_parameters"; v4 has them at the top level.
    params = cfg.get("rope_parameters") or {}
    base = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaling = params if "rope_type" in params else (cfg.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, out)
    raise SystemExit(f"torch_forward.py: unsupported rope_scaling type {kind!r}")


def layer_windows(cfg, num_layers):
    """The sliding window of each layer in tokens, or None for full attention."""
    model_type = cfg.get("model_type", "")
    window = cfg.get("sliding_window")
    if model_type == "mistral":
        return [window] * num_layers
    if model_type in ("qwen2", "qwen3"):
        if not cfg.get("use_sliding_window", False):
            return [None] * num_layers
        types = cfg.get("layer_types")
        if types is not None:
            return [window if t == "sliding_attention" else None for t in types]
        max_window_layers = cfg.get("max_window_layers", num_layers)
        return [window if i >= max_window_layers else None for i in range(num_layers)]
    return [None] * num_layers


def rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Model:
    def __init__(self, model_dir, dtype):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.dtype = dtype
        w = {k: v.to(dtype) for k, v in load_weights(model_dir).items()}
        self.w = w
        self.hidden = cfg["hidden_size"]
        self.num_layers = cfg["num_hidden_layers"]
        self.num_heads = cfg["num_attention_heads"]
        self.num_kv_heads = cfg.get("num_key_value_heads") or self.num_heads
        self.head_dim = cfg.get("head_dim") or self.hidden // self.num_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.inv_freq = inv_freq_for(cfg, self.head_dim)
        self.windows = layer_windows(cfg, self.num_layers)
        self.embed = w["model.embed_tokens.weight"]
        if "lm_head.weight" in w:
            self.lm_head = w["lm_head.weight"]
        elif cfg.get("tie_word_embeddings", False):
            self.lm_head = self.embed
        else:
            raise SystemExit("torch_forward.py: lm_head.weight missing and embeddings not tied")

    def linear(self, x, prefix):
        y = x @ self.w[prefix + ".weight"].T
        bias = self.w.get(prefix + ".bias")
        return y if bias is None else y + bias

    def attention(self, x, i, cos, sin):
        p = f"model.layers.{i}.self_attn."
        n = x.shape[0]
        q = self.linear(x, p + "q_proj").view(n, self.num_heads, self.head_dim)
        k = self.linear(x, p + "k_proj").view(n, self.num_kv_heads, self.head_dim)
        v = self.linear(x, p + "v_proj").view(n, self.num_kv_heads, self.head_dim)
        if p + "q_norm.weight" in self.w:  # Qwen3: per-head RMSNorm before RoPE
            q = rms_norm(q, self.w[p + "q_norm.weight"], self.eps)
            k = rms_norm(k, self.w[p + "k_norm.weight"], self.eps)
        q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
        # GQA: query head h reads KV head h // (num_heads / num_kv_heads).
        rep = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.head_dim)
        pos = torch.arange(n)
        visible = pos[None, :] <= pos[:, None]  # [query, key]
        window = self.windows[i]
        if window is not None:
            visible &= pos[None, :] > pos[:, None] - window
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, self.num_heads * self.head_dim)
        return self.linear(out, p + "o_proj")

    def mlp(self, x, i):
        p = f"model.layers.{i}.mlp."
        gate = self.linear(x, p + "gate_proj")
        return self.linear(torch.nn.functional.silu(gate) * self.linear(x, p + "up_proj"), p + "down_proj")

    def forward(self, tokens):
        """Logits [len(tokens), vocab] for a sequence starting at position 0."""
        ids = torch.tensor(tokens, dtype=torch.long)
        x = self.embed[ids]
        angles = torch.arange(len(tokens), dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(self.dtype), angles.sin().to(self.dtype)
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(rms_norm(x, self.w[p + "input_layernorm.weight"], self.eps), i, cos, sin)
            x = x + self.mlp(rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps), i)
        x = rms_norm(x, self.w["model.norm.weight"], self.eps)
        return x @ self.lm_head.T


def argmax_lowest(row):
    best = row.max()
    return int(torch.nonzero(row == best)[0, 0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", help="comma-separated token ids")
    source.add_argument("--tokens-file", help="file holding comma-separated token ids")
    ap.add_argument("--greedy", type=int, default=0, help="greedy tokens to generate")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--perplexity", action="store_true",
                    help="print the perplexity of the tokens instead of their logits")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = Model(args.model, getattr(torch, args.dtype))
    text = args.tokens
    if args.tokens_file is not None:
        with open(args.tokens_file) as f:
            text = f.read()
    tokens = [int(t) for t in text.split(",") if t.strip()]
    logits = model.forward(tokens)
    seq = list(tokens)
    greedy = []
    for step in range(args.greedy):
        last = logits[-1] if step == 0 else model.forward(seq)[-1]
        nxt = argmax_lowest(last)
        greedy.append(nxt)
        seq.append(nxt)
    result = {"greedy": greedy}
    if args.perplexity:
        if len(tokens) < 2:
            raise SystemExit("torch_forward.py: --perplexity needs at least 2 tokens")
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(tokens[1:], dtype=torch.long)
        nll = -log_probs.gather(1, targets[:, None]).mean()
        result.update({"perplexity": math.exp(float(nll)), "mean_nll": float(nll),
                       "num_predicted": len(tokens) - 1})
    else:
        result["logits"] = logits.tolist()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
