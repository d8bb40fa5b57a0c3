"""Soak test: 1,000 mixed calls in one process, with its resident memory (RSS) sampled after every call.

Usage: .venv/bin/python benchmarks/soak.py [--calls 1000] [--max-seconds 1500] [--model tiny|smollm2]
Writes benchmarks/results/soak.json.

The calls cycle through what a long-running service does: short greedy, sampled, ``args``, ``deal``
and ``best_of_n`` generations (keyword, length and classifier rewards), core streams closed after the
first delta, LangChain ``invoke``, ``stream`` abandoned after the first chunk, ``astream`` closed early
and ``astream`` tasks cancelled mid-generation (on one long-lived event loop). The default model is a
2-layer random Llama with the SmolLM2 tokenizer (fast: the soak is about what each call leaves behind,
not about speed); ``--model smollm2`` runs the embedded model.

Memory is reported as flat when, after the warm-up (the first 10% of calls), the RSS grows by less than
``--max-slope-mb`` per 100 calls over the second half (least-squares slope) and its range stays under
``--max-range-mb``. The allocator keeps freed pages, so RSS moves by a few MB between runs without any
leak; the count of Python objects after warm-up and at the end, and the RSS after ``malloc_trim``, tell
the two apart. Threads alive at the end are reported too: an abandoned stream must not leave a worker
thread behind. The run is bounded in count (``--calls``) and time (``--max-seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from shared_core import generate, load_model, stream
from shared_core.models import LocalModel

PROMPTS = ["Give me two tips for staying safe online.", "Tell me about the sun.", "How do I cook rice?",
           "Write one sentence about a dog."]
KEYWORDS = {"type": "keywords", "words": ["sun", "warm"]}
TINY_DESCRIPTION = "2-layer random Llama with the SmolLM2 tokenizer, plus a 2-layer random Llama reward model"


def tiny_models(folder: Path) -> tuple[str, str]:
    """A random 2-layer Llama and a random 2-layer Llama reward model, both with the SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = load_model("smollm2").tokenizer
    settings = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    paths = []
    kinds = (("policy", LlamaForCausalLM, {}), ("rm", LlamaForSequenceClassification, {"num_labels": 1}))
    for name, cls, extra in kinds:
        torch.manual_seed(0)
        cls(LlamaConfig(**settings, **extra)).save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths.append(str(folder / name))
    return paths[0], paths[1]


class Calls:
    """The mixed call kinds; each returns when its call is over (a closed stream counts as over)."""

    def __init__(self, lm: LocalModel, model_name: str, classifier: str | None, tokens: int) -> None:
        from langchain_deal import ChatDeAL

        self.lm = lm
        self.tokens = tokens
        self.classifier = classifier
        self.chat = ChatDeAL(model=model_name, max_tokens=tokens)
        self.loop = asyncio.new_event_loop()
        self.kinds: list[tuple[str, Callable[[int], Any]]] = [
            ("greedy", lambda i: generate(lm, PROMPTS[i % 4], max_new_tokens=tokens)),
            ("sample", lambda i: generate(lm, PROMPTS[i % 4], strategy="sample", temperature=0.8, seed=i,
                                          max_new_tokens=tokens)),
            ("args_keywords", lambda i: generate(lm, PROMPTS[i % 4], strategy="args", reward=KEYWORDS, top_k=4,
                                                 max_new_tokens=tokens)),
            ("deal_keywords", lambda i: generate(lm, PROMPTS[i % 4], strategy="deal", reward=KEYWORDS, top_k=3,
                                                 lookahead=3, search_every=2, max_new_tokens=tokens)),
            ("best_of_n_length", lambda i: generate(lm, PROMPTS[i % 4], strategy="best_of_n", n=3, seed=i,
                                                    reward={"type": "length", "max_words": 4},
                                                    max_new_tokens=tokens)),
            ("stream_closed", self.stream_closed),
            ("langchain_invoke", lambda i: self.chat.invoke(PROMPTS[i % 4])),
            ("langchain_stream_abandoned", self.langchain_stream_abandoned),
            ("langchain_astream_closed", lambda i: self.loop.run_until_complete(self.astream_closed(i))),
            ("langchain_astream_cancelled", lambda i: self.loop.run_until_complete(self.astream_cancelled(i))),
        ]
        if classifier is not None:
            self.kinds.append(("args_classifier", lambda i: generate(
                lm, PROMPTS[i % 4], strategy="args", reward={"type": "classifier", "model": classifier}, top_k=4,
                max_new_tokens=tokens)))

    def stream_closed(self, i: int) -> None:
        deltas = stream(self.lm, PROMPTS[i % 4], max_new_tokens=self.tokens * 4)
        next(deltas, None)
        deltas.close()
        assert deltas.result.finish_reason in ("cancelled", "eos", "length", "stop")

    def langchain_stream_abandoned(self, i: int) -> None:
        for _ in self.chat.stream(PROMPTS[i % 4], max_tokens=self.tokens * 4):
            break

    async def astream_closed(self, i: int) -> None:
        chunks = self.chat.astream(PROMPTS[i % 4], max_tokens=self.tokens * 4)
        async for _ in chunks:
            break
        await chunks.aclose()

    async def astream_cancelled(self, i: int) -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in self.chat.astream(PROMPTS[i % 4], max_tokens=self.tokens * 4):
                first.set()

        task = asyncio.create_task(consume())
        waiter = asyncio.create_task(first.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.05))  # let abandoned async generators finish closing
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


def slope_per_100(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index, per 100 indices."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    den = sum((x - mean_x) ** 2 for x in range(n))
    return 100.0 * num / den


def python_objects() -> int:
    """Objects the garbage collector tracks, after a full collection (grows with a Python-level leak)."""
    gc.collect()
    return len(gc.get_objects())


def trimmed_rss_mb(process: psutil.Process) -> float | None:
    """RSS after returning free heap pages to the system (glibc ``malloc_trim``); ``None`` elsewhere.

    Memory the allocator keeps for reuse shows in RSS without being leaked; a real leak survives the trim.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    gc.collect()
    libc.malloc_trim(0)
    return round(process.memory_info().rss / 2**20, 1)


def machine() -> dict[str, Any]:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "note": "shared machine: other processes ran at the same time",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=1500.0, help="stop early after this long")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--tokens", type=int, default=8, help="max new tokens per generation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spin-waits on shared CPUs)")
    parser.add_argument("--max-slope-mb", type=float, default=2.0, help="flat: RSS growth per 100 calls below this")
    parser.add_argument("--max-range-mb", type=float, default=64.0, help="flat: RSS max-min after warm-up below this")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = parser.parse_args()
    if args.calls < 20:
        parser.error("--calls must be at least 20 (the first 10% are the warm-up)")
    torch.set_num_threads(args.threads)
    process = psutil.Process()
    rss_before_load = process.memory_info().rss

    with tempfile.TemporaryDirectory(prefix="deal-soak-") as scratch:
        if args.model == "tiny":
            model_name, classifier = tiny_models(Path(scratch))
        else:
            model_name, classifier = "smollm2", None
        lm = load_model(model_name)
        calls = Calls(lm, model_name, classifier, args.tokens)
        threads_start = threading.active_count()
        rss: list[float] = []
        kinds: Counter[str] = Counter()
        errors: list[str] = []
        started = time.perf_counter()
        objects_after_warm_up = None
        warm_calls = max(args.calls // 10, 1)
        for i in range(args.calls):
            if time.perf_counter() - started > args.max_seconds:
                break
            if i == warm_calls:
                objects_after_warm_up = python_objects()
            kind, call = calls.kinds[i % len(calls.kinds)]
            try:
                call(i)
            except Exception as exc:  # a soak reports failures instead of stopping at the first
                errors.append(f"call {i} ({kind}): {type(exc).__name__}: {exc}")
            kinds[kind] += 1
            rss.append(process.memory_info().rss / 2**20)
        seconds = time.perf_counter() - started
        calls.close()
        threads_end = threading.active_count()
        objects_end = python_objects()
        rss_after_gc = process.memory_info().rss / 2**20
        rss_after_trim = trimmed_rss_mb(process)

    done = len(rss)
    warm = max(done // 10, 1)
    steady = rss[warm:]
    second_half = rss[done // 2:]
    slope = slope_per_100(second_half)
    spread = max(steady) - min(steady) if steady else 0.0
    report = {
        "machine": machine(),
        "model": "smollm2" if args.model == "smollm2" else TINY_DESCRIPTION,
        "max_new_tokens": args.tokens,
        "calls_planned": args.calls,
        "calls_done": done,
        "stopped_by_time_limit": done < args.calls,
        "seconds": round(seconds, 1),
        "calls_per_kind": dict(kinds),
        "errors": errors[:20],
        "error_count": len(errors),
        "rss_mb_before_model_load": round(rss_before_load / 2**20, 1),
        "rss_mb_after_first_call": round(rss[0], 1) if rss else None,
        "rss_mb_after_warm_up": round(rss[warm - 1], 1) if rss else None,
        "rss_mb_end": round(rss[-1], 1) if rss else None,
        "rss_mb_end_after_gc": round(rss_after_gc, 1),
        "rss_mb_end_after_malloc_trim": rss_after_trim,
        "python_objects_after_warm_up": objects_after_warm_up,
        "python_objects_end": objects_end,
        "rss_mb_max_minus_min_after_warm_up": round(spread, 2),
        "rss_mb_slope_per_100_calls_second_half": round(slope, 3),
        "threads_at_start": threads_start,
        "threads_at_end": threads_end,
        "rss_mb_every_50_calls": [round(v, 1) for v in rss[::50]],
        "flat": bool(abs(slope) < args.max_slope_mb and spread < args.max_range_mb),
        "criteria": {"max_slope_mb_per_100_calls": args.max_slope_mb, "max_range_mb_after_warm_up": args.max_range_mb,
                     "warm_up_calls": warm},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mb_every_50_calls"}, indent=2))


if __name__ == "__main__":
    main()
