#!/usr/bin/env bash
# Usage: scripts/arch_check.sh [OUT_DIR [ARCH...]]   (default target/arch-check, all of them)
#
# Checks gptq-rs against Hugging Face transformers on each architecture it supports, on small
# random models that transformers itself builds and saves (scripts/tiny_hf_model.py): Qwen2
# (q/k/v biases, rope_theta 1e6), Qwen3 (per-head query and key RMSNorm), SmolLM3 (a layer
# without rotary embeddings), Mistral (48-token sliding window), Llama (rope_theta 5e5),
# and Llama with Llama 3.1's and with linear rotary scaling (full precision and one checkpoint).
# For each: perplexity of the full-precision model, then of 4-bit g64 checkpoints written by
# `gptq quantize` (symmetric v1, asymmetric v2, symmetric with act-order), by `gptq eval` and by
# transformers (GPTQModel's torch kernel), on the same 20 windows of 128 tokens of WikiText-2;
# last, a checkpoint quantized by GPTQModel itself (v1, asymmetric, act-order), read by both.
# Fails unless every pair agrees within 0.1%. The models are random, so their perplexities are
# huge; what is compared is the arithmetic and the checkpoint format, not quality.
#
# Needs ../shared (calibration ids, evaluation text, and the SmolLM2 tokenizer); sets up the
# Python environment of scripts/hf_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/arch-check}
shift || true
only=("$@")
shared=../shared
text=$shared/data/wikitext2/wikitext2-test-joined.txt
calib=$shared/data/calib/smollm2-wikivalid-128x512.json
smollm2=${GPTQ_SMOLLM2_HF:-target/tmp/smollm2-hf}
windows=(--seqlen 128 --windows 20)

cargo build --release -p gptq-cli >/dev/null
"$shared/tools/smollm2-hf" "$smollm2" >/dev/null
gptq=target/release/gptq
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
failed=0

ppl_ours() { "$gptq" eval --model "$1" --text "$text" "${windows[@]}" 2>/dev/null | awk '/^perplexity/ {print $2}'; }
ppl_hf() { scripts/hf_check.sh --model "$1" --text "$text" "${windows[@]}" 2>/dev/null | awk '/^perplexity/ {print $2}'; }

compare() {
  local name=$1 dir=$2 ours hf verdict
  ours=$(ppl_ours "$dir")
  hf=$(ppl_hf "$dir")
  if python3 -c "import sys; a, b = float('$ours'), float('$hf'); sys.exit(0 if abs(a - b) <= 1e-3 * b else 1)"; then
    verdict=ok
  else
    verdict=DIFFERENT
    failed=1
  fi
  printf '%-32s gptq eval %14s  transformers %14s  %s\n' "$name" "$ours" "$hf" "$verdict" | tee -a "$summary"
}

# Full precision, then checkpoints written by gptq with these flags (4 bits, group 64).
check_arch() {
  local arch=$1; shift
  local model=$out/$arch flags name dir
  rm -rf "$model"
  scripts/hf_check.sh --python scripts/tiny_hf_model.py "$arch" "$model" "$smollm2" 2>/dev/null
  compare "$arch full precision" "$model"
  for flags in "$@"; do
    name="$arch w4g64 ${flags//--/}"
    dir=$out/$arch-w4g64-${flags//[- ]/}
    # shellcheck disable=SC2086  # flags is a list of words
    "$gptq" quantize --model "$model" --calib "$calib" --out "$dir" --overwrite --bits 4 \
      --group-size 64 $flags --nsamples 32 --seqlen 128 >"$dir.log" 2>&1
    compare "$name" "$dir"
  done
}

# A checkpoint GPTQModel wrote, read back by gptq.
check_gptqmodel() {
  local arch=$1 dir=$out/$1-gptqmodel-w4g64-asym-actorder
  rm -rf "$dir"
  scripts/hf_check.sh --python scripts/gptqmodel_quantize.py "$out/$arch" "$dir" "$calib" \
    --asym --act-order >"$dir.log" 2>&1
  compare "$arch GPTQModel asym act-order" "$dir"
}

wanted() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }

for arch in qwen2 qwen3 smollm3 mistral llama; do
  wanted "$arch" || continue
  check_arch "$arch" "--sym" "--asym" "--sym --act-order"
  check_gptqmodel "$arch"
done
# Rotary frequency scaling (Llama 3.1's, and linear): the forward pass is what differs.
for arch in llama3-rope linear-rope; do
  wanted "$arch" || continue
  check_arch "$arch" "--sym"
done
exit $failed
