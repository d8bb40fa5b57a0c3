"""Cancelling a generation from another thread: a client went away, a stream was closed, a task cancelled.

A :class:`CancelToken` is checked before every forward pass, so a cancelled generation stops within one
step and frees the model for the next call. The generation then ends with ``finish_reason
"cancelled"`` and whatever text it had committed.
"""

from __future__ import annotations

import threading

from shared_core.errors import DealError

__all__ = ["CancelToken", "Cancelled"]


class Cancelled(DealError):
    """Raised inside a generation whose :class:`CancelToken` was cancelled (the engine turns it into a result)."""


class CancelToken:
    """A thread-safe flag: :meth:`cancel` from anywhere, :meth:`check` in the decoding loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Asks the generation to stop before its next forward pass."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raises :class:`Cancelled` once :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled("the generation was cancelled")
