#!/usr/bin/env python3
"""Quantizes a model directory with GPTQModel on CPU, for reading back with `gptq eval`.

    gptqmodel_quantize.py MODEL_DIR OUT_DIR CALIB_JSON [--asym] [--act-order]

4 bits, group size 64, calibrated on the first 32 token-id windows of CALIB_JSON (the
`{"windows": [[...], ...]}` file of ../shared/data/calib) cut to 128 tokens. GPTQModel writes
checkpoint_format "gptq" (v1: zero points stored minus one) and, with act-order, a permuted
g_idx: the two things a reader of other tools' checkpoints most easily gets wrong. Run it
through `scripts/hf_check.sh --python`, which provides the environment.
"""

import argparse
import json
import os

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402
from gptqmodel import GPTQModel, QuantizeConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("calib")
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    args = ap.parse_args()
    args.model, args.out, args.calib = map(os.path.abspath, (args.model, args.out, args.calib))
    # GPTQModel writes a logs/ folder into the working directory: keep it beside the output.
    os.chdir(os.path.dirname(args.out))
    torch.set_num_threads(2)
    with open(args.calib) as f:
        windows = json.load(f)["windows"][:32]
    calib = [{"input_ids": torch.tensor([w[:128]]), "attention_mask": torch.ones(1, len(w[:128]), dtype=torch.long)}
             for w in windows]
    config = QuantizeConfig(bits=4, group_size=64, sym=not args.asym, desc_act=args.act_order)
    model = GPTQModel.load(args.model, config, device="cpu")
    model.quantize(calib, batch_size=1)
    model.save(args.out)
    print(f"GPTQModel checkpoint in {args.out}")


if __name__ == "__main__":
    main()
