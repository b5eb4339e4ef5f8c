#!/usr/bin/env python3
"""Perplexity of a checkpoint directory under Hugging Face transformers on CPU.

    hf_perplexity.py --model DIR --text FILE [--seqlen 512] [--windows 40]

A plain checkpoint loads in float32. A GPTQ checkpoint (config.json has `quantization_config`)
loads through GPTQModel's torch kernel: `GPTQConfig(bits=<from config>, backend="torch")`.
The whole text file is tokenized once without special tokens, cut into consecutive
non-overlapping windows of `seqlen` tokens, and the first `windows` are scored: each window adds
the NLL of its tokens 1..seqlen-1 given the preceding ones (logits in float32).
perplexity = exp(mean token NLL). The last line printed is `perplexity <value>`.
Run it through scripts/hf_check.sh, which sets up the environment.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def log(msg):
    print(msg, flush=True)


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # a directory with tokenizer.json but no tokenizer_config.json
        log(f"AutoTokenizer failed ({exc!r}); using tokenizer.json directly")
        return PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))


def load_model(model_dir):
    from transformers import AutoModelForCausalLM

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    qcfg = config.get("quantization_config")
    kwargs = {"dtype": torch.float32, "device_map": "cpu", "low_cpu_mem_usage": True}
    if qcfg is not None:
        from transformers import GPTQConfig

        bits = int(qcfg.get("bits", 4))
        log(f"GPTQ checkpoint: quantization_config = {json.dumps(qcfg, sort_keys=True)}")
        log(f"loading with GPTQConfig(bits={bits}, backend='torch'), "
            f"GPTQMODEL_CPU_WORKERS={os.environ.get('GPTQMODEL_CPU_WORKERS')}")
        kwargs["quantization_config"] = GPTQConfig(bits=bits, backend="torch")
    else:
        log("plain checkpoint: loading in float32")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except TypeError:  # older transformers spell it torch_dtype
        kwargs["torch_dtype"] = kwargs.pop("dtype")
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    return model, qcfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--text", required=True, help="text file to score")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40, help="number of windows scored (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tokenizer = load_tokenizer(args.model)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.long)
    t_tok = time.perf_counter()
    available = ids.numel() // args.seqlen
    n = available if args.windows <= 0 else min(args.windows, available)
    if n == 0:
        sys.exit(f"text has {ids.numel()} tokens, fewer than one window of {args.seqlen}")
    log(f"tokens {ids.numel()} ({t_tok - t_start:.1f} s), windows {n} of {args.seqlen} "
        f"({available} available)")

    model, _ = load_model(args.model)
    t_load = time.perf_counter()
    log(f"model {type(model).__name__} loaded in {t_load - t_tok:.1f} s")

    total_nll = 0.0
    total_tokens = 0
    with torch.inference_mode():
        for i in range(n):
            window = ids[i * args.seqlen:(i + 1) * args.seqlen].unsqueeze(0)
            logits = model(input_ids=window, use_cache=False).logits[0].float()
            nll = F.cross_entropy(logits[:-1], window[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += args.seqlen - 1
            del logits
            if (i + 1) % 10 == 0 or i + 1 == n:
                log(f"window {i + 1}/{n}: running perplexity {math.exp(total_nll / total_tokens):.4f}")
    t_eval = time.perf_counter()
    log(f"eval {t_eval - t_load:.1f} s ({(t_eval - t_load) / n:.2f} s/window), total {t_eval - t_start:.1f} s")
    log(f"mean_nll {total_nll / total_tokens:.6f} tokens {total_tokens}")
    print(f"perplexity {math.exp(total_nll / total_tokens):.4f}", flush=True)


if __name__ == "__main__":
    main()
