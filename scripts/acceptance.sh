#!/usr/bin/env bash
# The acceptance runs of the pipeline issue on SmolLM2-135M: full-precision perplexity, then
# quantize + evaluate each configuration. Usage: scripts/acceptance.sh [OUT_DIR] [extra quantize flags]
# Needs ../shared; builds the release binary and the Hugging Face checkpoint if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/acceptance}
shift || true
shared=../shared
model=${GPTQ_SMOLLM2_HF:-target/tmp/smollm2-hf}
calib=$shared/data/calib/smollm2-wikivalid-128x512.json
text=$shared/data/wikitext2/wikitext2-test-joined.txt
mkdir -p "$out"
cargo build --release -p gptq-cli >/dev/null
"$shared/tools/smollm2-hf" "$model" >/dev/null
gptq=target/release/gptq

ppl() { "$gptq" eval --model "$1" --text "$text" --windows 40 | awk '/^perplexity/ {print $2}'; }

echo "full precision: perplexity $(ppl "$model")" | tee "$out/summary.txt"
run() {
  local name=$1; shift
  rm -rf "$out/$name"
  local start=$SECONDS
  "$gptq" quantize --model "$model" --calib "$calib" --out "$out/$name" --report "$out/$name.json" "$@" "${extra[@]}" \
    > "$out/$name.log" 2>&1
  local took=$((SECONDS - start))
  echo "$name ($*): perplexity $(ppl "$out/$name"), quantize ${took}s" | tee -a "$out/summary.txt"
}
extra=("$@")
run w4g128-asym --bits 4 --group-size 128 --asym
run w3g128-asym --bits 3 --group-size 128 --asym
run w4g128-asym-actorder --bits 4 --group-size 128 --asym --act-order
run w3g128-asym-actorder --bits 3 --group-size 128 --asym --act-order
run w4g64-sym --bits 4 --group-size 64 --sym
