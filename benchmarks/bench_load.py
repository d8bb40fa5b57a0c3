"""Model load time: a fresh process loading the embedded model from the converted cache.

Usage: .venv/bin/python benchmarks/bench_load.py [--runs 3]
Writes benchmarks/results/load.json. The first load ever converts the GGUF (~15-20 s); every later
process reads fp32 safetensors from $DEAL_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SNIPPET = (
    "import time; t0=time.perf_counter(); from shared_core import load_model; t1=time.perf_counter(); "
    "load_model('{model}'); t2=time.perf_counter(); print(t1-t0, t2-t1)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    code = SNIPPET.format(model=args.model)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # make sure the cache exists
    imports, loads = [], []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        first, second = out.stdout.strip().splitlines()[-1].split()
        imports.append(float(first))
        loads.append(float(second))
    report = {
        "model": args.model,
        "runs": args.runs,
        "load_seconds_median": round(statistics.median(loads), 3),
        "import_seconds_median": round(statistics.median(imports), 3),
        "note": "load = load_model() from the converted safetensors cache; import = importing deal, torch, transformers",
    }
    out_path = Path(__file__).parent / "results" / "load.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
