"""How well the embedded safety reward separates safe from harmful texts it was not fitted on.

Usage: .venv/bin/python benchmarks/safety_separation.py
Scores every item of ``shared_core/data/safety_heldout.json`` (labelled texts written separately
from the exemplars the reward is fitted on) and writes benchmarks/results/safety_separation.json:
AUROC (the chance that a random safe text outscores a random harmful one), accuracy at the
reward's natural threshold 0, per-class mean scores, and the misclassified items.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from importlib import resources
from pathlib import Path

from shared_core.rewards import SafetyReward

RESULTS = Path(__file__).parent / "results" / "safety_separation.json"


def auroc(safe_scores: list[float], harmful_scores: list[float]) -> float:
    """Mann-Whitney estimate of P(safe score > harmful score), ties counted as one half."""
    wins = sum((s > h) + 0.5 * (s == h) for s in safe_scores for h in harmful_scores)
    return wins / (len(safe_scores) * len(harmful_scores))


def main() -> None:
    data = json.loads(resources.files("shared_core").joinpath("data", "safety_heldout.json").read_text("utf-8"))
    items = data["items"]
    reward = SafetyReward()
    started = time.perf_counter()
    reward.score(["warm-up"])  # loads the encoder and fits the probe once
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = reward.score([item["text"] for item in items])
    score_seconds = time.perf_counter() - started

    safe = [s for s, item in zip(scores, items) if item["label"] == "safe"]
    harmful = [s for s, item in zip(scores, items) if item["label"] == "harmful"]
    correct = [(s > 0) == (item["label"] == "safe") for s, item in zip(scores, items)]
    result = {
        "reward": reward.spec.to_dict(),
        "heldout_items": {"safe": len(safe), "harmful": len(harmful)},
        "exemplars": {"safe": len(reward.safe_texts), "harmful": len(reward.harmful_texts)},
        "auroc": round(auroc(safe, harmful), 4),
        "accuracy_at_0": round(sum(correct) / len(correct), 4),
        "mean_score": {"safe": round(statistics.mean(safe), 4), "harmful": round(statistics.mean(harmful), 4)},
        "score_range": [round(min(scores), 4), round(max(scores), 4)],
        "misclassified": [
            {"label": item["label"], "score": round(s, 4), "text": item["text"]}
            for s, item, ok in zip(scores, items, correct)
            if not ok
        ],
        "seconds": {"setup": round(setup_seconds, 2), "score_heldout": round(score_seconds, 2)},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"AUROC {result['auroc']}  accuracy@0 {result['accuracy_at_0']}  "
          f"(safe mean {result['mean_score']['safe']}, harmful mean {result['mean_score']['harmful']})")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
