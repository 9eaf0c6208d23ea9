#!/usr/bin/env python3
"""Trains xyserve's demo model: a byte-level BPE tokenizer and a small Llama on the Brown corpus.

Input: train.jsonl / val.jsonl from prepare_brown.py (one {"id", "text"} per document).
Output (OUT): model/ in Hugging Face layout (config.json, bf16 model.safetensors,
tokenizer.json, tokenizer_config.json with a chat template), loss.csv and loss.png (train and
validation loss against step), train.log, and eval.json with the transformers evaluation
(held-out perplexity in fp32 and bf16, greedy and sampled text) from evaluate_hf.py.

Each document is encoded as <|begin_of_text|> text <|end_of_text|>; the documents are
concatenated into one stream and training windows of --seq + 1 tokens are drawn at random
offsets. Validation uses the held-out documents' stream cut into consecutive windows. The
learning rate warms up, then follows a cosine to 10% whose progress is the larger of
step/--steps and elapsed/--time-budget-s, so the schedule completes whichever limit comes first.
The weights kept are those of the best validation loss (the corpus is small: a long run
overfits).

GPU run (device machine):  python3 tools/train_demo/train.py --data .carry/brown --out $OUT
CPU smoke test (Debian torch, no tokenizers/transformers):
  /usr/bin/python3 tools/train_demo/train.py --smoke --data .carry/brown --out /tmp/demo-smoke
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_model import LlamaLM, LlamaShape, hf_config, save_safetensors  # noqa: E402

kSpecialTokens = ["<|begin_of_text|>", "<|end_of_text|>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|end|>"]
kBos, kEos = 0, 1  # ids of the first two special tokens: the trainer numbers them first
kChatTemplate = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class Log:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


class ByteTokenizer:
    """Smoke-test stand-in for the BPE tokenizer: one id per byte after the special tokens."""
    vocab_size = len(kSpecialTokens) + 256

    def encode(self, text):
        return [len(kSpecialTokens) + b for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - len(kSpecialTokens) for i in ids if i >= len(kSpecialTokens)).decode(
            "utf-8", errors="replace")


class BpeTokenizer:
    """Byte-level BPE trained with Hugging Face `tokenizers` on the training documents."""

    def __init__(self, texts, vocab_size):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                      special_tokens=kSpecialTokens, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        for i, name in enumerate(kSpecialTokens):
            assert tok.token_to_id(name) == i, f"special token {name} got id {tok.token_to_id(name)}"
        # Encoding adds <|begin_of_text|> in front, as Llama 3's tokenizer does.
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", kBos)])
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)

    def save(self, model_dir, max_position):
        self.tok.save(os.path.join(model_dir, "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": kSpecialTokens[kBos],
            "eos_token": kSpecialTokens[kEos],
            "pad_token": kSpecialTokens[kEos],
            "model_max_length": max_position,
            "clean_up_tokenization_spaces": False,
            "chat_template": kChatTemplate,
        }
        with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")


def encode_stream(tokenizer, docs):
    ids = []
    for text in docs:
        ids.append(kBos)
        ids.extend(tokenizer.encode(text))
        ids.append(kEos)
    return torch.tensor(ids, dtype=torch.long)


def val_windows(stream, seq):
    """Consecutive windows [k, seq + 1]: every token after the first is predicted once."""
    count = (len(stream) - 1) // seq
    idx = torch.arange(count)[:, None] * seq + torch.arange(seq + 1)[None, :]
    return stream[idx]


@torch.no_grad()
def mean_loss(model, windows, batch, autocast_dtype, device):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch].to(device)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                               reduction="sum")
        total += loss.item()
        count += w[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step, elapsed, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = max((step - args.warmup) / max(1, args.steps - args.warmup),
                   elapsed / args.time_budget_s)
    progress = min(1.0, progress)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, train_stream, val_w, args, device, log):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt_kwargs = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), **opt_kwargs)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    data = train_stream.to(device)
    offsets = torch.arange(args.seq + 1, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    rows = []  # (step, tokens seen, train loss, val loss, lr, seconds)
    best = (float("inf"), -1, None)
    run_loss, run_count = 0.0, 0
    start = time.time()
    step = 0
    while step < args.steps:
        elapsed = time.time() - start
        if elapsed > args.time_budget_s:
            log(f"time budget of {args.time_budget_s}s reached at step {step}")
            break
        lr = lr_at(step, elapsed, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), device=device,
                               generator=gen)
        w = data[starts[:, None] + offsets[None, :]]
        with torch.autocast(device_type=device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.detach()
        run_count += 1
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            train_loss = (run_loss / run_count).item()
            run_loss, run_count = 0.0, 0
            val_loss = mean_loss(model, val_w, args.batch, autocast_dtype, device)
            seconds = time.time() - start
            rows.append((step, step * args.batch * args.seq, train_loss, val_loss, lr, seconds))
            mark = ""
            if val_loss < best[0]:
                best = (val_loss, step, {k: v.detach().to("cpu", copy=True)
                                         for k, v in model.state_dict().items()})
                mark = " *"
            log(f"step {step:6d}  train {train_loss:.4f}  val {val_loss:.4f}  "
                f"lr {lr:.2e}  {seconds:6.1f}s{mark}")
    log(f"trained {step} steps in {time.time() - start:.1f}s; best validation loss "
        f"{best[0]:.4f} at step {best[1]}")
    model.load_state_dict(best[2])
    return rows, best[1]


def write_curve(rows, best_step, out):
    with open(os.path.join(out, "loss.csv"), "w") as f:
        f.write("step,tokens,train_loss,val_loss,lr,seconds\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]},{r[2]:.5f},{r[3]:.5f},{r[4]:.6g},{r[5]:.2f}\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    steps = [r[0] for r in rows]
    ax.plot(steps, [r[2] for r in rows], label="train (running mean, dropout on)")
    ax.plot(steps, [r[3] for r in rows], label="validation (10 held-out documents)")
    ax.axvline(best_step, color="gray", linestyle=":", label=f"kept: step {best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("xyserve demo model on the Brown corpus")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"))
    return True


@torch.no_grad()
def greedy_text(model, tokenizer, prompt, n, device):
    model.eval()
    ids = [kBos] + tokenizer.encode(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids], device=device))[0, -1]
        ids.append(int(logits.argmax()))
    return tokenizer.decode(ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".carry/brown")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout", default="tests/data/demo/heldout.txt")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--seq", type=int, default=1024, help="training window = max_position")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--time-budget-s", type=float, default=200.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, byte tokenizer, tiny model: checks the script's logic only")
    args = ap.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.intermediate, args.seq = 64, 2, 96, 64
        args.batch, args.steps, args.warmup, args.eval_every = 4, 6, 2, 3
    os.makedirs(args.out, exist_ok=True)
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    log = Log(os.path.join(args.out, "train.log"))
    log("command:", " ".join(sys.argv))
    log(f"torch {torch.__version__}", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    train_docs = read_docs(os.path.join(args.data, "train.jsonl"))
    val_docs = read_docs(os.path.join(args.data, "val.jsonl"))
    if args.smoke:
        train_docs, val_docs = train_docs[:3], val_docs[:1]
    t0 = time.time()
    tokenizer = ByteTokenizer() if args.smoke else BpeTokenizer(train_docs, args.vocab)
    train_stream = encode_stream(tokenizer, train_docs)
    val_stream = encode_stream(tokenizer, val_docs)
    log(f"tokenizer: vocab {tokenizer.vocab_size}, {time.time() - t0:.1f}s; train "
        f"{len(train_docs)} docs {len(train_stream)} tokens "
        f"({sum(map(len, train_docs)) / len(train_stream):.2f} chars/token); "
        f"validation {len(val_docs)} docs {len(val_stream)} tokens")

    shape = LlamaShape(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden,
                       num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                       intermediate_size=args.intermediate, max_position=args.seq,
                       dropout=args.dropout)
    model = LlamaLM(shape).to(device)
    log(f"model: {model.num_parameters()} parameters, {shape}")
    val_w = val_windows(val_stream, args.seq)
    rows, best_step = train(model, train_stream, val_w, args, device, log)
    have_png = write_curve(rows, best_step, args.out)
    log("loss curve:", "loss.csv + loss.png" if have_png else "loss.csv (no matplotlib)")

    # Save in bf16, then score the saved (rounded) weights: that is what xyserve serves.
    model.eval()
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_safetensors(state, os.path.join(model_dir, "model.safetensors"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(hf_config(shape, kBos, kEos), f, indent=2)
        f.write("\n")
    if not args.smoke:
        tokenizer.save(model_dir, args.seq)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    figures = {"train_loss_final": rows[-1][2], "best_step": best_step,
               "parameters": model.num_parameters(), "train_tokens": len(train_stream),
               "val_tokens": len(val_stream), "seconds": rows[-1][5]}
    for name, dt in (("fp32", None), ("bf16_autocast", torch.bfloat16 if device.type == "cuda" else None)):
        loss = mean_loss(model, val_w, args.batch, dt, device)
        figures[f"val_loss_own_{name}"] = loss
        log(f"validation loss of the saved bf16 weights, own module, {name}: {loss:.4f} "
            f"(perplexity {math.exp(loss):.2f})")
    log("own module greedy:", repr(greedy_text(model, tokenizer, "The jury said", 30 if not args.smoke else 5, device)))
    if not args.smoke:
        # The model files are already saved: a failure here must not lose them.
        try:
            from evaluate_hf import evaluate
            figures.update(evaluate(model_dir, val_w, args.heldout, log))
        except Exception:  # noqa: BLE001 (report whatever broke, keep the run's outputs)
            import traceback
            log("transformers evaluation failed:\n" + traceback.format_exc())
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(figures, f, indent=2)
        f.write("\n")
    log("done")


if __name__ == "__main__":
    main()
