"""Cancelling a generation: a closed or cancelled stream stops decoding within one forward pass.

``GenerationStream.close()`` / ``cancel()`` work before the first read, between reads, and from another
thread while ``next()`` is running; the model is free for the next call afterwards. A probe wrapped
around the model's ``forward`` counts the passes that really ran and can hold one of them, so the tests
know exactly which step was in flight when the cancellation came.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared_core import CancelToken, generate, stream
from shared_core.models import LocalModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "hello"
KEYWORDS = {"type": "keywords", "words": ["sun"]}


class ForwardProbe:
    """Counts a model's forward passes; optionally holds pass number ``hold_at`` until :meth:`release`."""

    def __init__(self, hold_at: int | None = None) -> None:
        self.calls = 0
        self.hold_at = hold_at
        self.entered = threading.Event()  # the held pass has started
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

    def release(self) -> None:
        self._release.set()


@pytest.fixture()
def probe(tiny_model: LocalModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProbe]:
    """A counting probe on the tiny model's forward (removed after the test)."""
    found = ForwardProbe()
    monkeypatch.setattr(tiny_model.model, "forward", found.wrap(tiny_model.model.forward))
    yield found
    found.release()


# ---------------------------------------------------------------------------------------- same thread


def test_close_before_the_first_read_is_an_empty_cancelled_result(tiny_model: LocalModel,
                                                                   probe: ForwardProbe) -> None:
    deltas = stream(tiny_model, PROMPT, max_new_tokens=20, reward=KEYWORDS, strategy="greedy")
    deltas.close()
    result = deltas.result
    assert (result.text, result.token_ids, result.finish_reason) == ("", [], "cancelled")
    assert result.reward is None and result.reward_error is None
    assert result.stats.forward_passes == {} and probe.calls == 0
    assert list(deltas) == [] and deltas.cancelled


def test_close_mid_stream_keeps_the_partial_text(tiny_model: LocalModel, probe: ForwardProbe) -> None:
    deltas = stream(tiny_model, PROMPT, max_new_tokens=40)
    seen = [next(deltas) for _ in range(3)]
    passes = probe.calls
    deltas.close()
    result = deltas.result
    assert result.finish_reason == "cancelled"
    assert result.text == "".join(seen) and result.text
    assert probe.calls == passes == result.stats.forward_passes["policy"]
    assert list(deltas) == []  # a closed stream stays ended


def test_an_abandoned_stream_leaves_the_model_to_the_next_call(tiny_model: LocalModel, probe: ForwardProbe) -> None:
    expected = generate(tiny_model, PROMPT, max_new_tokens=12)
    abandoned = stream(tiny_model, PROMPT, max_new_tokens=40)
    next(abandoned)
    abandoned.close()
    before = probe.calls
    again = generate(tiny_model, PROMPT, max_new_tokens=12)
    assert again.token_ids == expected.token_ids
    assert probe.calls - before == again.stats.forward_passes["policy"]  # nothing else ran meanwhile


# ---------------------------------------------------------------------------------------- another thread


def _strategy_kwargs(strategy: str) -> dict[str, Any]:
    if strategy == "greedy":
        return {}
    extra: dict[str, Any] = {"best_of_n": {"n": 3, "seed": 0}, "deal": {"top_k": 2, "lookahead": 2, "search_every": 1},
                             "args": {"top_k": 3}}[strategy]
    return {"reward": KEYWORDS, **extra}


@pytest.mark.parametrize("stop", ["close", "cancel"])
@pytest.mark.parametrize("strategy", ["greedy", "args", "deal", "best_of_n"])
def test_stopping_from_another_thread_ends_decoding_within_one_forward_pass(
        tiny_model: LocalModel, probe: ForwardProbe, strategy: str, stop: str) -> None:
    probe.hold_at = 4
    deltas = stream(tiny_model, PROMPT, max_new_tokens=60, strategy=strategy, **_strategy_kwargs(strategy))
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.extend(deltas))
    reader.start()
    assert probe.entered.wait(30), "decoding never reached the held forward pass"
    getattr(deltas, stop)()  # while the reader's next() is inside forward pass 4
    probe.release()
    reader.join(30)
    assert not reader.is_alive()
    assert probe.calls == 4  # the pass in flight finished; no other one started
    result = deltas.result
    assert result.finish_reason == "cancelled"
    assert result.text == "".join(read)
    assert len(result.token_ids) < 60 and result.reward is None


def test_a_cancelled_batch_stops_every_row(tiny_model: LocalModel, probe: ForwardProbe) -> None:
    probe.hold_at = 3
    token = CancelToken()
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.extend(
        generate(tiny_model, [PROMPT, "good morning"], max_new_tokens=60, cancel=token)))
    worker.start()
    assert probe.entered.wait(30)
    token.cancel()
    probe.release()
    worker.join(30)
    assert not worker.is_alive() and probe.calls == 3
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    assert all(len(r.token_ids) <= 3 for r in results)


def test_the_model_is_free_after_a_stream_stopped_from_another_thread(tiny_model: LocalModel,
                                                                      probe: ForwardProbe) -> None:
    expected = generate(tiny_model, PROMPT, max_new_tokens=10)
    probe.hold_at = probe.calls + 3
    deltas = stream(tiny_model, PROMPT, max_new_tokens=60)
    reader = threading.Thread(target=lambda: list(deltas))
    reader.start()
    assert probe.entered.wait(30)
    deltas.close()
    probe.release()
    reader.join(30)
    assert deltas.result.finish_reason == "cancelled" and probe.calls == probe.hold_at
    before = probe.calls
    again = generate(tiny_model, PROMPT, max_new_tokens=10)
    assert again.token_ids == expected.token_ids
    assert probe.calls - before == again.stats.forward_passes["policy"]


def test_the_result_can_be_read_while_another_thread_ends_the_stream(tiny_model: LocalModel,
                                                                     probe: ForwardProbe) -> None:
    probe.hold_at = 3
    deltas = stream(tiny_model, PROMPT, max_new_tokens=60)
    reader = threading.Thread(target=lambda: list(deltas))
    reader.start()
    assert probe.entered.wait(30)
    deltas.close()  # e.g. a server whose client went away: close, then log the result
    outcome: list[Any] = []

    def read_result() -> None:
        try:
            outcome.append(deltas.result)  # the reader's next() is still inside forward pass 3
        except Exception as exc:  # "generator already executing"
            outcome.append(exc)

    waiter = threading.Thread(target=read_result)
    waiter.start()
    waiter.join(0.2)  # let it ask while the reader is still inside the held pass
    probe.release()
    waiter.join(30)
    reader.join(30)
    assert not waiter.is_alive() and not reader.is_alive()
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert outcome[0].finish_reason == "cancelled" and probe.calls == 3


def test_a_generation_cancelled_while_waiting_for_the_device_runs_no_forward_pass(tiny_model: LocalModel,
                                                                                   probe: ForwardProbe) -> None:
    from shared_core.compute import device_lock

    deltas = stream(tiny_model, PROMPT, max_new_tokens=20)
    lock = device_lock(tiny_model.device)
    with lock:  # another call's forward pass holds the device
        reader = threading.Thread(target=lambda: list(deltas))
        reader.start()
        reader.join(0.3)  # the reader is now waiting for the device, before its first forward pass
        deltas.cancel()
    reader.join(30)
    assert not reader.is_alive()
    assert probe.calls == 0 and deltas.result.finish_reason == "cancelled"
    assert deltas.result.stats.forward_passes == {}
