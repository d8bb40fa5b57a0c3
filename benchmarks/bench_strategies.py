"""Speed of the guided strategies against plain greedy, side by side in one run on the embedded model.

* ``args`` at k=10 with a model-based reward, ``{"type": "classifier", "model": "smollm2"}``: the
  embedded weights loaded as a sequence classifier. Its tokenizer matches the policy's, so ARGS uses
  the incremental scorer: one cached classifier forward per token rates all 10 candidates. Run twice:
  with the classifier at its default dtype (``"auto"``: bf16 on a CPU with bf16 instructions, as here,
  else fp32; the policy stays fp32) and in explicit fp32 (``"dtype": "float32"``). A classifier forward
  over 11 tokens costs ~1.5x a 1-token policy forward in fp32, so fp32 args stays above 2.2x greedy;
  bf16 halves the classifier's share.
* ``naive args``: the same selection rule written the way public reference code does it: every step,
  the 10 candidate continuations are decoded to text and re-scored from scratch by the classifier
  (prompt + continuation, 10 rows, no cache). The policy side keeps its KV cache, so the difference
  is the reward side alone.
* ``best_of_n`` with n=8: one prefill, 8 rows decoded as a batch, rows leaving at EOS.

Time per generated token is the headline (greedy can stop earlier than the others); wall time per
prompt is reported as well. For best_of_n "per generated token" is per decoding step (each step
generates one token in every live row), and per returned token is given too. Strategies are
interleaved per prompt and repeated; medians are reported.

Run: ``.venv/bin/python benchmarks/bench_strategies.py`` (about 5 minutes on 2 idle cores).
Writes ``results/bench_strategies.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from commongen_eval import machine, median, set_threads, timed, write_json  # noqa: E402

from shared_core.decoding import generate  # noqa: E402
from shared_core.hf_compat import cache_argument, output_cache  # noqa: E402
from shared_core.models import LocalModel, load_model  # noqa: E402
from shared_core.policies import build_reward  # noqa: E402

MAX_NEW_TOKENS = 48
TOP_K = 10
PROMPTS = [
    "Describe the water cycle.",
    "Explain how the internet works.",
    "What are the benefits of regular exercise?",
]
CLASSIFIER = {"type": "classifier", "model": "smollm2"}
CLASSIFIER_FP32 = {**CLASSIFIER, "dtype": "float32"}


def naive_args(lm: LocalModel, prompt: str, reward: Any, max_new_tokens: int, top_k: int = TOP_K,
               weight: float = 1.0) -> dict[str, Any]:
    """ARGS as public reference code does it: every step, re-score the k full sequences from text.

    The k candidate sequences (chat-formatted prompt + continuation + candidate) are decoded to text,
    re-tokenized and run through the classifier from scratch (one padded batch, no cache). They are the
    same sequences the incremental scorer rates, so both pick the same tokens; only the reward side
    differs (the policy keeps its KV cache here too).
    """
    prompt_ids = lm.render(prompt)
    _, tokenizer = reward.load()
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
        logits, cache = out.logits[0, -1], output_cache(out)
        generated: list[int] = []
        for _ in range(max_new_tokens):
            top = torch.topk(torch.log_softmax(logits.float(), dim=-1), top_k)
            candidates = top.indices.tolist()
            texts = [tokenizer.decode(prompt_ids + generated + [c], skip_special_tokens=False) for c in candidates]
            sequences = tokenizer(texts, add_special_tokens=False)["input_ids"]
            scores = torch.tensor(reward.score_ids(sequences))
            token = candidates[int(torch.argmax(top.values + weight * scores))]
            generated.append(token)
            if token in lm.eos_token_ids:
                break
            out = lm.model(input_ids=torch.tensor([[token]]), use_cache=True, logits_to_keep=1,
                           **{cache_argument(lm.model): cache})
            logits = out.logits[0, -1]
    return {"new_tokens": len(generated), "token_ids": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--out", default="bench_strategies.json")
    args = parser.parse_args()
    set_threads(args.threads)

    lm = load_model(args.model)
    classifier = build_reward(CLASSIFIER)
    classifier_fp32 = build_reward(CLASSIFIER_FP32)
    assert classifier is not None and classifier_fp32 is not None
    keywords = {"type": "keywords", "words": ["water", "energy"]}
    # warm up: weights loaded, first-call overheads paid
    generate(lm, "Hi", max_new_tokens=4)
    generate(lm, "Hi", strategy="args", reward=classifier, max_new_tokens=4)
    generate(lm, "Hi", strategy="args", reward=classifier_fp32, max_new_tokens=4)
    generate(lm, "Hi", strategy="best_of_n", reward=keywords, max_new_tokens=4)

    runs: dict[str, Callable[[str], dict[str, Any]]] = {
        "greedy": lambda p: _summary(generate(lm, p, max_new_tokens=MAX_NEW_TOKENS)),
        "args_classifier_k10": lambda p: _summary(generate(lm, p, strategy="args", reward=classifier, top_k=TOP_K,
                                                           max_new_tokens=MAX_NEW_TOKENS)),
        "args_classifier_fp32_k10": lambda p: _summary(generate(lm, p, strategy="args", reward=classifier_fp32,
                                                                top_k=TOP_K, max_new_tokens=MAX_NEW_TOKENS)),
        "best_of_n_8": lambda p: _summary(generate(lm, p, strategy="best_of_n", reward=keywords, n=8, seed=0,
                                                   max_new_tokens=MAX_NEW_TOKENS)),
    }
    if not args.skip_naive:
        runs["naive_args_classifier_k10"] = lambda p: naive_args(lm, p, classifier, MAX_NEW_TOKENS)

    names = list(runs)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index, prompt in enumerate(PROMPTS):
        for repeat in range(args.repeats):
            shift = (index + repeat) % len(names)
            for name in names[shift:] + names[:shift]:
                info, seconds = timed(lambda: runs[name](prompt))
                info["seconds"] = seconds
                info["prompt"] = prompt
                samples[name].append(info)
            line = "  ".join(f"{n}={samples[n][-1]['seconds']:.2f}s/{samples[n][-1]['new_tokens']}t" for n in names)
            print(f"[{prompt[:30]} #{repeat + 1}] {line}", flush=True)

    def per_token(info: dict[str, Any]) -> float:
        return info["seconds"] / max(info.get("decoding_steps") or info["new_tokens"], 1)

    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = samples[name]
        summary[name] = {
            "median_seconds_per_prompt": median([r["seconds"] for r in rows]),
            "median_seconds_per_generated_token": median([per_token(r) for r in rows]),
            "median_new_tokens": median([float(r["new_tokens"]) for r in rows]),
        }
        if name.startswith("best_of_n"):
            summary[name]["median_seconds_per_returned_token"] = median(
                [r["seconds"] / max(r["new_tokens"], 1) for r in rows])
    greedy = summary["greedy"]
    for name in names:
        s = summary[name]
        s["per_token_ratio_vs_greedy"] = s["median_seconds_per_generated_token"] / greedy["median_seconds_per_generated_token"]
        s["per_prompt_ratio_vs_greedy"] = s["median_seconds_per_prompt"] / greedy["median_seconds_per_prompt"]
        if "median_seconds_per_returned_token" in s:
            s["per_returned_token_ratio_vs_greedy"] = (
                s["median_seconds_per_returned_token"] / greedy["median_seconds_per_generated_token"])
    if "naive_args_classifier_k10" in summary:
        summary["args_classifier_k10"]["speedup_vs_naive_per_token"] = (
            summary["naive_args_classifier_k10"]["median_seconds_per_generated_token"]
            / summary["args_classifier_k10"]["median_seconds_per_generated_token"])
        same = [a["token_ids"] == b["token_ids"]
                for a, b in zip(samples["args_classifier_k10"], samples["naive_args_classifier_k10"])]
        summary["args_classifier_k10"]["same_tokens_as_naive"] = f"{sum(same)}/{len(same)}"
    default_vs_fp32 = [a["token_ids"] == b["token_ids"]
                       for a, b in zip(samples["args_classifier_k10"], samples["args_classifier_fp32_k10"])]
    summary["args_classifier_k10"]["same_tokens_as_fp32_classifier"] = f"{sum(default_vs_fp32)}/{len(default_vs_fp32)}"
    payload = {
        "benchmark": "bench_strategies",
        "model": args.model,
        "max_new_tokens": MAX_NEW_TOKENS,
        "reward_for_args": CLASSIFIER,
        "classifier_default_dtype": str(classifier.torch_dtype),
        "reward_for_args_fp32": CLASSIFIER_FP32,
        "reward_for_best_of_n": keywords,
        "prompts": PROMPTS,
        "repeats": args.repeats,
        "machine": machine(),
        "summary": summary,
        "samples": samples,
    }
    path = write_json(args.out, payload)
    print()
    for name, s in summary.items():
        extra = ""
        if "speedup_vs_naive_per_token" in s:
            extra = f"  {s['speedup_vs_naive_per_token']:.1f}x faster than naive"
        if "per_returned_token_ratio_vs_greedy" in s:
            extra = f"  ({s['per_returned_token_ratio_vs_greedy']:.2f}x per returned token)"
        print(f"{name:<28} {s['median_seconds_per_generated_token'] * 1000:7.1f} ms/token "
              f"{s['per_token_ratio_vs_greedy']:5.2f}x greedy per token, {s['median_seconds_per_prompt']:6.2f} s/prompt "
              f"{s['per_prompt_ratio_vs_greedy']:5.2f}x{extra}")
    print(f"wrote {path}")


def _summary(result: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"new_tokens": result.stats.new_tokens, "forward_passes": result.stats.forward_passes,
                            "token_ids": result.token_ids}
    if result.strategy == "best_of_n":
        # each batched step generates one token for every live row: the longest sample sets the steps
        info["decoding_steps"] = result.stats.forward_passes.get("policy", 0)
        info["sample_tokens"] = result.stats.extra.get("sample_tokens")
    return info


if __name__ == "__main__":
    main()
