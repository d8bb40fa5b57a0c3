"""The serving scheduler: continuous batching that equals ``generate``, fair turns, cancellation, back-pressure.

Mechanics run on the tiny random model (it never ends by itself, so ``max_new_tokens`` decides every
length); a probe around the model's ``forward`` counts the passes that really ran and can hold one,
so the cancellation tests know which step was in flight. Two end-to-end checks use the embedded model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared_core import ConfigError, Request, generate
from shared_core.models import LocalModel
from shared_core.scheduler import QueueFull, ScheduledStream, Scheduler, SchedulerClosed
from tests.test_cancellation import ForwardProbe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["hello", "Tell me a short story about a lighthouse.", "good morning to you all, friends", "sun"]
KEYWORDS = {"type": "keywords", "words": ["sun"]}


@pytest.fixture()
def sched(tiny_model: LocalModel) -> Iterator[Scheduler]:
    scheduler = Scheduler(tiny_model, max_batch=8, max_queue=8)
    try:
        yield scheduler
    finally:
        scheduler.shutdown()


@pytest.fixture()
def probe(tiny_model: LocalModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProbe]:
    found = ForwardProbe()
    monkeypatch.setattr(tiny_model.model, "forward", found.wrap(tiny_model.model.forward))
    yield found
    found.release()


def build(model: LocalModel, prompt: str, **kwargs: Any) -> Request:
    return Request.build(model, prompt, **kwargs)


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------ equality


def test_batched_greedy_equals_generate_alone_with_per_row_settings(tiny_model: LocalModel,
                                                                     sched: Scheduler) -> None:
    settings: list[dict[str, Any]] = [
        {"max_new_tokens": 30},
        {"max_new_tokens": 12},
        {"max_new_tokens": 25, "repetition_penalty": 1.5},
        {"max_new_tokens": 20, "strategy": "sample", "temperature": 0.8, "top_p": 0.9, "seed": 11},
    ]
    alone = [generate(tiny_model, p, **s) for p, s in zip(PROMPTS, settings)]
    streams: list[ScheduledStream] = []
    for prompt, setting in zip(PROMPTS, settings):  # each joins a batch that is already running
        streams.append(sched.submit(build(tiny_model, prompt, **setting)))
        wait_for(lambda: streams[-1].tokens_generated >= 2 or streams[-1].done)
    texts = ["".join(s) for s in streams]
    for expected, s, text in zip(alone, streams, texts):
        result = s.result
        assert result.token_ids == expected.token_ids
        assert text == result.text == expected.text
        assert result.finish_reason == expected.finish_reason == "length"
        assert result.strategy == expected.strategy
    assert max(s.result.stats.extra["scheduler"]["max_batch_size"] for s in streams) >= 3
    stats = sched.stats()
    assert stats["mean_batch_size"] > 1 and stats["completed"] == 4 and stats["running"] == 0


def test_a_stop_string_ends_only_its_own_row(tiny_model: LocalModel, sched: Scheduler) -> None:
    free = generate(tiny_model, PROMPTS[1], max_new_tokens=30)
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop.strip()
    expected = generate(tiny_model, PROMPTS[1], max_new_tokens=30, stop=stop)
    other = sched.submit(build(tiny_model, PROMPTS[0], max_new_tokens=40))
    stopped = sched.submit(build(tiny_model, PROMPTS[1], max_new_tokens=30, stop=stop))
    assert "".join(stopped) == expected.text and stopped.result.finish_reason == "stop"
    assert stopped.result.token_ids == expected.token_ids
    assert other.result.finish_reason == "length" and len(other.result.token_ids) == 40


@pytest.mark.embedded
def test_batched_greedy_equals_generate_on_the_embedded_model(smollm2: LocalModel) -> None:
    prompts = ["What is the capital of France?", "Give me two tips for staying safe online."]
    alone = [generate(smollm2, p, max_new_tokens=24) for p in prompts]
    with Scheduler(smollm2) as scheduler:
        first = scheduler.submit(build(smollm2, prompts[1], max_new_tokens=24))
        wait_for(lambda: first.tokens_generated >= 3)
        second = scheduler.submit(build(smollm2, prompts[0], max_new_tokens=24))
        results = [second.result, first.result]
    for expected, result in zip(alone, results):
        assert result.token_ids == expected.token_ids and result.text == expected.text
    assert results[0].stats.extra["scheduler"]["max_batch_size"] == 2


# ------------------------------------------------------------------------------------------ joining


def test_a_late_short_request_joins_at_the_next_step_and_finishes_first(tiny_model: LocalModel,
                                                                        sched: Scheduler) -> None:
    long = sched.submit(build(tiny_model, PROMPTS[1], max_new_tokens=300))
    wait_for(lambda: long.tokens_generated >= 5)
    short = sched.submit(build(tiny_model, PROMPTS[0], max_new_tokens=5))
    assert short.wait(30)
    assert not long.done and long.tokens_generated < 300
    assert short.result.stats.extra["scheduler"]["max_batch_size"] == 2
    assert short.result.token_ids == generate(tiny_model, PROMPTS[0], max_new_tokens=5).token_ids
    long.close()
    assert long.result.finish_reason == "cancelled"


# ------------------------------------------------------------------------------------------ cancellation


@pytest.mark.parametrize("how", ["close", "cancel"])
def test_cancelling_a_row_stops_it_within_one_step_and_frees_its_slot(
        tiny_model: LocalModel, sched: Scheduler, probe: ForwardProbe, how: str) -> None:
    kept = sched.submit(build(tiny_model, PROMPTS[0], max_new_tokens=40))
    wait_for(lambda: kept.tokens_generated >= 1)
    victim = sched.submit(build(tiny_model, PROMPTS[1], max_new_tokens=200))
    wait_for(lambda: victim.tokens_generated >= 3)
    probe.hold_at = probe.calls + 2  # a batched step both rows take part in
    assert probe.entered.wait(30) and not victim.done
    getattr(victim, how)()
    probe.release()
    result = victim.result
    assert result.finish_reason == "cancelled"
    # the held step was the last forward the row took part in: prefill + its steps = its tokens
    assert result.stats.forward_passes["policy"] == len(result.token_ids)
    assert result.text.startswith(generate(tiny_model, PROMPTS[1], max_new_tokens=len(result.token_ids)).text)
    assert kept.result.finish_reason == "length" and len(kept.result.token_ids) == 40
    wait_for(lambda: sched.stats()["running"] == 0)
    assert sched.stats()["cancelled"] == 1


def test_a_request_cancelled_while_queued_never_runs(tiny_model: LocalModel, probe: ForwardProbe) -> None:
    with Scheduler(tiny_model, max_batch=1, max_queue=4) as scheduler:
        running = scheduler.submit(build(tiny_model, PROMPTS[0], max_new_tokens=400))
        wait_for(lambda: scheduler.stats()["running"] == 1)
        queued = scheduler.submit(build(tiny_model, PROMPTS[1], max_new_tokens=20))
        queued.cancel()
        result = queued.result
        assert (result.text, result.token_ids, result.finish_reason) == ("", [], "cancelled")
        assert result.stats.forward_passes == {}
        running.close()
        assert running.result.finish_reason == "cancelled"


# ------------------------------------------------------------------------------------------ back-pressure


def test_a_full_queue_raises_queue_full_with_a_retry_hint(tiny_model: LocalModel) -> None:
    with Scheduler(tiny_model, max_batch=1, max_queue=2) as scheduler:
        running = scheduler.submit(build(tiny_model, PROMPTS[0], max_new_tokens=400))
        wait_for(lambda: scheduler.stats()["running"] == 1)
        queued = [scheduler.submit(build(tiny_model, p, max_new_tokens=4)) for p in PROMPTS[1:3]]
        with pytest.raises(QueueFull) as caught:
            scheduler.submit(build(tiny_model, PROMPTS[3], max_new_tokens=4))
        assert caught.value.retry_after > 0 and caught.value.max_queue == 2
        stats = scheduler.stats()
        assert stats["queue_depth"] == 2 and stats["rejected"] == 1
        running.close()
        assert all(len(q.result.token_ids) == 4 for q in queued)  # the queue drains once the slot frees


def test_bad_input_is_a_config_error_before_any_model_work(tiny_model: LocalModel, smollm2: LocalModel,
                                                           sched: Scheduler) -> None:
    with pytest.raises(ConfigError) as caught:
        sched.submit(build(tiny_model, ["one", "two"]))
    assert caught.value.field == "prompt"
    with pytest.raises(ConfigError) as caught:
        sched.submit(build(smollm2, "hello"))
    assert caught.value.field == "model"
    with pytest.raises(ConfigError) as caught:
        Scheduler(tiny_model, max_batch=0)
    assert caught.value.field == "max_batch"
    assert sched.stats()["submitted"] == 0


# ------------------------------------------------------------------------------------------ fairness


def test_guided_requests_take_turns_without_starving_or_being_starved(tiny_model: LocalModel,
                                                                      sched: Scheduler) -> None:
    guided_args = {"strategy": "deal", "reward": KEYWORDS, "top_k": 2, "lookahead": 2, "search_every": 1,
                   "max_new_tokens": 10}
    expected = generate(tiny_model, PROMPTS[1], **guided_args)
    plain = [sched.submit(build(tiny_model, p, max_new_tokens=250)) for p in (PROMPTS[0], PROMPTS[2])]
    wait_for(lambda: all(s.tokens_generated >= 3 for s in plain))
    guided = sched.submit(build(tiny_model, PROMPTS[1], **guided_args))
    assert guided.lane == "serial"
    before = [s.tokens_generated for s in plain]
    assert guided.wait(60)
    after = [s.tokens_generated for s in plain]
    assert not any(s.done for s in plain)  # the guided request was not starved by the long plain ones
    assert all(a - b >= 5 for a, b in zip(after, before))  # and plain traffic kept moving meanwhile
    result = guided.result
    assert result.token_ids == expected.token_ids and result.reward is not None
    assert result.stats.extra["scheduler"]["lane"] == "serial"
    stats = sched.stats()
    assert stats["serial_turns"] >= 10 and stats["running_guided"] == 0
    for s in plain:
        s.close()


def test_queued_guided_requests_do_not_hold_plain_ones_back(tiny_model: LocalModel) -> None:
    guided_args = {"strategy": "deal", "reward": KEYWORDS, "max_new_tokens": 400}
    with Scheduler(tiny_model, max_batch=2, max_queue=4, max_guided=1) as scheduler:
        guided = [scheduler.submit(build(tiny_model, p, **guided_args)) for p in PROMPTS[:2]]
        wait_for(lambda: scheduler.stats()["running_guided"] == 1)
        plain = scheduler.submit(build(tiny_model, PROMPTS[2], max_new_tokens=8))
        assert plain.wait(30) and len(plain.result.token_ids) == 8  # admitted past the queued guided request
        assert scheduler.stats()["queue_depth"] == 1 and not guided[1].done
        for s in guided:
            s.close()
        assert all(s.result.finish_reason == "cancelled" for s in guided)


# ------------------------------------------------------------------------------------------ async


def test_async_iteration_does_not_block_the_event_loop(tiny_model: LocalModel, sched: Scheduler) -> None:
    alone = [generate(tiny_model, p, max_new_tokens=25) for p in PROMPTS]

    async def main() -> tuple[list[str], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        async def read(s: ScheduledStream) -> str:
            return "".join([delta async for delta in s])

        tick_task = asyncio.create_task(ticker())
        streams = [sched.submit(build(tiny_model, p, max_new_tokens=25)) for p in PROMPTS]
        texts = await asyncio.gather(*(read(s) for s in streams))
        done.set()
        await tick_task
        for s, text in zip(streams, texts):
            assert s.result.text == text
        return list(texts), ticks

    texts, ticks = asyncio.run(main())
    assert texts == [r.text for r in alone]
    assert ticks > 5


@pytest.mark.parametrize("how", ["task_cancelled", "loop_left"])
def test_an_abandoned_async_iteration_cancels_its_request(tiny_model: LocalModel, sched: Scheduler,
                                                          how: str) -> None:
    async def main() -> ScheduledStream:
        s = sched.submit(build(tiny_model, PROMPTS[1], max_new_tokens=400))
        if how == "task_cancelled":
            async def read() -> None:
                async for _ in s:
                    pass

            task = asyncio.create_task(read())
            while s.tokens_generated < 3:
                await asyncio.sleep(0.005)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            async for _ in s:
                break
            for _ in range(5):
                await asyncio.sleep(0)  # the dropped async generator is closed by the event loop
        return s

    s = asyncio.run(main())
    assert s.wait(30)
    assert s.result.finish_reason == "cancelled" and len(s.result.token_ids) < 400
    wait_for(lambda: sched.stats()["running"] == 0)


# ------------------------------------------------------------------------------------------ shutdown


def test_shutdown_ends_every_request_and_leaves_no_thread(tiny_model: LocalModel) -> None:
    others = {t for t in threading.enumerate() if t.name == "deal-scheduler"}  # e.g. session servers' schedulers
    scheduler = Scheduler(tiny_model, max_batch=1, max_queue=4)
    running = scheduler.submit(build(tiny_model, PROMPTS[0], max_new_tokens=400))
    guided = scheduler.submit(build(tiny_model, PROMPTS[1], strategy="deal", reward=KEYWORDS, max_new_tokens=400))
    queued = scheduler.submit(build(tiny_model, PROMPTS[2], max_new_tokens=40))
    wait_for(lambda: running.tokens_generated >= 2)
    scheduler.shutdown()
    assert not any(t.name == "deal-scheduler" and t.is_alive() and t not in others for t in threading.enumerate())
    assert running.result.finish_reason == "cancelled" and running.result.token_ids
    assert guided.result.finish_reason == "cancelled" and len(guided.result.token_ids) < 400
    assert queued.result.finish_reason == "cancelled" and queued.result.token_ids == []
    with pytest.raises(SchedulerClosed):
        scheduler.submit(build(tiny_model, PROMPTS[0], max_new_tokens=4))
    assert scheduler.stats()["closed"] is True
