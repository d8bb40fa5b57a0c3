"""Running model forward passes safely from many threads, and charging them to the right call.

One model is shared by every thread and async task of a process (LangChain ``abatch``, LlamaIndex
workers, the server). Two forwards at once on one device would each take every core (CPU) or compete
for one stream (GPU) and both run slower, and some modules keep per-call state. So every forward pass
deal runs holds its device's lock: calls interleave step by step, each step at full speed.

Forward passes and the tokens they process are counted per model in the call's
:class:`~shared_core.result.GenerationStats`. Code that knows its stats passes them; rewards, which
score text without knowing which call they serve, are charged through :func:`charged_to`, which the
engine wraps around every reward call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared_core.result import GenerationStats

__all__ = ["charged_to", "count_forward", "current_stats", "device_lock", "exclusive_forward"]

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_CURRENT: ContextVar[GenerationStats | None] = ContextVar("deal_current_stats", default=None)


def device_lock(device: Any) -> threading.RLock:
    """The process-wide lock of one device (``"cpu"``, ``"cuda:0"``): held for the length of a forward pass."""
    key = str(device)
    if key == "cuda":
        key = "cuda:0"
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.RLock()
        return lock


@contextmanager
def exclusive_forward(device: Any) -> Iterator[None]:
    """Runs the body as the only forward pass on ``device``, under ``torch.inference_mode``."""
    import torch

    with device_lock(device), torch.inference_mode():
        yield


@contextmanager
def charged_to(stats: GenerationStats | None) -> Iterator[None]:
    """Charges forward passes counted with :func:`count_forward` inside the body to ``stats``."""
    token = _CURRENT.set(stats)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_stats() -> GenerationStats | None:
    """The stats the current reward call is charged to, if any."""
    return _CURRENT.get()


def count_forward(label: str, tokens: int = 0, *, stats: GenerationStats | None = None, passes: int = 1) -> None:
    """Counts ``passes`` forward passes of model ``label`` over ``tokens`` tokens in ``stats`` (default: the current call's)."""
    target = stats if stats is not None else _CURRENT.get()
    if target is not None:
        target.count_forward(label, passes, tokens=tokens)
