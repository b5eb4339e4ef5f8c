#!/usr/bin/env bash
# Usage: scripts/hf_check.sh --model DIR --text FILE [--seqlen 512] [--windows 40]
#        scripts/hf_check.sh --python SCRIPT.py [ARGS...]   (another script, same environment)
#
# Cross-checks a checkpoint directory (plain float, or GPTQ as written by `gptq quantize`) against
# Hugging Face transformers on CPU: sets up a private Python virtual environment with CPU torch,
# transformers, optimum and GPTQModel (built without CUDA kernels), then runs
# scripts/hf_perplexity.py with the arguments given, which prints `perplexity <value>` last.
#
# Environment:
#   GPTQ_HF_VENV    virtual environment to create or reuse (default ~/.cache/gptq-hf-venv)
#   GPTQ_HF_PYTHON  interpreter that creates it (default python3.11, else python3)
#
# Idempotent: a stamp file in the environment records the pinned versions; when it matches and the
# packages import, nothing is installed again. The first install downloads about 4 GB when the
# CPU-only torch index cannot be reached (the PyPI torch wheel pulls in the CUDA runtime wheels,
# which `import torch` needs even on a machine without a GPU).
set -euo pipefail

# Versions that were tested together on Python 3.11 (CPU, x86_64 Linux).
TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.23.0
OPTIMUM_VERSION=2.3.0
GPTQMODEL_VERSION=7.7.0
# GPTQModel's own build requirement (pyproject.toml); needed because of --no-build-isolation.
SETUPTOOLS_SPEC='setuptools>=84.2.1,<85'
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${GPTQ_HF_VENV:-$HOME/.cache/gptq-hf-venv}
stamp_want="torch=$TORCH_VERSION transformers=$TRANSFORMERS_VERSION optimum=$OPTIMUM_VERSION gptqmodel=$GPTQMODEL_VERSION"
stamp_file=$venv/.gptq-hf-stamp

log() { echo "[hf_check] $*" >&2; }

pick_python() {
  if [[ -n ${GPTQ_HF_PYTHON:-} ]]; then echo "$GPTQ_HF_PYTHON"; return; fi
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  log "no python3 found"; exit 1
}

env_ok() {
  [[ -x $venv/bin/python && -f $stamp_file && "$(cat "$stamp_file")" == "$stamp_want" ]] &&
    "$venv/bin/python" -c 'import torch, transformers, optimum, gptqmodel' >/dev/null 2>&1
}

install_env() {
  local py pip
  py=$(pick_python)
  if [[ ! -x $venv/bin/python ]]; then
    log "creating virtual environment $venv with $py ($("$py" --version 2>&1))"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
  else
    log "reusing virtual environment $venv"
  fi
  rm -f "$stamp_file"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  local t0=$SECONDS

  log "upgrading pip, wheel and $SETUPTOOLS_SPEC"
  "${pip[@]}" install -q --upgrade pip wheel "$SETUPTOOLS_SPEC"

  # Keep torch at the pinned version while the other packages resolve their requirements
  # (a local label such as +cpu still satisfies ==).
  local constraints=$venv/gptq-hf-constraints.txt
  printf 'torch==%s\ntransformers==%s\noptimum==%s\n' \
    "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$OPTIMUM_VERSION" >"$constraints"

  if "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" >/dev/null 2>&1; then
    log "torch $TORCH_VERSION already installed"
  elif "$venv/bin/python" -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/', timeout=10)" >/dev/null 2>&1; then
    log "installing torch==$TORCH_VERSION from the CPU-only index $TORCH_CPU_INDEX"
    "${pip[@]}" install "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple
  else
    log "$TORCH_CPU_INDEX not reachable: installing torch==$TORCH_VERSION from PyPI (with its CUDA runtime wheels, ~4 GB)"
    "${pip[@]}" install "torch==$TORCH_VERSION"
  fi

  log "installing transformers==$TRANSFORMERS_VERSION optimum==$OPTIMUM_VERSION"
  "${pip[@]}" install -c "$constraints" "transformers==$TRANSFORMERS_VERSION" "optimum==$OPTIMUM_VERSION"

  log "building gptqmodel==$GPTQMODEL_VERSION without CUDA extensions (BUILD_CUDA_EXT=0, --no-build-isolation)"
  BUILD_CUDA_EXT=0 "${pip[@]}" install -c "$constraints" --no-build-isolation "gptqmodel==$GPTQMODEL_VERSION"

  "$venv/bin/python" -c 'import importlib.metadata, torch, transformers, optimum, gptqmodel; print("[hf_check] installed: torch", torch.__version__, "transformers", transformers.__version__, "optimum", importlib.metadata.version("optimum"), "gptqmodel", gptqmodel.__version__)' >&2
  echo "$stamp_want" >"$stamp_file"
  log "environment ready in $((SECONDS - t0)) s"
}

if env_ok; then
  log "environment $venv is ready ($stamp_want)"
else
  install_env
fi

# GPTQModel's CPU thread pool: 2 workers on this 2-core machine (the default asks for more).
export GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-2}
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ${1:-} == --python ]]; then
  shift
  log "running $*"
  exec "$venv/bin/python" "$@"
fi
log "running hf_perplexity.py $*"
exec "$venv/bin/python" "$here/hf_perplexity.py" "$@"
