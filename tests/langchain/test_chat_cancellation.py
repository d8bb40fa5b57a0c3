"""Abandoned and cancelled LangChain streams stop decoding and leave the model free.

``astream`` runs the generation on a worker thread. When the consumer breaks out, closes the stream or
its task is cancelled, decoding stops before the next forward pass, the task's ``CancelledError``
propagates unchanged (never "generator already executing"), and the next call has the model to itself.
A probe around the model's ``forward`` counts the passes that ran and holds one of them, so a
cancellation can arrive exactly while a step is in flight on the worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_deal import ChatDeAL, DeALLLM
from shared_core.models import LocalModel, load_model

WORKER_PREFIX = "deal-stream-"


class ForwardProbe:
    """Counts a model's forward passes; optionally holds pass number ``hold_at`` until :meth:`release`."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold_at: int | None = None
        self.entered = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, forward: Any) -> Any:
        @functools.wraps(forward)
        def probed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                number = self.calls
            if number == self.hold_at:
                self.entered.set()
                assert self._release.wait(30), "the held forward pass was never released"
            return forward(*args, **kwargs)

        return probed

    def hold(self, passes_from_now: int) -> None:
        self.hold_at = self.calls + passes_from_now

    def release(self) -> None:
        self._release.set()


@pytest.fixture()
def probe(tiny_lc_dir: str, tiny_lc: LocalModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProbe]:
    """A counting probe on the forward of the model ChatDeAL(model=tiny_lc_dir) decodes with."""
    lm = load_model(tiny_lc_dir)  # the cached copy the adapter gets, whatever happened to the cache before
    found = ForwardProbe()
    monkeypatch.setattr(lm.model, "forward", found.wrap(lm.model.forward))
    yield found
    found.release()


@pytest.fixture()
def llm(tiny_lc_dir: str, tiny_lc: LocalModel) -> ChatDeAL:
    return ChatDeAL(model=tiny_lc_dir, max_tokens=80)


@pytest.fixture()
def workers() -> set[threading.Thread]:
    """The stream worker threads that existed before the test (left alone by :func:`_workers_done`)."""
    return {t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)}


async def _workers_done(before: set[threading.Thread], prefix: str = WORKER_PREFIX) -> None:
    """Waits (serving the event loop) until the test's stream worker threads have finished and exited."""
    for _ in range(3000):
        alive = [t for t in threading.enumerate() if t.name.startswith(prefix) and t not in before]
        if not alive:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{[t.name for t in alive]} still running 30 s after the stream was abandoned")


async def _quiet(probe: ForwardProbe, seconds: float = 0.5) -> None:
    """Waits until no forward pass has started for ``seconds`` (an abandoned generation still running would)."""
    for _ in range(60):
        seen = probe.calls
        await asyncio.sleep(seconds)
        if probe.calls == seen:
            return


async def _held(probe: ForwardProbe) -> None:
    """Returns once the held forward pass is running on a worker thread."""
    assert await asyncio.to_thread(probe.entered.wait, 30), "decoding never reached the held forward pass"


async def _next_call_runs_alone(llm: ChatDeAL, probe: ForwardProbe) -> None:
    before = probe.calls
    message = await llm.ainvoke("good morning", max_tokens=6)
    assert message.response_metadata["finish_reason"] in ("length", "eos")
    assert probe.calls - before == message.response_metadata["stats"]["forward_passes"]["policy"]


async def test_breaking_out_of_astream_stops_decoding(llm: ChatDeAL, probe: ForwardProbe,
                                                      workers: set[threading.Thread]) -> None:
    chunks = llm.astream("hello")
    async for _ in chunks:
        break
    await chunks.aclose()
    await _workers_done(workers)
    await _quiet(probe)
    assert probe.calls <= 2  # the prefill and at most one step that was already under way
    await _next_call_runs_alone(llm, probe)


async def test_closing_astream_while_a_step_runs_stops_decoding(llm: ChatDeAL, probe: ForwardProbe,
                                                                workers: set[threading.Thread]) -> None:
    chunks = llm.astream("hello")
    await anext(chunks)
    probe.hold(1)  # the next pass: the one the next chunk needs
    reading = asyncio.ensure_future(anext(chunks))
    await _held(probe)
    reading.cancel()  # the reader gives up while the worker is inside a forward pass
    with pytest.raises(asyncio.CancelledError):
        await reading
    await chunks.aclose()
    probe.release()
    await _workers_done(workers)
    await _quiet(probe)
    assert probe.calls == probe.hold_at
    await _next_call_runs_alone(llm, probe)


@pytest.mark.parametrize("strategy", ["greedy", "best_of_n"])  # best_of_n: one chunk costs every forward pass
@pytest.mark.parametrize("call", ["astream", "ainvoke", "llm_astream"])
async def test_a_cancelled_task_raises_cancelled_error_and_stops_decoding(
        tiny_lc_dir: str, probe: ForwardProbe, workers: set[threading.Thread], call: str, strategy: str) -> None:
    settings: dict[str, Any] = {"model": tiny_lc_dir, "max_tokens": 80, "strategy": strategy}
    if strategy == "best_of_n":
        settings.update(reward={"type": "keywords", "words": ["sun"]}, n=2, seed=0)
    received: list[Any] = []

    async def consume() -> None:
        if call == "astream":
            async for chunk in ChatDeAL(**settings).astream("hello"):
                received.append(chunk)
        elif call == "ainvoke":
            received.append(await ChatDeAL(**settings).ainvoke("hello"))
        else:
            async for text in DeALLLM(**settings).astream("hello"):
                received.append(text)

    probe.hold(4)
    task = asyncio.create_task(consume())
    await _held(probe)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # not "ValueError: generator already executing"
    probe.release()
    await _workers_done(workers)
    await _quiet(probe)
    assert probe.calls == probe.hold_at  # the pass in flight finished; no other one started
    assert len(received) < 80
    await _next_call_runs_alone(ChatDeAL(model=tiny_lc_dir), probe)
