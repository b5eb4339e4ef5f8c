#!/usr/bin/env bash
# Quantizes a model directory to 4-bit GPTQ (group 128, asymmetric) with the SmolLM2 calibration
# windows of ../shared, then compares perplexities on WikiText-2 (first 40 windows of 512).
# Usage: scripts/quickstart.sh MODEL_DIR [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/quickstart.sh MODEL_DIR [OUT_DIR]}
out=${2:-$model-gptq}
shared=../shared
cargo build --release -p gptq-cli
target/release/gptq quantize --model "$model" --calib "$shared/data/calib/smollm2-wikivalid-128x512.json" \
  --out "$out" --bits 4 --group-size 128 --asym --overwrite --report "$out.report.json"
for dir in "$model" "$out"; do
  target/release/gptq eval --model "$dir" --text "$shared/data/wikitext2/wikitext2-test-joined.txt" --windows 40
done
