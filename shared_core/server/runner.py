"""How the server runs requests: :func:`make_scheduler` (the one place that picks the scheduler).

A local model is served by ``shared_core.scheduler.Scheduler`` (continuous batching). A remote model
(``--base-url``), which that scheduler does not take, by :class:`ThreadScheduler`: it has the same interface (``submit(request)``
-> a stream of text deltas with ``result`` and ``cancel()``, readable with ``for`` or ``async for``;
``stats()``; ``shutdown()``; :class:`QueueFull` with ``retry_after`` when too many wait). It decodes each
request with ``shared_core.stream`` in a thread of its own, ``max_batch`` at a time (forward passes
share the model's device lock); the others wait in a bounded queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from shared_core.decoding.engine import stream as engine_stream
from shared_core.models import LocalModel
from shared_core.request import Request
from shared_core.result import GenerationResult, GenerationStats
from shared_core.scheduler import Scheduler
from shared_core.server.errors import QueueFull

__all__ = ["ThreadScheduler", "ThreadStream", "make_scheduler"]

_DELTA, _END, _ERROR = "delta", "end", "error"


def make_scheduler(model: Any, *, max_batch: int, max_queue: int) -> Any:
    """The scheduler that decodes the server's requests: continuous batching for a local model
    (:class:`shared_core.scheduler.Scheduler`); a thread per request for a remote one, whose engine batches."""
    if isinstance(model, LocalModel):
        return Scheduler(model, max_batch=max_batch, max_queue=max_queue)
    return ThreadScheduler(model, max_batch=max_batch, max_queue=max_queue)


class ThreadStream(Iterator[str]):
    """Text deltas of one request, decoded in a worker thread; ``cancel()`` stops it before its next step."""

    def __init__(self, owner: ThreadScheduler, request: Request) -> None:
        self._owner = owner
        self._request = request
        self._items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._inner: Any = None
        self._result: GenerationResult | None = None
        self._done = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()
        self._ended = False
        threading.Thread(target=self._work, name="deal-serve-request", daemon=True).start()

    # -- the worker -------------------------------------------------------------------------------

    def _push(self, kind: str, value: Any = None) -> None:
        if kind != _DELTA:
            self._done.set()  # the result is known before a reader sees the end
        with self._lock:
            self._items.put((kind, value))
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))
            except RuntimeError:  # the reader's loop has closed
                pass

    def _work(self) -> None:
        owner = self._owner
        try:
            while not owner._slots.acquire(timeout=0.05):
                if self._cancelled.is_set():
                    owner._left_queue(started=False)
                    self._result = GenerationResult("", [], "cancelled", None, GenerationStats(),
                                                    strategy=self._request.strategy_name,
                                                    model=getattr(owner.model, "name", str(owner.model)))
                    self._push(_END)
                    return
            owner._left_queue(started=True)
            try:
                self._request.model = owner.model
                inner = engine_stream(self._request)
                self._inner = inner
                if self._cancelled.is_set():
                    inner.cancel()
                for delta in inner:
                    self._push(_DELTA, delta)
                self._result = inner.result
            finally:  # the slot is free before the reader sees the end
                owner._slots.release()
                owner._finished()
            self._push(_END)
        except BaseException as exc:  # handed to the reader, who raises it
            self._push(_ERROR, exc)
        finally:
            self._done.set()

    # -- the reader -------------------------------------------------------------------------------

    def _take(self, item: tuple[str, Any]) -> str:
        kind, value = item
        if kind == _DELTA:
            return value
        self._ended = True
        if kind == _ERROR:
            raise value
        raise StopIteration

    def __iter__(self) -> ThreadStream:
        return self

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        return self._take(self._items.get())

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        while True:
            with self._lock:
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    loop = asyncio.get_running_loop()
                    future: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, future))
                    item = None
            if item is not None:
                try:
                    return self._take(item)
                except StopIteration:
                    raise StopAsyncIteration from None
            await future

    def cancel(self) -> None:
        """Stops decoding before its next forward pass (or before it starts); safe from any thread."""
        self._cancelled.set()
        if self._inner is not None:
            self._inner.cancel()

    close = cancel

    @property
    def result(self) -> GenerationResult:
        """The GenerationResult once the stream has ended (waits for the worker)."""
        self._done.wait()
        if self._result is None:
            raise RuntimeError("the request failed; read the stream to get its error")
        return self._result


class ThreadScheduler:
    """Runs up to ``max_batch`` requests at once, each in its own thread; up to ``max_queue`` more wait."""

    def __init__(self, model: Any, max_batch: int = 4, max_queue: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._slots = threading.Semaphore(max_batch)
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._started = time.monotonic()
        self._finished_count = 0

    def submit(self, request: Request) -> ThreadStream:
        """Queues ``request``; raises :class:`QueueFull` (with ``retry_after``) when the queue is full."""
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting (the queue holds {self.max_queue})",
                                retry_after=self._retry_after())
            self._waiting += 1
        return ThreadStream(self, request)

    def _retry_after(self) -> float:
        elapsed = max(time.monotonic() - self._started, 1e-3)
        per_request = elapsed / self._finished_count if self._finished_count else 1.0
        return max(1.0, min(60.0, per_request * (self._waiting + 1) / self.max_batch))

    def _left_queue(self, *, started: bool) -> None:
        with self._lock:
            self._waiting -= 1
            if started:
                self._running += 1

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1
            self._finished_count += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queue_depth": self._waiting, "running": self._running, "max_queue": self.max_queue,
                    "max_batch": self.max_batch}

    def shutdown(self) -> None:
        """Nothing to stop: each request's thread ends with its request."""
