"""What differs between the transformers releases deal supports, in one place.

transformers 5.24 renamed the forward argument and output field ``past_key_values`` to ``cache`` (the
old argument warns and goes away in 5.40). Code that passes a KV cache or reads one back goes through
:func:`cache_argument` and :func:`output_cache`, which pick whichever name the loaded model's
``forward`` declares, so the same code runs on 5.0 through 5.39 and beyond.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any

from shared_core.errors import DealError

__all__ = [
    "CACHE_ARGUMENTS",
    "DealPerformanceWarning",
    "cache_argument",
    "forward_accepts",
    "output_cache",
    "report_slow_path",
]

#: The names a model's ``forward`` may give its KV-cache argument, newest first.
CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values")

_SIGNATURES: dict[Any, frozenset[str]] = {}
_SIGNATURES_LOCK = threading.Lock()


def _parameters(module: Any) -> frozenset[str]:
    forward = module.forward
    key = getattr(forward, "__func__", forward)  # the class's function, or an instance's own override
    with _SIGNATURES_LOCK:
        known = _SIGNATURES.get(key)
    if known is None:
        known = frozenset(inspect.signature(forward).parameters)
        with _SIGNATURES_LOCK:
            _SIGNATURES[key] = known
    return known


def forward_accepts(module: Any, name: str) -> bool:
    """Whether ``module.forward`` declares the argument ``name`` (cached per forward function)."""
    return name in _parameters(module)


def cache_argument(module: Any) -> str:
    """The keyword ``module.forward`` takes its KV cache under: ``"cache"`` (5.24+) or ``"past_key_values"``.

    Raises:
        DealError: the model's forward takes no KV cache at all (so incremental decoding cannot work).
    """
    params = _parameters(module)
    for name in CACHE_ARGUMENTS:
        if name in params:
            return name
    raise DealError(
        f"{type(module).__name__}.forward takes no KV cache argument (looked for {', '.join(CACHE_ARGUMENTS)}); "
        "deal needs a causal LM that supports incremental decoding"
    )


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either field name (without the deprecation warning)."""
    for name in CACHE_ARGUMENTS:
        if isinstance(output, dict) and name in output:
            return output[name]
    return None


class DealPerformanceWarning(UserWarning):
    """A fast path could not be taken; the result is the same, only slower (the message says why)."""


_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def report_slow_path(stats: Any, key: str, message: str) -> None:
    """Records that a fast path was not taken: always in ``stats.extra["slow_paths"]``, and once per process as a warning.

    Args:
        stats: the call's :class:`~shared_core.result.GenerationStats` (or ``None``).
        key: a short stable name for the fast path (e.g. ``"classifier_incremental"``).
        message: what was not possible and why, and what to change to get the fast path.
    """
    if stats is not None:
        slow = stats.extra.setdefault("slow_paths", {})
        slow[key] = message
    with _WARNED_LOCK:
        first = key not in _WARNED
        _WARNED.add(key)
    if first:
        warnings.warn(f"{key}: {message}", DealPerformanceWarning, stacklevel=3)
