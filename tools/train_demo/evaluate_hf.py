"""Scores the saved demo model with Hugging Face transformers on the GPU, independently of the
module that trained it: held-out perplexity in fp32 and bf16, tokenizer and chat-template
loading, greedy and sampled text. Called by train.py after saving; also runnable alone:

  python3 tools/train_demo/evaluate_hf.py MODEL_DIR [--heldout tests/data/demo/heldout.txt]

Perplexity of a token sequence ids (ids[0] is <|begin_of_text|>) is exp of the mean negative
log-likelihood of ids[1:], each predicted from all the tokens before it, in one forward pass:
the definition the CI test (tests/demo/) applies to xyserve and to tools/torch_forward.py.
"""
import argparse
import math

import torch
import torch.nn.functional as F

kPrompts = ["The jury said", "In the morning", "He looked at her and", "The history of"]


def load(model_dir, dtype):
    from transformers import LlamaForCausalLM
    try:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except TypeError:  # transformers 4 spells it torch_dtype
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    return model.cuda().eval()


@torch.no_grad()
def nll(model, windows, batch=16):
    """Mean NLL over windows [k, n] (each row's tokens 1.. predicted from the row before them)."""
    if len(windows) == 0:
        return float("nan")
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch].cuda()
        logits = model(input_ids=w[:, :-1]).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += w[:, 1:].numel()
    return total / count


def evaluate(model_dir, val_windows, heldout_path, log):
    from transformers import AutoTokenizer
    import transformers
    log(f"transformers {transformers.__version__}: evaluating {model_dir}")
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001 (fall back to the plain fast tokenizer)
        from transformers import PreTrainedTokenizerFast
        log(f"AutoTokenizer failed ({e}); using PreTrainedTokenizerFast")
        tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    with open(heldout_path, encoding="utf-8") as f:
        heldout = f.read()
    ids = tok(heldout).input_ids
    if ids[0] != tok.bos_token_id:
        raise SystemExit(f"evaluate_hf.py: tokenizer did not add bos ({tok.bos_token}) in front")
    log(f"heldout text {heldout_path}: {len(heldout)} characters, {len(ids)} tokens")
    heldout_w = torch.tensor([ids])
    figures = {"heldout_tokens": len(ids)}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load(model_dir, dtype)
        val = nll(model, val_windows)
        held = nll(model, heldout_w)
        figures[f"hf_val_loss_{name}"] = val
        figures[f"hf_heldout_ppl_{name}"] = math.exp(held)
        log(f"transformers {name}: validation loss {val:.4f} (perplexity {math.exp(val):.3f}); "
            f"heldout.txt perplexity {math.exp(held):.4f} (loss {held:.6f})")
    model = load(model_dir, torch.float32)
    chat = tok.apply_chat_template([{"role": "user", "content": "Tell me about the jury."}],
                                   add_generation_prompt=True, tokenize=False)
    log("chat template renders:", repr(chat))
    samples = {}
    for prompt in kPrompts:
        enc = tok(prompt, return_tensors="pt").to("cuda")
        greedy = model.generate(**enc, max_new_tokens=40, do_sample=False)
        torch.manual_seed(1)
        sampled = model.generate(**enc, max_new_tokens=40, do_sample=True, temperature=0.8,
                                 top_k=0, top_p=1.0)
        g = tok.decode(greedy[0], skip_special_tokens=True)
        s = tok.decode(sampled[0], skip_special_tokens=True)
        samples[prompt] = {"greedy": g, "sampled_t0.8": s}
        log(f"greedy  {prompt!r}: {g!r}")
        log(f"sampled {prompt!r}: {s!r}")
    figures["samples"] = samples
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--heldout", default="tests/data/demo/heldout.txt")
    args = ap.parse_args()
    evaluate(args.model_dir, torch.empty(0, 2, dtype=torch.long), args.heldout, print)


if __name__ == "__main__":
    main()
