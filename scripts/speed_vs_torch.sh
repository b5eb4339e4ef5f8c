#!/usr/bin/env bash
# End-to-end time of the pipeline issue's 3-bit run (SmolLM2-135M, 128 x 512 calibration tokens,
# 3-bit, group 128, asymmetric; true-sequential unless asked otherwise), gptq-rs against
# scripts/torch_gptq.py (the same algorithm in PyTorch, organised as the reference
# implementation), one after the other on this machine, each followed by its perplexity on the
# first 40 windows of WikiText-2 test.
# Usage: scripts/speed_vs_torch.sh [--no-true-sequential] [OUT_DIR]
#   --no-true-sequential  PyTorch quantizes a layer's seven linears against the inputs of its
#                         full-precision forward pass (the reference implementation's default);
#                         gptq-rs runs that way and then in its default true-sequential order
# gptq-rs runs last twice more true-sequential, with `--products bf16 --hessian bf16` and with
# `--products int8 --hessian bf16`.
# (needs ../shared; sets up the Python environment of scripts/hf_check.sh if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
order=()
if [[ ${1:-} == --no-true-sequential ]]; then
  order=(--no-true-sequential)
  shift
fi
out=${1:-target/speed-vs-torch${order:+-no-true-sequential}}
mkdir -p "$out"
shared=../shared
model=${GPTQ_SMOLLM2_HF:-target/tmp/smollm2-hf}
calib=$shared/data/calib/smollm2-wikivalid-128x512.json
text=$shared/data/wikitext2/wikitext2-test-joined.txt
venv=${GPTQ_HF_VENV:-$HOME/.cache/gptq-hf-venv}
cargo build --release -p gptq-cli >/dev/null
"$shared/tools/smollm2-hf" "$model" >/dev/null
if [[ ! -x $venv/bin/python ]]; then
  # hf_check.sh builds the environment before it runs anything; --help then exits at once.
  scripts/hf_check.sh --help >/dev/null
fi

echo "== PyTorch (scripts/torch_gptq.py, $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "threads", 2)'))"
start=$SECONDS
"$venv/bin/python" scripts/torch_gptq.py pipeline --model "$model" --calib "$calib" \
  --bits 3 --group-size 128 --asym --text "$text" --windows 40 --threads 2 "${order[@]}" 2>/dev/null \
  | tee "$out/torch.log" | grep -v '^layer'
echo "torch wall time $((SECONDS - start)) s (quantize + evaluate)"

# gptq-rs in the same organisation as PyTorch; after the reference's default organisation, also
# in gptq-rs's own default (true-sequential), which is what a user runs; last, true-sequential
# with bf16 calibration products (AVX512-BF16 kernels where the CPU has them), then with int8
# products for the quantized linears (AVX512-VNNI kernels).
# The f32 runs say so: the default (auto) takes the fastest kernels the CPU has.
runs=("${order[*]} --products f32 --hessian f32")
if [[ ${#order[@]} -gt 0 ]]; then
  runs+=("--products f32 --hessian f32")
fi
runs+=("--products bf16 --hessian bf16" "--products int8 --hessian bf16")
for flags in "${runs[@]}"; do
  case $flags in
    --no-true-sequential*) name=w3g128-asym-no-true-sequential ;;
    "--products bf16"*) name=w3g128-asym-bf16 ;;
    "--products int8"*) name=w3g128-asym-int8 ;;
    *) name=w3g128-asym ;;
  esac
  echo "== gptq-rs ${flags:-(true-sequential)}"
  rm -rf "${out:?}/$name"
  # shellcheck disable=SC2086 # $flags is empty or whole flags
  target/release/gptq quantize --model "$model" --calib "$calib" --out "$out/$name" \
    --bits 3 --group-size 128 --asym --threads 2 $flags --report "$out/$name.json" 2>&1 \
    | tr '\r' '\n' | grep -E '^(quantized|time:|peak)'
  target/release/gptq eval --model "$out/$name" --text "$text" --windows 40 | grep perplexity
done
