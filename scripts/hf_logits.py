#!/usr/bin/env python3
"""Logits of a GPTQ checkpoint under transformers, against its full-precision model's.

    hf_logits.py --fp DIR --gptq DIR --windows FILE.json [--count 2]

For checkpoints of random models (scripts/scale_bench.sh), whose perplexity means nothing:
loads the full-precision model in float32, then the GPTQ checkpoint through GPTQModel's torch
kernel (`GPTQConfig(bits=..., backend="torch")`), runs the first `count` token-id windows of
FILE.json ({"windows": [[...], ...]}, as `gptq quantize --calib` and `gptq eval --text` take)
through both and prints, per window and over all: each model's perplexity, the cosine
similarity and relative RMS difference of the two models' logits, and how often their top-1
predictions agree. A checkpoint that loads wrong (codes, zeros or scales misread, a tensor
missing) gives logits unrelated to the full-precision ones. The GPTQ line's perplexity is the
one to compare with `gptq eval --model DIR --text FILE.json --windows COUNT`.
Run it through scripts/hf_check.sh --python, which sets up the environment.
"""

import argparse
import gc
import json
import math
import os
import sys
import time

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_perplexity import load_model  # noqa: E402


def log(msg):
    print(msg, flush=True)


def run_windows(model_dir, windows):
    """Logits (float32) of every window, and the model's NLL per window."""
    t = time.perf_counter()
    model, _ = load_model(model_dir)
    log(f"{model_dir}: {type(model).__name__} loaded in {time.perf_counter() - t:.1f} s")
    logits, nlls = [], []
    with torch.inference_mode():
        for window in windows:
            ids = torch.tensor(window, dtype=torch.long).unsqueeze(0)
            out = model(input_ids=ids, use_cache=False).logits[0].float()
            nlls.append(float(F.cross_entropy(out[:-1], ids[0, 1:], reduction="mean")))
            logits.append(out)
    del model
    gc.collect()
    return logits, nlls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp", required=True, help="full-precision checkpoint directory")
    ap.add_argument("--gptq", required=True, help="GPTQ checkpoint directory of the same model")
    ap.add_argument("--windows", required=True, help="token-id windows (.json)")
    ap.add_argument("--count", type=int, default=2, help="windows to run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.windows) as f:
        windows = json.load(f)["windows"][: args.count]
    if not windows:
        sys.exit(f"{args.windows} holds no windows")
    fp_logits, fp_nll = run_windows(args.fp, windows)
    q_logits, q_nll = run_windows(args.gptq, windows)

    cos_all, rel_all, agree_all, tokens = 0.0, 0.0, 0, 0
    for i, (a, b) in enumerate(zip(fp_logits, q_logits)):
        cos = float(F.cosine_similarity(a, b, dim=-1).mean())
        rel = float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
        agree = int((a.argmax(-1) == b.argmax(-1)).sum())
        log(f"window {i}: perplexity fp {math.exp(fp_nll[i]):.4f} gptq {math.exp(q_nll[i]):.4f}; "
            f"logits cosine {cos:.5f}, relative RMS difference {rel:.5f}, "
            f"top-1 agreement {agree}/{a.shape[0]}")
        cos_all += cos * a.shape[0]
        rel_all += rel * a.shape[0]
        agree_all += agree
        tokens += a.shape[0]
    mean = lambda xs: math.exp(sum(xs) / len(xs))  # noqa: E731 (windows of equal length)
    log(f"all {len(windows)} windows: logits cosine {cos_all / tokens:.5f}, relative RMS "
        f"difference {rel_all / tokens:.5f}, top-1 agreement {agree_all}/{tokens} "
        f"({100 * agree_all / tokens:.1f}%)")
    log(f"fp perplexity {mean(fp_nll):.4f}")
    print(f"gptq perplexity {mean(q_nll):.4f}", flush=True)


if __name__ == "__main__":
    main()
