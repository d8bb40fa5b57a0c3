"""Length budgets: greedy overruns ``max_words``; deal keeps to it and still ends at a sentence boundary.

The prompts in ``data/length_prompts.json`` are open questions whose greedy answers on the embedded
model run well past the budget (30 words). Each is decoded with greedy and with ``deal`` under the
reward ``{"type": "length", "max_words": 30}`` (at most 96 new tokens). An output passes when it has at
most ``max_words`` words AND ended by itself (EOS) at a sentence boundary, i.e. it was neither cut off
by the token limit nor stopped mid-sentence or mid-word.

Run: ``.venv/bin/python benchmarks/length_eval.py`` (a few minutes on 2 idle cores).
Writes ``results/length_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commongen_eval import DATA, machine, median, set_threads, timed, write_json  # noqa: E402

from shared_core.decoding import generate  # noqa: E402
from shared_core.decoding.lookahead import ends_sentence  # noqa: E402
from shared_core.models import load_model  # noqa: E402


def judge(text: str, finish_reason: str, max_words: int) -> dict[str, Any]:
    words = len(text.split())
    complete = finish_reason == "eos" and ends_sentence(text)
    return {"words": words, "within_budget": words <= max_words, "complete_sentence": complete,
            "passes": words <= max_words and complete}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--params", default="{}", help="JSON parameters for deal")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="length_eval.json")
    args = parser.parse_args()
    set_threads(args.threads)

    data = json.loads((DATA / "length_prompts.json").read_text(encoding="utf-8"))
    max_words, max_new_tokens = data["max_words"], data["max_new_tokens"]
    reward = {"type": "length", "max_words": max_words}
    params = json.loads(args.params)
    lm = load_model(args.model)
    rows = []
    for index, prompt in enumerate(data["prompts"][: args.limit]):
        greedy, greedy_s = timed(lambda: generate(lm, prompt, strategy="greedy", reward=reward, max_new_tokens=max_new_tokens))
        deal, deal_s = timed(lambda: generate(lm, prompt, strategy="deal", reward=reward,
                                              max_new_tokens=max_new_tokens, **params))
        row = {
            "prompt": prompt,
            "greedy": {"text": greedy.text, "seconds": greedy_s, **judge(greedy.text, greedy.finish_reason, max_words)},
            "deal": {"text": deal.text, "seconds": deal_s, "searches": deal.stats.extra.get("searches"),
                     **judge(deal.text, deal.finish_reason, max_words)},
        }
        rows.append(row)
        print(f"[{index + 1}] greedy {row['greedy']['words']} words, deal {row['deal']['words']} words "
              f"({'pass' if row['deal']['passes'] else 'FAIL'}): {deal.text!r}", flush=True)

    def share(name: str, key: str) -> float:
        return sum(r[name][key] for r in rows) / len(rows)

    summary = {
        name: {
            "share_within_budget": share(name, "within_budget"),
            "share_complete_sentence_at_eos": share(name, "complete_sentence"),
            "share_passing": share(name, "passes"),
            "median_words": median([float(r[name]["words"]) for r in rows]),
            "median_seconds_per_prompt": median([r[name]["seconds"] for r in rows]),
        }
        for name in ("greedy", "deal")
    }
    payload = {"benchmark": "length_eval", "model": args.model, "max_words": max_words,
               "max_new_tokens": max_new_tokens, "prompts": len(rows), "deal_params": params,
               "greedy_overruns": sum(not r["greedy"]["within_budget"] for r in rows),
               "machine": machine(), "summary": summary, "rows": rows}
    path = write_json(args.out, payload)
    for name, s in summary.items():
        print(f"{name:<7} within budget {s['share_within_budget']:.0%}  complete at EOS "
              f"{s['share_complete_sentence_at_eos']:.0%}  both {s['share_passing']:.0%}  "
              f"median {s['median_words']:.0f} words, {s['median_seconds_per_prompt']:.1f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
