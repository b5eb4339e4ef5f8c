#!/usr/bin/env bash
# Usage: scripts/scale_bench.sh OUT_DIR [SHAPE[:NSAMPLES[:LAYERS]] ...]
#
# Quantizes random checkpoints shaped like published models (gptq-model's `synthetic_model`
# example) with `gptq quantize` (4 bits, group 128, asymmetric; NSAMPLES × 512 random token-id
# calibration windows, default 128; all layers unless LAYERS), then reads each result back with
# `gptq inspect --verify` and `gptq eval` (4 windows of other random token ids). Default shapes:
#   llama-3.2-1b:128 qwen2.5-1.5b:128 llama-3.1-8b:32
# which take about 30 min, 45 min and 1 h 30 min on a 2-core machine; the 8B shape needs 16 GB
# for its model and 6 GB for the checkpoint on disk, and about 12 GiB of memory.
#
# For each shape, OUT_DIR/SHAPE/ holds the model (removed after its run unless KEEP=1), the
# calibration and evaluation windows, the checkpoint (`q4/`), the run's log and its JSON report.
# OUT_DIR/summary.txt gets one line per run: its time split (forward passes, Hessians, solving,
# packing, writing), the mean and slowest decoder layer, the peak resident memory against the
# prediction printed before the run, and for runs on fewer than 128 windows the time the same
# run would take on 128 (forward passes and Hessians grow with the tokens; solving, packing and
# writing do not).
#
# Environment: GPTQ_THREADS (default 0: all cores), KEEP=1 keeps the generated models.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,21p' "$0" >&2
  exit 2
fi
out=$1
shift
runs=("$@")
[[ ${#runs[@]} -gt 0 ]] || runs=(llama-3.2-1b:128 qwen2.5-1.5b:128 llama-3.1-8b:32)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
log() { echo "[scale_bench] $*" >&2; }

log "building the release binaries"
(cd "$root" && cargo build --release -q -p gptq-cli && cargo build --release -q -p gptq-model --example synthetic_model)
gptq=$root/target/release/gptq
synthetic=$root/target/release/examples/synthetic_model

summary=$out/summary.txt
{
  echo "# $(date -u +%FT%TZ) $(git -C "$root" rev-parse --short HEAD) on $(nproc) cores," \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
} >>"$summary"

for run in "${runs[@]}"; do
  IFS=: read -r shape nsamples layers <<<"$run"
  nsamples=${nsamples:-128}
  dir=$out/$shape
  mkdir -p "$dir"
  layer_flag=()
  [[ -n ${layers:-} ]] && layer_flag=(--layers "$layers")

  log "$shape: writing the model and $nsamples calibration windows"
  rm -rf "$dir/model"
  "$synthetic" --shape "$shape" --out "$dir/model" "${layer_flag[@]}" \
    --calib "$dir/calib.json" --nsamples "$nsamples" --seqlen 512 | tee "$dir/generate.log"
  # Evaluation windows: other random token ids (Python's generator, seeded).
  python3 - "$dir/model/config.json" "$dir/eval.json" <<'EOF'
import json, random, sys
vocab = json.load(open(sys.argv[1]))["vocab_size"]
rng = random.Random(20261204)
windows = [[rng.randrange(vocab) for _ in range(512)] for _ in range(4)]
json.dump({"windows": windows}, open(sys.argv[2], "w"))
EOF

  log "$shape: quantizing (log: $dir/quantize.log)"
  "$gptq" quantize --model "$dir/model" --calib "$dir/calib.json" --out "$dir/q4" --overwrite \
    --bits 4 --group-size 128 --asym --nsamples "$nsamples" --seqlen 512 \
    --threads "${GPTQ_THREADS:-0}" --report "$dir/report.json" 2>&1 | tee "$dir/quantize.log"

  log "$shape: reading the checkpoint back"
  "$gptq" inspect --verify "$dir/q4" >"$dir/inspect.log"
  tail -1 "$dir/inspect.log"
  "$gptq" eval --model "$dir/q4" --text "$dir/eval.json" --windows 4 2>&1 | tee "$dir/eval.log"
  [[ ${KEEP:-0} == 1 ]] || rm -rf "$dir/model"

  python3 - "$dir/report.json" "$dir/eval.log" "$shape" >>"$summary" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
ppl = re.findall(r"perplexity ([0-9.]+)", open(sys.argv[2]).read())
t = report["totals"]
s = t["stages"]
layers = t["layer_seconds"]
peak = t["peak_memory_bytes"] / 2**20
pred = t["predicted_memory"]["peak"] / 2**20
line = (
    f"{sys.argv[3]}: {len(layers)} layers, {report['samples']} x 512 tokens, "
    f"products {report['products']}, Hessians {report['hessian']}: {t['seconds']:.1f} s "
    f"(calibration load {s['calibration_load']:.1f}, forward {s['calibration_forward']:.1f}, "
    f"Hessians {s['hessian']:.1f}, solving {s['solve']:.1f}, packing {s['pack']:.1f}, "
    f"writing {s['write']:.1f}); layer mean {sum(layers) / len(layers):.1f} s, "
    f"slowest {max(layers):.1f} s; peak {peak:.0f} MiB, predicted {pred:.0f} MiB "
    f"(peak/predicted {peak / pred:.3f}); eval perplexity {ppl[-1] if ppl else '?'}"
)
if report["samples"] < 128:
    grow = 128 / report["samples"]
    at128 = t["seconds"] + (grow - 1) * (s["calibration_forward"] + s["hessian"])
    line += f"; at 128 x 512 tokens about {at128 / 60:.0f} min"
print(line)
EOF
  tail -1 "$summary"
done
