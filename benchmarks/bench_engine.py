"""Engine greedy speed vs ``model.generate(do_sample=False)``, side by side in one run.

Usage: .venv/bin/python benchmarks/bench_engine.py [--runs 5] [--tokens 64]
Writes benchmarks/results/engine.json. Both decoders produce the same tokens (checked); the ratio is
engine tokens/s over transformers tokens/s, as a median over interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from shared_core import generate, load_model

PROMPTS = [
    "Give me two tips for staying safe online.",
    "Explain what a hash table is.",
    "Write a short poem about autumn leaves.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()

    lm = load_model(args.model)
    started = time.perf_counter()
    ratios, engine_tps, hf_tps = [], [], []
    for run in range(args.runs):
        for prompt in PROMPTS:
            ids = torch.tensor([lm.render(prompt)])
            # interleave the order so neither side always runs on a warmer machine
            order = ["engine", "hf"] if (run % 2 == 0) else ["hf", "engine"]
            timings: dict[str, tuple[float, int]] = {}
            tokens: dict[str, list[int]] = {}
            for side in order:
                t0 = time.perf_counter()
                if side == "engine":
                    result = generate(lm, prompt, max_new_tokens=args.tokens)
                    tokens[side] = result.token_ids
                else:
                    with torch.inference_mode():
                        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                                                do_sample=False)
                    tokens[side] = out[0, ids.shape[1]:].tolist()
                timings[side] = (time.perf_counter() - t0, len(tokens[side]))
            assert tokens["engine"] == tokens["hf"], "engine and transformers disagree"
            e = timings["engine"][1] / timings["engine"][0]
            h = timings["hf"][1] / timings["hf"][0]
            engine_tps.append(e)
            hf_tps.append(h)
            ratios.append(e / h)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}, CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "model": args.model,
        "max_new_tokens": args.tokens,
        "runs": args.runs * len(PROMPTS),
        "engine_tokens_per_s_median": round(statistics.median(engine_tps), 2),
        "transformers_generate_tokens_per_s_median": round(statistics.median(hf_tps), 2),
        "speed_ratio_median": round(statistics.median(ratios), 3),
        "same_tokens": True,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(__file__).parent / "results" / "engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
