"""Train an ARM on the shipped preference file and show it moves decoding toward the preferred behaviour.

The example preferences (``shared_core/data/arm_preferences.jsonl``) prefer a direct one-sentence answer
over the same answer padded with filler ("Great question! ... I hope this helps!"). The script:

1. trains an ARM from the embedded model with ``train_arm`` (the same code as ``deal train-arm``),
   timing it; or reuses ``--arm FOLDER``;
2. on the held-out pairs (``arm_heldout.jsonl``, prompts never trained on): how often the ARM's reward
   ``log pi_ARM(y | x)`` ranks chosen above rejected, and the mean margin, for the trained ARM and for
   the untrained base model used as an ARM;
3. on the held-out prompts: plain greedy decoding of the base model vs ``genarm`` guided by the
   trained ARM (alpha 1), and by the base model prompted with a preference statement (the stand-in
   when no trained ARM exists). Reported: words per answer, the share of answers that end on their
   own (EOS) within the token budget, and the conciseness reward ``{"type": "length", "max_words": 20}``
   (0 within 20 words, negative beyond), averaged over prompts. (Guiding with the untrained base as
   its own ARM changes nothing under greedy decoding: ``argmax (1 + alpha) log p = argmax log p``.)

Results go to ``benchmarks/results/train_arm_eval.json``.

Usage: ``python benchmarks/train_arm_eval.py [--arm FOLDER] [--out FOLDER] [--tokens 64] [--threads N]``
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
from shared_core.arm_training import encode_pairs, example_path, load_preferences, preference_margins, train_arm
from shared_core.policies import build_reward

RESULTS = Path(__file__).parent / "results" / "train_arm_eval.json"
CONCISE = {"type": "length", "max_words": 20}
PROMPTED_INSTRUCTION = "Answer with one short, direct sentence. No greetings, no filler."


def margins_summary(model, lm, pairs) -> dict:
    encoded = encode_pairs(lm, pairs, 256)
    margins = preference_margins(model, encoded, pad_id=lm.pad_token_id)
    return {"accuracy": round(sum(m > 0 for m in margins) / len(margins), 3),
            "mean_margin_nats": round(statistics.mean(margins), 2)}


def decode_summary(lm, prompts, tokens: int, **kwargs) -> dict:
    reward = build_reward(CONCISE)
    words, ended, scores, seconds, samples = [], [], [], [], []
    for prompt in prompts:
        result = generate(lm, prompt, max_new_tokens=tokens, **kwargs)
        words.append(len(result.text.split()))
        ended.append(result.finish_reason == "eos")
        scores.append(reward.score([result.text], prompt=prompt)[0])
        seconds.append(result.stats.seconds)
        samples.append({"prompt": prompt, "text": result.text})
    return {"mean_words": round(statistics.mean(words), 1), "ended_on_their_own": round(sum(ended) / len(ended), 3),
            "mean_concise_reward": round(statistics.mean(scores), 3), "seconds": round(sum(seconds), 1),
            "samples": samples[:4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", default=None, help="an already trained ARM folder (skips training)")
    parser.add_argument("--out", default=str(Path.home() / ".cache" / "deal" / "arms" / "concise-smollm2"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    summary: dict = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                 "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}}
    arm_dir = args.arm
    if arm_dir is None:
        report = train_arm("smollm2", None, args.out, log=lambda line: print(line, flush=True))
        arm_dir = args.out
        summary["training"] = {k: v for k, v in report.to_dict().items() if k != "losses"}
    elif (Path(arm_dir) / "arm_training.json").exists():  # written by train_arm / deal train-arm
        report_dict = json.loads((Path(arm_dir) / "arm_training.json").read_text(encoding="utf-8"))
        summary["training"] = {k: v for k, v in report_dict.items() if k != "losses"}
    summary["arm"] = arm_dir

    base = load_model("smollm2")
    arm = load_model(arm_dir)
    held = load_preferences(example_path("arm_heldout.jsonl"))
    summary["heldout_pairs"] = {
        "pairs": len(held),
        "base_as_arm": margins_summary(base.model, base, held),
        "trained_arm": margins_summary(arm.model, base, held),
    }
    print(json.dumps(summary["heldout_pairs"], indent=2), flush=True)

    prompts = [pair.prompt for pair in held]
    summary["decoding"] = {"prompts": len(prompts), "max_new_tokens": args.tokens, "reward": CONCISE}
    runs = {
        "greedy_base": {},
        "genarm_trained_arm": {"strategy": "genarm", "reward": {"type": "arm", "model": arm_dir, "weight": 1.0}},
        "genarm_prompted_arm": {"strategy": "genarm", "reward": {"type": "arm", "model": "smollm2", "weight": 1.0,
                                                                  "instruction": PROMPTED_INSTRUCTION}},
    }
    for name, kwargs in runs.items():
        started = time.perf_counter()
        summary["decoding"][name] = decode_summary(base, prompts, args.tokens, **kwargs)
        print(name, {k: v for k, v in summary["decoding"][name].items() if k != "samples"},
              f"{time.perf_counter() - started:.0f}s", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
