#!/usr/bin/env bash
# Set up ijepa-jax on this machine: Fashion-MNIST (Debian package), a Python >= 3.12
# virtual environment in .venv, and the package with its test extra. Safe to re-run.
#   JAX_EXTRA=tpu|cuda12|cuda13  also install JAX for that accelerator (default: CPU only)
#   IJEPA_EXTRAS=gcs             more extras of this package (gcs: gs:// workdirs)
#   IJEPA_TORCH_REF=1            also the PyTorch reference for the interop tests: a Python 3.11
#                                environment in .venv-torch with torch 2.13 (CPU), transformers
#                                and timm (TORCH_PYTHON=/path/to/python3.11 to choose it;
#                                TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where
#                                PyPI's torch would bring CUDA packages)
set -euo pipefail
cd "$(dirname "$0")/.."

# -- the embedded default data ------------------------------------------------
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } ||
      echo "setup: could not install dataset-fashion-mnist (the demo and the tests that need it won't run); continuing" >&2
  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then
    { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } ||
      echo "setup: could not install dataset-fashion-mnist (the demo and the tests that need it won't run); continuing" >&2
  else
    cat >&2 <<'MSG'
setup: Fashion-MNIST is not installed and this shell cannot run apt-get as root.
  On Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist
  Elsewhere: download the four IDX .gz files from https://github.com/zalandoresearch/fashion-mnist
  into a folder and add --config.data.data_dir=<that folder> to the demo command.
  (Continuing: the tests that need the data are skipped until then.)
MSG
  fi
fi

# -- Python >= 3.12 -------------------------------------------------------------
is_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
PY=""
for cand in "${PYTHON:-}" python3.13 python3.12 python3; do
  if [ -n "$cand" ] && command -v "$cand" >/dev/null && is_ok "$cand"; then PY=$(command -v "$cand"); break; fi
done
if [ -z "$PY" ] && command -v pyenv >/dev/null; then
  for cand in "$(pyenv root)"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$cand" ] && is_ok "$cand"; then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: no Python >= 3.12 found (JAX >= 0.11 needs it). Install one (e.g. 'pyenv install 3.12')," \
       "or point PYTHON=/path/to/python3.12 at it, and re-run." >&2
  exit 1
fi

# -- virtual environment and package -------------------------------------------
if [ ! -x .venv/bin/python ] || ! is_ok .venv/bin/python; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test${IJEPA_EXTRAS:+,$IJEPA_EXTRAS}]"
if [ -n "${JAX_EXTRA:-}" ]; then
  .venv/bin/python -m pip install -q --upgrade "jax[$JAX_EXTRA]"
fi
# -- optional: the PyTorch reference of the interop tests ----------------------
if [ "${IJEPA_TORCH_REF:-0}" = 1 ]; then
  is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }
  TPY=""
  for cand in "${TORCH_PYTHON:-}" python3.11 python3; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null && is_311 "$cand"; then TPY=$(command -v "$cand"); break; fi
  done
  if [ -z "$TPY" ] && command -v pyenv >/dev/null; then
    for cand in "$(pyenv root)"/versions/3.11*/bin/python3; do
      if [ -x "$cand" ] && is_311 "$cand"; then TPY=$cand; break; fi
    done
  fi
  if [ -z "$TPY" ]; then
    echo "setup: IJEPA_TORCH_REF=1 but no Python 3.11 found (TORCH_PYTHON=...): the torch parity tests will be skipped" >&2
  else
    [ -x .venv-torch/bin/python ] || "$TPY" -m venv .venv-torch
    { .venv-torch/bin/python -m pip install -q ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch==2.13.0 &&
      .venv-torch/bin/python -m pip install -q 'transformers>=4.47' safetensors pillow pyyaml huggingface_hub &&
      # timm's own requirements pull torchvision (no CPU build here, and a CUDA torch with it)
      .venv-torch/bin/python -m pip install -q --no-deps 'timm>=1.0' &&
      echo "setup: torch reference ready ($(.venv-torch/bin/python -c 'import importlib.metadata as m; print(*(f"{p} {m.version(p)}" for p in ("torch", "transformers", "timm")))'))"; } ||
      echo "setup: could not install the torch reference in .venv-torch: the torch parity tests will be skipped" >&2
  fi
fi
echo "setup: ready ($(.venv/bin/python --version), jax $(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
