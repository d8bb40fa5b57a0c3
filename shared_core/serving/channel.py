"""A one-reader channel of text deltas from the scheduler's loop thread to a sync or async reader.

The loop thread never blocks on a reader: it appends and wakes whoever waits. A thread waits on a
condition; an asyncio task waits on a future that the loop thread resolves with
``call_soon_threadsafe``, so an async reader never ties up the event loop or an executor thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

__all__ = ["DeltaChannel"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DeltaChannel:
    """Text deltas in order, then an end (or an error) that every later read sees."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[str] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _wake(self) -> None:
        """Wakes every waiting reader (called with the condition held)."""
        self._cond.notify_all()
        for loop, future in self._waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the reader's event loop has closed: nobody is waiting any more
                pass
        self._waiters.clear()

    def put(self, delta: str) -> None:
        """Appends one delta (from the loop thread)."""
        with self._cond:
            self._items.append(delta)
            self._wake()

    def end(self, error: BaseException | None = None) -> None:
        """Marks the end of the deltas; with ``error``, readers get it raised after the deltas before it."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._error = error
            self._wake()

    @property
    def ended(self) -> bool:
        return self._ended

    def _take(self) -> tuple[bool, str | None]:
        """(True, delta or None at the end) when something can be returned now, else (False, None)."""
        if self._items:
            return True, self._items.popleft()
        if self._ended:
            if self._error is not None:
                raise self._error
            return True, None
        return False, None

    def get(self) -> str | None:
        """The next delta, blocking until there is one; ``None`` once the deltas have ended."""
        with self._cond:
            while True:
                ready, delta = self._take()
                if ready:
                    return delta
                self._cond.wait()

    async def aget(self) -> str | None:
        """The next delta without blocking the event loop; ``None`` once the deltas have ended."""
        while True:
            with self._cond:
                ready, delta = self._take()
                if ready:
                    return delta
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await future
