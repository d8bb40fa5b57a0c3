"""Speed of ``genarm`` and ``transfer_q`` next to plain greedy, on the embedded model, in one run.

* ``genarm`` with a same-size ARM (the embedded model itself, prompted with a preference statement):
  seconds per token as a ratio to greedy (target: at most 2.2x), and forward passes per token
  (exactly 2: one policy forward and one ARM forward).
* ``transfer_q`` at k=5, H=8 with the embedded model as the baseline (prompted, so it keeps its own
  cache) against a naive Transfer Q* that, at every step, runs the target over the full prefix and
  calls ``baseline.generate`` from the full prefix for every candidate (target: at least 5x faster).
  Both use greedy rollouts and the same reward, so they should pick the same tokens; the script checks.

Runs are interleaved (greedy, genarm, transfer_q, naive, repeat) so load changes hit all of them alike;
medians are reported. Results go to ``benchmarks/results/bench_genarm_tq.json``.

Usage: ``python benchmarks/bench_genarm_tq.py [--runs 3] [--tokens 48] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from shared_core import generate, load_model
from shared_core.models import LocalModel
from shared_core.policies import build_reward
from shared_core.rewards.arm import instructed_prompt

PROMPT = "Give me two tips for staying safe online."
ARM_INSTRUCTION = "Answer in a warm, encouraging tone."
BASELINE_INSTRUCTION = "Mention passwords and software updates."
TQ_REWARD = {"type": "keywords", "words": ["password", "update", "software"]}
RESULTS = Path(__file__).parent / "results" / "bench_genarm_tq.json"


def naive_transfer_q(policy: LocalModel, baseline: LocalModel, prompt: str, reward, *, k: int, horizon: int,
                     alpha: float, max_new_tokens: int) -> tuple[list[int], float, int]:
    """Transfer Q* the slow way: no caches, one ``generate`` call per candidate per step.

    Returns (token ids, seconds, generate calls). Same scoring rule as the ``transfer_q`` strategy
    (direct mode, greedy rollouts, ``log p_target + Q / alpha``), so the outputs should agree.
    """
    prompt_ids = policy.render(prompt)
    baseline_ids = baseline.render(instructed_prompt(prompt, BASELINE_INSTRUCTION, chat=True), chat=True)
    eos = sorted(policy.eos_token_ids)
    committed: list[int] = []
    calls = 0
    started = time.perf_counter()
    with torch.inference_mode():
        while len(committed) < max_new_tokens:
            full = torch.tensor([prompt_ids + committed])
            logits = policy.model(input_ids=full).logits[0, -1]  # the whole prefix, every step
            cand_lp, cand = torch.log_softmax(logits.float(), -1).topk(k)
            h = min(horizon, max_new_tokens - len(committed) - 1)
            texts = []
            for c in cand.tolist():
                rollout: list[int] = []
                if h > 0 and c not in policy.eos_token_ids:
                    ids = torch.tensor([baseline_ids + committed + [c]])
                    out = baseline.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=h,
                                                  do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
                    calls += 1
                    rollout = out[0, ids.shape[1]:].tolist()
                texts.append(policy.decode(committed + [c] + rollout))
            q = torch.tensor(reward.score(texts, prompt=prompt))
            token = int(cand[int((cand_lp + q / alpha).argmax())])
            committed.append(token)
            if token in policy.eos_token_ids:
                break
    return committed, time.perf_counter() - started, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    reward = build_reward(TQ_REWARD)
    arm_spec = {"type": "arm", "model": "smollm2", "weight": 1.0, "instruction": ARM_INSTRUCTION}
    tq_params = dict(baseline="smollm2", baseline_instruction=BASELINE_INSTRUCTION, k=5, horizon=8, alpha=1.0)
    generate(lm, PROMPT, max_new_tokens=4)  # warm-up
    generate(lm, PROMPT, strategy="genarm", reward=arm_spec, max_new_tokens=4)
    rows: dict[str, list[dict]] = {"greedy": [], "genarm": [], "transfer_q": [], "naive_transfer_q": []}
    load_before = os.getloadavg()
    for run in range(args.runs):
        for name in ("greedy", "genarm", "transfer_q", "naive_transfer_q"):
            if name == "naive_transfer_q":
                ids, seconds, calls = naive_transfer_q(lm, lm, PROMPT, reward, k=5, horizon=8, alpha=1.0,
                                                       max_new_tokens=args.tokens)
                rows[name].append({"seconds": seconds, "tokens": len(ids), "token_ids": ids, "generate_calls": calls})
            else:
                kwargs = {"greedy": {}, "genarm": {"strategy": "genarm", "reward": arm_spec},
                          "transfer_q": {"strategy": "transfer_q", "reward": TQ_REWARD, **tq_params}}[name]
                result = generate(lm, PROMPT, max_new_tokens=args.tokens, **kwargs)
                rows[name].append({"seconds": result.stats.seconds, "tokens": len(result.token_ids),
                                   "token_ids": result.token_ids, "forward_passes": result.stats.forward_passes})
            last = rows[name][-1]
            print(f"run {run + 1} {name:17s} {last['tokens']:3d} tokens {last['seconds']:7.2f}s", flush=True)

    def median(name: str, key: str = "seconds") -> float:
        return statistics.median(r[key] for r in rows[name])

    def per_token(name: str) -> float:
        return statistics.median(r["seconds"] / r["tokens"] for r in rows[name])

    def paired(name: str, reference: str) -> list[float]:
        """Per-run ratios of seconds per token (runs are interleaved, so each pair saw similar load)."""
        return [round((b["seconds"] / b["tokens"]) / (a["seconds"] / a["tokens"]), 3)
                for a, b in zip(rows[name], rows[reference])]

    genarm_fp = rows["genarm"][0]["forward_passes"]
    summary = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "model": "smollm2 (SmolLM2-135M-Instruct, fp32, CPU)",
        "prompt": PROMPT,
        "max_new_tokens": args.tokens,
        "runs": args.runs,
        "median_seconds": {name: round(median(name), 3) for name in rows},
        "median_seconds_per_token": {name: round(per_token(name), 4) for name in rows},
        "genarm": {
            "arm": f"smollm2 prompted with {ARM_INSTRUCTION!r}, alpha 1",
            "ratio_to_greedy_per_token": round(per_token("genarm") / per_token("greedy"), 3),
            "ratio_to_greedy_per_run": [round(1 / r, 3) for r in paired("genarm", "greedy")],
            "median_ratio_to_greedy_per_run": round(statistics.median(1 / r for r in paired("genarm", "greedy")), 3),
            "target_max_ratio": 2.2,
            "forward_passes": genarm_fp,
            "forward_passes_per_token": round(sum(genarm_fp.values()) / rows["genarm"][0]["tokens"], 3),
        },
        "transfer_q": {
            "params": {**tq_params, "reward": TQ_REWARD},
            "speedup_vs_naive": round(median("naive_transfer_q") / median("transfer_q"), 2),
            "speedup_vs_naive_per_token": round(per_token("naive_transfer_q") / per_token("transfer_q"), 2),
            "speedup_vs_naive_per_run": paired("transfer_q", "naive_transfer_q"),
            "median_speedup_vs_naive_per_run": statistics.median(paired("transfer_q", "naive_transfer_q")),
            "target_min_speedup": 5.0,
            "ratio_to_greedy_per_token": round(per_token("transfer_q") / per_token("greedy"), 2),
            "forward_passes": rows["transfer_q"][0]["forward_passes"],
            "naive_generate_calls": rows["naive_transfer_q"][0]["generate_calls"],
            "same_tokens_as_naive": rows["transfer_q"][0]["token_ids"] == rows["naive_transfer_q"][0]["token_ids"],
        },
        "texts": {name: lm.decode(rows[name][0]["token_ids"]) for name in rows},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps({k: summary[k] for k in ("median_seconds_per_token", "genarm", "transfer_q")}, indent=2))


if __name__ == "__main__":
    main()
