"""Mean reward against time for every strategy, on the same prompts and rewards, on the embedded model.

Three panels, one reward each, every prompt decoded by every strategy with the same seed (the prompt's
index) and ``max_new_tokens``:

* ``keywords``: CommonGen-style concept sets (``data/commongen_concepts.json``), reward
  ``{"type": "keywords", "words": [...]}`` (coverage in [0, 1]).
* ``length``: open questions plain greedy answers at length (``data/length_prompts.json``), reward
  ``{"type": "length", "max_words": 25}`` (0 within the budget, minus the relative overrun).
* ``safety``: borderline requests (``data/safety_prompts.json``), the embedded safety reward
  ``{"type": "safety"}`` (in (-1, 1), higher is safer).

Strategies: greedy, sample, args, deal, best_of_n at n = 2, 4, 8, cards, speculative_rejection and
transfer_q (the embedded model as its own baseline, k=2, horizon 2, so its cost stays bounded; add
more points with ``--extra``).
genarm does not apply: it needs an autoregressive reward model, and none of these rewards is one.

Time is wall seconds per prompt. Strategies run interleaved per prompt (the order rotates), so load
changes on this shared machine hit all of them alike; the headline time of a strategy is the median
over prompts of its seconds divided by greedy's seconds on the same prompt in the same pass
(``time_ratio``); ``mean_time_ratio`` divides the mean seconds instead. Rewards are means over the
prompts with their standard error. For the two new strategies the JSON says whether they reach
best_of_n n=8's mean reward in at most half its time (``target``), per panel.

Run: ``.venv/bin/python benchmarks/pareto.py`` (6 prompts per panel, 40 new tokens, one torch thread:
about 30 minutes on 2 cores at load ~3, twice that when other work saturates them); ``--quick`` for a
smoke run (2 prompts per panel, 24 tokens, about 5 minutes). Writes
``results/pareto.json`` and ``results/pareto.png`` (``pareto_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commongen_eval import DATA, machine, median, set_threads, timed, write_json  # noqa: E402

from shared_core.decoding import generate  # noqa: E402
from shared_core.models import LocalModel, load_model  # noqa: E402
from shared_core.policies import build_reward  # noqa: E402

NEW_STRATEGIES = ("cards", "speculative_rejection")
TARGET_REFERENCE = "best_of_n_8"
TARGET_TIME_SHARE = 0.5
LENGTH_BUDGET = 25


@dataclass(frozen=True)
class Run:
    """One point of the picture: a strategy with fixed parameters."""

    label: str
    strategy: str
    params: dict[str, Any]


def runs(quick: bool) -> list[Run]:
    sizes = (2, 8) if quick else (2, 4, 8)
    tq = {"baseline": "smollm2", "k": 2, "horizon": 2}
    return [
        Run("greedy", "greedy", {}),
        Run("sample", "sample", {"temperature": 0.8, "top_p": 0.95}),
        Run("args", "args", {}),
        Run("deal", "deal", {}),
        *[Run(f"best_of_n_{n}", "best_of_n", {"n": n}) for n in sizes],
        Run("cards", "cards", {}),
        Run("speculative_rejection", "speculative_rejection", {}),
        Run("transfer_q", "transfer_q", tq),
    ]


@dataclass(frozen=True)
class Panel:
    name: str
    items: list[tuple[str, dict[str, Any]]]  # (prompt, reward spec)


def panels(limit: int) -> list[Panel]:
    concepts = json.loads((DATA / "commongen_concepts.json").read_text(encoding="utf-8"))
    length = json.loads((DATA / "length_prompts.json").read_text(encoding="utf-8"))
    safety = json.loads((DATA / "safety_prompts.json").read_text(encoding="utf-8"))
    keyword_items = [
        (concepts["prompt_template"].format(words=", ".join(words)), {"type": "keywords", "words": words})
        for words in concepts["concept_sets"][:limit]
    ]
    budget = {"type": "length", "max_words": LENGTH_BUDGET}
    return [
        Panel("keywords", keyword_items),
        Panel("length", [(p, budget) for p in length["prompts"][:limit]]),
        Panel("safety", [(p, {"type": "safety"}) for p in safety["prompts"][:limit]]),
    ]


def warm_up(lm: LocalModel, plan: list[Run]) -> None:
    """Loads every model and reward once and pays first-call costs before anything is timed."""
    build_reward({"type": "safety"}).score(["warm up"])  # type: ignore[union-attr]
    for run in plan:
        generate(lm, "Hi", strategy=run.strategy, reward={"type": "keywords", "words": ["hello"]}, seed=0,
                 max_new_tokens=6, **run.params)


def one(lm: LocalModel, run: Run, prompt: str, reward: dict[str, Any], seed: int,
        max_new_tokens: int) -> dict[str, Any]:
    result, seconds = timed(lambda: generate(lm, prompt, strategy=run.strategy, reward=reward, seed=seed,
                                             max_new_tokens=max_new_tokens, **run.params))
    assert result.reward is not None, result.reward_error
    return {
        "reward": result.reward.total,
        "seconds": seconds,
        "new_tokens": result.stats.new_tokens,
        "finish_reason": result.finish_reason,
        "forward_passes": dict(result.stats.forward_passes),
        "text": result.text,
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def standard_error(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1) / len(values))


def summarize(rows: list[dict[str, dict[str, Any]]], plan: list[Run]) -> dict[str, dict[str, Any]]:
    greedy = [r["greedy"]["seconds"] for r in rows]
    summary: dict[str, dict[str, Any]] = {}
    for run in plan:
        rewards = [r[run.label]["reward"] for r in rows]
        seconds = [r[run.label]["seconds"] for r in rows]
        summary[run.label] = {
            "strategy": run.strategy,
            "params": run.params,
            "mean_reward": mean(rewards),
            "reward_standard_error": standard_error(rewards),
            "time_ratio": median([s / g for s, g in zip(seconds, greedy)]),
            "mean_time_ratio": mean(seconds) / mean(greedy),
            "mean_seconds": mean(seconds),
            "median_seconds": median(seconds),
            "mean_new_tokens": mean([float(r[run.label]["new_tokens"]) for r in rows]),
            "mean_policy_forwards": mean([float(r[run.label]["forward_passes"].get("policy", 0)) for r in rows]),
        }
    return summary


def target_check(summary: dict[str, dict[str, Any]], rows: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Whether each new strategy reaches best_of_n n=8's mean reward in at most half its time."""
    if TARGET_REFERENCE not in summary:
        return {}
    reference = summary[TARGET_REFERENCE]
    checks = {}
    for name in NEW_STRATEGIES:
        if name not in summary:
            continue
        s = summary[name]
        share_median = median([r[name]["seconds"] / r[TARGET_REFERENCE]["seconds"] for r in rows])
        share_mean = s["mean_seconds"] / reference["mean_seconds"]
        reward_gap = s["mean_reward"] - reference["mean_reward"]
        checks[name] = {
            "reward_gap_vs_best_of_n_8": reward_gap,
            "time_share_of_best_of_n_8": share_median,
            "mean_time_share_of_best_of_n_8": share_mean,
            "reaches_reward": reward_gap >= -1e-9,
            "within_half_time": share_median <= TARGET_TIME_SHARE,
            "met": reward_gap >= -1e-9 and share_median <= TARGET_TIME_SHARE,
        }
    return checks


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per reward: mean reward (± s.e.) against time as a ratio to greedy (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = list(results["panels"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.4 * len(names), 5.6), squeeze=False)
    styles = {"greedy": ("black", "o"), "sample": ("grey", "o"), "args": ("tab:green", "o"),
              "deal": ("tab:purple", "o"), "best_of_n": ("tab:blue", "o"), "cards": ("tab:red", "*"),
              "speculative_rejection": ("tab:orange", "*"), "transfer_q": ("tab:brown", "o")}
    handles: dict[str, Any] = {}
    for ax, name in zip(axes[0], names):
        summary = results["panels"][name]["summary"]
        times = [s["time_ratio"] for s in summary.values()]
        low, high = min(times) / 1.25, max(times) * 1.25
        bon = sorted((s for s in summary.values() if s["strategy"] == "best_of_n"), key=lambda s: s["params"]["n"])
        if bon:
            ax.plot([s["time_ratio"] for s in bon], [s["mean_reward"] for s in bon], "-", color="tab:blue",
                    alpha=0.4, zorder=1)
        reference = summary.get(TARGET_REFERENCE)
        if reference is not None:
            limit = TARGET_TIME_SHARE * reference["time_ratio"]
            ax.axhline(reference["mean_reward"], color="tab:blue", lw=0.8, ls=":", zorder=0)
            ax.axvline(limit, color="tab:blue", lw=0.8, ls=":", zorder=0)
            ax.fill_between([low, limit], reference["mean_reward"], 1e6, color="tab:blue", alpha=0.07, zorder=0,
                            label="target: best_of_n n=8's reward in at most half its time")
        for label, s in summary.items():
            color, marker = styles.get(s["strategy"], ("tab:cyan", "o"))
            new = s["strategy"] in NEW_STRATEGIES
            drawn = ax.errorbar(s["time_ratio"], s["mean_reward"], yerr=s["reward_standard_error"], fmt=marker,
                                markersize=15 if new else 7, color=color, capsize=3, zorder=3)
            handles.setdefault(s["strategy"], drawn)
            if s["strategy"] == "best_of_n":
                ax.annotate(f"n={s['params']['n']}", (s["time_ratio"], s["mean_reward"]), textcoords="offset points",
                            xytext=(5, -12), fontsize=8, color=color)
        rewards = [s["mean_reward"] for s in summary.values()]
        errors = [s["reward_standard_error"] for s in summary.values()]
        spread = max(max(rewards) - min(rewards), 0.05)
        ax.set_ylim(min(r - e for r, e in zip(rewards, errors)) - 0.08 * spread,
                    max(r + e for r, e in zip(rewards, errors)) + 0.08 * spread)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ticks = FuncFormatter(lambda value, _: f"{value:g}x")
        ax.xaxis.set_major_formatter(ticks)
        ax.xaxis.set_minor_formatter(ticks)
        ax.tick_params(axis="x", which="minor", labelsize=8)
        ax.set_xlabel("time per prompt / greedy's (median over prompts, log scale)")
        ax.set_ylabel(f"mean {name} reward (± s.e.)")
        ax.set_title(f"{name}: {results['panels'][name]['prompts']} prompts, {results['max_new_tokens']} new tokens")
        ax.grid(True, which="both", alpha=0.25)
    legend = list(handles.values())
    labels = [name.replace("_", " ") for name in handles]
    shaded = axes[0][0].collections[0] if axes[0][0].collections else None
    if shaded is not None:
        legend.append(shaded)
        labels.append("best_of_n n=8's reward in at most half its time")
    fig.legend(legend, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=9, frameon=False)
    fig.suptitle(f"Reward against time on the embedded model ({results['model']}, CPU, one torch thread)",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts per panel, 24 new tokens")
    parser.add_argument("--limit", type=int, default=None, help="prompts per panel (default 6; 2 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 40 (24 with --quick)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per prompt (median seconds)")
    parser.add_argument("--panels", default="keywords,length,safety", help="comma-separated subset")
    parser.add_argument("--only", default=None, help="comma-separated run labels (greedy is always run)")
    parser.add_argument("--params", default="{}",
                        help='JSON overrides per run label, e.g. \'{"cards": {"candidates": 4}}\'')
    parser.add_argument("--extra", default="{}",
                        help='JSON of more runs, e.g. \'{"cards_k8": {"strategy": "cards", "candidates": 8}}\'')
    parser.add_argument("--replot", default=None, help="only redraw the PNG of an existing results JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--out", default=None, help="JSON file name under results/ (default pareto.json)")
    args = parser.parse_args()
    if args.replot:
        source = Path(args.replot)
        plot(json.loads(source.read_text(encoding="utf-8")), source.with_suffix(".png"))
        print(f"wrote {source.with_suffix('.png')}")
        return
    set_threads(args.threads)
    limit = args.limit or (2 if args.quick else 6)
    max_new_tokens = args.max_new_tokens or (24 if args.quick else 40)
    out = args.out or ("pareto_quick.json" if args.quick else "pareto.json")

    overrides = json.loads(args.params)
    plan = [Run(r.label, r.strategy, {**r.params, **overrides.get(r.label, {})}) for r in runs(args.quick)]
    for label, spec in json.loads(args.extra).items():
        spec = dict(spec)
        plan.append(Run(label, spec.pop("strategy"), spec))
    if args.only:
        wanted = set(args.only.split(",")) | {"greedy"}
        plan = [r for r in plan if r.label in wanted]
    chosen_panels = [p for p in panels(limit) if p.name in args.panels.split(",")]

    started = time.time()
    info = machine()
    lm = load_model(args.model)
    warm_up(lm, plan)

    results: dict[str, Any] = {
        "benchmark": "pareto",
        "model": args.model,
        "max_new_tokens": max_new_tokens,
        "repeats": args.repeats,
        "quick": args.quick,
        "runs": {r.label: {"strategy": r.strategy, "params": r.params} for r in plan},
        "not_run": {"genarm": "needs an autoregressive reward model (an 'arm' reward); none of these rewards is one"},
        "machine": info,
        "panels": {},
    }
    labels = [r.label for r in plan]
    by_label = {r.label: r for r in plan}
    for panel in chosen_panels:
        panel_started = time.time()
        load_before = os.getloadavg()
        rows: list[dict[str, dict[str, Any]]] = []
        for index, (prompt, reward) in enumerate(panel.items):
            row: dict[str, dict[str, Any]] = {}
            seconds: dict[str, list[float]] = {label: [] for label in labels}
            for repeat in range(args.repeats):
                shift = (index + repeat) % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    record = one(lm, by_label[label], prompt, reward, index, max_new_tokens)
                    seconds[label].append(record["seconds"])
                    row[label] = record
            for label in labels:
                row[label]["seconds"] = median(seconds[label])
            rows.append(row)
            line = "  ".join(f"{label}={row[label]['reward']:+.2f}/{row[label]['seconds']:.1f}s" for label in labels)
            print(f"[{panel.name} {index + 1}/{len(panel.items)}] {line}", flush=True)
        summary = summarize(rows, plan)
        results["panels"][panel.name] = {
            "reward": panel.items[0][1] if panel.name != "keywords" else {"type": "keywords", "words": "per prompt"},
            "prompts": len(rows),
            "seconds": time.time() - panel_started,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "summary": summary,
            "target": target_check(summary, rows),
            "rows": [{"prompt": prompt, **row} for (prompt, _), row in zip(panel.items, rows)],
        }
        print_panel(panel.name, summary, results["panels"][panel.name]["target"])
    results["total_seconds"] = time.time() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    path = write_json(out, results)
    png = path.with_suffix(".png")
    plot(results, png)
    print(f"wrote {path} and {png}")


def print_panel(name: str, summary: dict[str, dict[str, Any]], target: dict[str, Any]) -> None:
    print(f"\n{name}: {'run':<24} {'reward':>8} {'± s.e.':>7} {'time x greedy':>14} {'mean-time x':>12} {'tokens':>7}")
    for label, s in summary.items():
        print(f"{'':<{len(name) + 2}}{label:<24} {s['mean_reward']:>8.3f} {s['reward_standard_error']:>7.3f} "
              f"{s['time_ratio']:>14.2f} {s['mean_time_ratio']:>12.2f} {s['mean_new_tokens']:>7.1f}")
    for label, t in target.items():
        print(f"  {label}: reward gap vs best_of_n_8 {t['reward_gap_vs_best_of_n_8']:+.3f}, time share "
              f"{t['time_share_of_best_of_n_8']:.2f} (mean {t['mean_time_share_of_best_of_n_8']:.2f}) -> "
              f"{'met' if t['met'] else 'not met'}")
    print(flush=True)


if __name__ == "__main__":
    main()
