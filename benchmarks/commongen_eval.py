"""CommonGen-style keyword coverage: greedy vs best_of_n vs args vs deal on the embedded model.

Each of the concept sets in ``data/commongen_concepts.json`` (four everyday words) becomes the prompt
"Write one sentence using all of these words: ...". Every strategy decodes it with at most 48 new
tokens and the reward ``{"type": "keywords", "words": [...]}`` (inflections count). Reported per
strategy: mean keyword coverage, the share of outputs with all four words, the share that end by
themselves (EOS) as a complete sentence, and time per prompt as a ratio to greedy measured on the same
prompt in the same run (strategies interleaved, median of ``--repeats`` timings per prompt).

Run: ``.venv/bin/python benchmarks/commongen_eval.py`` (about 5 minutes on 2 idle cores);
``--limit 8 --repeats 1`` for a quick look. Writes ``results/commongen_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from shared_core.decoding import generate
from shared_core.decoding.lookahead import ends_sentence
from shared_core.models import load_model

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent / "data"
T = TypeVar("T")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (these machines are shared and noisy: note the load too)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "cuda": torch.cuda.is_available(),
    }


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


MAX_NEW_TOKENS = 48
STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "best_of_n": {"n": 8},
    "args": {},
    "deal": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N concept sets")
    parser.add_argument("--repeats", type=int, default=3, help="timings per prompt and strategy (median)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    parser.add_argument("--params", default="{}", help='JSON per strategy, e.g. \'{"deal": {"top_k": 8}}\'')
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="commongen_eval.json")
    parser.add_argument("--verbose", action="store_true", help="print every output")
    args = parser.parse_args()
    set_threads(args.threads)

    data = json.loads((DATA / "commongen_concepts.json").read_text(encoding="utf-8"))
    concept_sets = data["concept_sets"][: args.limit]
    names = [s for s in args.strategies.split(",") if s]
    if "greedy" not in names:
        names.insert(0, "greedy")
    overrides = json.loads(args.params)
    params = {name: {**STRATEGIES.get(name, {}), **overrides.get(name, {})} for name in names}
    lm = load_model(args.model)
    generate(lm, "Hi", max_new_tokens=4)  # warm-up

    rows: list[dict[str, Any]] = []
    for index, words in enumerate(concept_sets):
        prompt = data["prompt_template"].format(words=", ".join(words))
        reward = {"type": "keywords", "words": words}
        row: dict[str, Any] = {"words": words}
        timings: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            order = names[(index + repeat) % len(names):] + names[: (index + repeat) % len(names)]
            for name in order:
                result, seconds = timed(lambda: generate(lm, prompt, strategy=name, reward=reward, seed=0,
                                                         max_new_tokens=MAX_NEW_TOKENS, **params[name]))
                timings[name].append(seconds)
                row[name] = {
                    "text": result.text,
                    "coverage": result.reward.components.get("keywords", result.reward.total),
                    "complete": result.finish_reason == "eos" and ends_sentence(result.text),
                    "finish_reason": result.finish_reason,
                    "new_tokens": result.stats.new_tokens,
                    "forward_passes": result.stats.forward_passes,
                }
        for name in names:
            row[name]["seconds"] = median(timings[name])
        rows.append(row)
        line = "  ".join(f"{n}={row[n]['coverage']:.2f}/{row[n]['seconds']:.1f}s" for n in names)
        print(f"[{index + 1}/{len(concept_sets)}] {', '.join(words)}: {line}", flush=True)
        if args.verbose:
            for n in names:
                print(f"    {n}: {row[n]['text']!r}")

    summary = {}
    greedy_seconds = [r["greedy"]["seconds"] for r in rows]
    for name in names:
        cov = [r[name]["coverage"] for r in rows]
        seconds = [r[name]["seconds"] for r in rows]
        tokens = [r[name]["new_tokens"] for r in rows]
        summary[name] = {
            "params": params[name],
            "mean_coverage": sum(cov) / len(cov),
            "share_all_words": sum(c >= 1.0 - 1e-9 for c in cov) / len(cov),
            "share_complete_sentence_at_eos": sum(r[name]["complete"] for r in rows) / len(rows),
            "median_seconds_per_prompt": median(seconds),
            "time_ratio_vs_greedy_median_per_prompt": median([s / g for s, g in zip(seconds, greedy_seconds)]),
            "time_ratio_vs_greedy_total": sum(seconds) / sum(greedy_seconds),
            "mean_new_tokens": sum(tokens) / len(tokens),
            "seconds_per_generated_token": sum(seconds) / max(sum(tokens), 1),
        }
    payload = {
        "benchmark": "commongen_eval",
        "model": args.model,
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompts": len(rows),
        "repeats": args.repeats,
        "machine": machine(),
        "summary": summary,
        "rows": rows,
    }
    path = write_json(args.out, payload)
    print()
    print(f"{'strategy':<10} {'coverage':>8} {'all 4':>6} {'EOS+.':>6} {'s/prompt':>9} {'x greedy':>9}")
    for name, s in summary.items():
        print(f"{name:<10} {s['mean_coverage']:>8.3f} {s['share_all_words']:>6.0%} "
              f"{s['share_complete_sentence_at_eos']:>6.0%} {s['median_seconds_per_prompt']:>9.2f} "
              f"{s['time_ratio_vs_greedy_median_per_prompt']:>8.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
