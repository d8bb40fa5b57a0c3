"""The thread-per-request scheduler the server uses for remote models: same interface as the batching one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shared_core import Request
from shared_core.server.errors import QueueFull
from shared_core.server.runner import ThreadScheduler, make_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_local_models_get_the_batching_scheduler(tiny_model: Any) -> None:
    from shared_core.scheduler import Scheduler

    scheduler = make_scheduler(tiny_model, max_batch=2, max_queue=2)
    try:
        assert isinstance(scheduler, Scheduler)
    finally:
        scheduler.shutdown()


def test_thread_scheduler_streams_sync_and_async_like_generate(tiny_model: Any) -> None:
    from shared_core import generate

    scheduler = ThreadScheduler(tiny_model, max_batch=1, max_queue=2)
    expected = generate(tiny_model, "Hello", max_new_tokens=6).text
    stream = scheduler.submit(Request.build(tiny_model, "Hello", max_new_tokens=6))
    assert "".join(stream) == expected == stream.result.text

    async def read() -> str:
        s = scheduler.submit(Request.build(tiny_model, "Hello", max_new_tokens=6))
        return "".join([d async for d in s])

    assert asyncio.run(read()) == expected
    assert scheduler.stats()["running"] == 0 and scheduler.stats()["queue_depth"] == 0


def test_thread_scheduler_queue_bound_and_cancel(tiny_model: Any) -> None:
    scheduler = ThreadScheduler(tiny_model, max_batch=1, max_queue=1)
    slow = dict(strategy="deal", reward={"type": "keywords", "words": ["x"]}, top_k=8, lookahead=4,
                max_new_tokens=400)
    running = scheduler.submit(Request.build(tiny_model, "Go", **slow))
    deadline = time.monotonic() + 10
    while scheduler.stats()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = scheduler.submit(Request.build(tiny_model, "Go", **slow))
    with pytest.raises(QueueFull) as info:
        scheduler.submit(Request.build(tiny_model, "Go", **slow))
    assert info.value.retry_after >= 1
    waiting.cancel()
    running.cancel()
    assert running.result.finish_reason == "cancelled" and len(running.result.token_ids) < 400
    assert waiting.result.finish_reason == "cancelled" and waiting.result.token_ids == []
    assert scheduler.stats() == {"queue_depth": 0, "running": 0, "max_queue": 1, "max_batch": 1}
