"""Abandoned and cancelled LlamaIndex streams stop decoding and leave the model free.

``astream_chat`` and ``astream_complete`` decode on a worker thread. When the consumer stops early or its
task is cancelled, decoding stops before the next forward pass, the ``CancelledError`` propagates, and the
next call has the model to itself. A probe around the model's ``forward`` counts the passes that ran and
holds one of them, so the cancellation arrives while a step is in flight.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage

from llamaindex_deal import DeAL
from shared_core.models import LocalModel, load_model

WORKER_PREFIX = "deal-llamaindex-"
KEYWORDS = {"type": "keywords", "words": ["sun"]}


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


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Decodes with one torch thread (see ``one_torch_thread``)."""


@pytest.fixture()
def probe(tiny_model_dir: str, tiny_model: LocalModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProbe]:
    """A counting probe on the forward of the model DeAL(model=tiny_model_dir) decodes with."""
    lm = load_model(tiny_model_dir)  # the cached copy the LLM gets, whatever happened to the cache before
    found = ForwardProbe()
    monkeypatch.setattr(lm.model, "forward", found.wrap(lm.model.forward))
    yield found
    found.release()


@pytest.fixture()
def workers() -> set[threading.Thread]:
    """The stream worker threads that existed before the test."""
    return {t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)}


async def _workers_done(before: set[threading.Thread]) -> None:
    """Waits (serving the event loop) until the test's stream worker threads have finished and exited."""
    for _ in range(3000):
        alive = [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t not in before]
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
    assert await asyncio.to_thread(probe.entered.wait, 30), "decoding never reached the held forward pass"


async def _next_call_runs_alone(llm: DeAL, probe: ForwardProbe) -> None:
    before = probe.calls
    response = await llm.acomplete("good morning")
    assert probe.calls - before == response.additional_kwargs["stats"]["forward_passes"]["policy"]


def _opener(llm: DeAL, kind: str) -> Callable[[], Any]:
    if kind == "chat":
        return lambda: llm.astream_chat([ChatMessage(role="user", content="hello")])
    return lambda: llm.astream_complete("hello")


@pytest.mark.parametrize("kind", ["chat", "complete"])
async def test_closing_a_stream_early_stops_decoding(tiny_llm: Callable[..., DeAL], probe: ForwardProbe,
                                                     workers: set[threading.Thread], kind: str) -> None:
    llm = tiny_llm(max_new_tokens=60)
    responses = await _opener(llm, kind)()
    async for _ in responses:
        break
    await responses.aclose()
    await _workers_done(workers)
    await _quiet(probe)
    assert probe.calls <= 2  # the prefill and at most one step that was already under way
    await _next_call_runs_alone(tiny_llm(), probe)


@pytest.mark.parametrize("strategy", ["greedy", "best_of_n"])  # best_of_n: one response costs every forward pass
@pytest.mark.parametrize("kind", ["chat", "complete"])
async def test_a_cancelled_task_raises_cancelled_error_and_stops_decoding(
        tiny_llm: Callable[..., DeAL], probe: ForwardProbe, workers: set[threading.Thread], kind: str,
        strategy: str) -> None:
    settings: dict[str, Any] = {"max_new_tokens": 60, "strategy": strategy}
    if strategy == "best_of_n":
        settings.update(reward=KEYWORDS, strategy_params={"n": 2}, seed=0)
    llm = tiny_llm(**settings)
    received: list[Any] = []

    async def consume() -> None:
        async for response in await _opener(llm, kind)():
            received.append(response)

    probe.hold(4)
    task = asyncio.create_task(consume())
    await _held(probe)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    probe.release()
    await _workers_done(workers)
    await _quiet(probe)
    assert probe.calls == probe.hold_at  # the pass in flight finished; no other one started
    assert len(received) < 60
    await _next_call_runs_alone(tiny_llm(), probe)
