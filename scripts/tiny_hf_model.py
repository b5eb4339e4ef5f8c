#!/usr/bin/env python3
"""Writes a small random Hugging Face checkpoint of one architecture, saved by transformers.

    tiny_hf_model.py {qwen2,qwen3,smollm3,mistral,llama,llama3-rope,linear-rope,llama-7b-layer}
        OUT_DIR TOKENIZER_DIR

The point is what transformers itself writes and computes: its config.json (transformers 5
writes `rope_parameters` instead of `rope_theta`), its tensor names, and the architecture's
details gptq-rs must reproduce — Qwen2's q/k/v biases (given random values; transformers
initialises them to zero) and rope_theta 1e6, Qwen3's RMSNorm of each query and key head (with
a head_dim that is not hidden_size / heads), SmolLM3's layers without rotary embeddings,
Mistral's sliding window (48 tokens, shorter than
the windows scripts/arch_check.sh evaluates), untied heads, Llama 3.1's and linear rotary
frequency scaling. `llama-7b-layer` is not small: one decoder layer shaped like Llama 2 7B's
(hidden 4096, MLP 11008, 32 heads) in bf16, for measuring time and memory at that scale
(docs/pipeline.md). Weights are drawn with a large
spread so that the logits, and any difference in them, are far from uniform. The tokenizer
files are copied from TOKENIZER_DIR (vocabulary 49152, SmolLM2's). Run it through
`scripts/hf_check.sh --python`, which provides the environment.
"""

import os
import shutil
import sys

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          SmolLM3Config, SmolLM3ForCausalLM)


def build(kind):
    common = dict(vocab_size=49152, hidden_size=128, intermediate_size=320, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  initializer_range=0.15, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, rope_theta=1e6, **common))
        for layer in model.model.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
        return model
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=True, rope_theta=1e6, head_dim=48,
                                            **common))
    if kind == "smollm3":
        # Layers 0 and 2 rotary, layer 1 not (transformers' default would drop every 4th).
        return SmolLM3ForCausalLM(SmolLM3Config(tie_word_embeddings=True, rope_theta=2e6,
                                                no_rope_layers=[1, 0, 1], pad_token_id=None,
                                                **common))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(tie_word_embeddings=False, sliding_window=48,
                                                **common))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, rope_theta=5e5, **common))
    if kind == "llama3-rope":
        # Llama 3.1's frequency scaling, with an original context of 64 tokens so that the
        # evaluated windows (128) reach all three of its frequency bands.
        rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, rope_parameters=rope, **common))
    if kind == "linear-rope":
        rope = {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}
        return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, rope_parameters=rope, **common))
    if kind == "llama-7b-layer":
        shape = dict(common, hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
                     num_attention_heads=32, num_key_value_heads=32, initializer_range=0.02)
        return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **shape)).to(torch.bfloat16)
    sys.exit(f"unknown architecture {kind!r}: qwen2, qwen3, smollm3, mistral, llama, llama3-rope, "
             "linear-rope or llama-7b-layer")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    kind, out, tokenizer_dir = sys.argv[1:]
    torch.manual_seed(0)
    model = build(kind)
    for name, param in model.named_parameters():
        if "norm" in name:  # RMSNorm weights away from 1
            torch.nn.init.normal_(param, mean=1.0, std=0.2)
    model.save_pretrained(out, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        src = os.path.join(tokenizer_dir, name)
        if os.path.exists(src):
            shutil.copy(src, out)
    print(f"{kind}: {type(model).__name__}, {sum(p.numel() for p in model.parameters())} "
          f"parameters, in {out}")


if __name__ == "__main__":
    main()
