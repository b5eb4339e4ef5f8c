#!/usr/bin/env bash
# Runs acceptance configurations of scripts/acceptance.sh with two gptq builds and says whether
# their checkpoints are bit-identical (sha256 of the safetensors files) and how long each took.
#
# Usage: scripts/compare_builds.sh OLD_GPTQ NEW_GPTQ OUT_DIR [MODE:CONFIG ...]
#   MODE: f32 (--products f32 --hessian f32) | bf16 (--products bf16 --hessian bf16) | int8 (--products int8 --hessian bf16)
#   CONFIG: w4g128-asym w3g128-asym w4g128-asym-actorder w3g128-asym-actorder w4g64-sym
#   (default: every configuration in f32). EXTRA="--nsamples 8" adds flags to every run.
# Needs ../shared; makes the SmolLM2 checkpoint directory if missing. Each run's checkpoint is
# deleted once hashed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
old=$1 new=$2 out=$3
shift 3
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(f32:w4g128-asym f32:w3g128-asym f32:w4g128-asym-actorder
  f32:w3g128-asym-actorder f32:w4g64-sym)
shared=../shared
model=${GPTQ_SMOLLM2_HF:-target/tmp/smollm2-hf}
calib=$shared/data/calib/smollm2-wikivalid-128x512.json
[ -d "$model" ] || "$shared/tools/smollm2-hf" "$model" >/dev/null
mkdir -p "$out"
declare -A configs=(
  [w4g128-asym]="--bits 4 --group-size 128 --asym"
  [w3g128-asym]="--bits 3 --group-size 128 --asym"
  [w4g128-asym-actorder]="--bits 4 --group-size 128 --asym --act-order"
  [w3g128-asym-actorder]="--bits 3 --group-size 128 --asym --act-order"
  [w4g64-sym]="--bits 4 --group-size 64 --sym")
# Prints the checkpoint hash and the run's seconds.
run() {
  local gptq=$1 dir=$2; shift 2
  rm -rf "$dir"
  local start=$SECONDS
  "$gptq" quantize --model "$model" --calib "$calib" --out "$dir" "$@" ${EXTRA:-} >"$dir.log" 2>&1
  echo "$(cat "$dir"/*.safetensors | sha256sum | cut -c1-16) $((SECONDS - start))s"
  rm -rf "$dir"
}
for job in "${jobs[@]}"; do
  mode=${job%%:*} name=${job#*:}
  [ -n "${configs[$name]:-}" ] || { echo "unknown configuration $name" >&2; exit 2; }
  case $mode in
    # Explicit, since builds after 2026-12-04 choose by the CPU by default (auto).
    f32) flags=(--products f32 --hessian f32);;
    bf16) flags=(--products bf16 --hessian bf16);;
    int8) flags=(--products int8 --hessian bf16);;
    *) echo "unknown mode $mode" >&2; exit 2;;
  esac
  read -r -a args <<<"${configs[$name]}"
  read -r a ta < <(run "$old" "$out/old-$mode-$name" "${args[@]}" "${flags[@]}")
  read -r b tb < <(run "$new" "$out/new-$mode-$name" "${args[@]}" "${flags[@]}")
  verdict=$([ "$a" = "$b" ] && echo identical || echo DIFFERENT)
  echo "$mode $name: $verdict (old $a $ta, new $b $tb)" | tee -a "$out/summary.txt"
done
