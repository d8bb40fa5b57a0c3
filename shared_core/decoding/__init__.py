"""Decoding strategies behind one interface, and the ``generate`` / ``stream`` entry points."""

from shared_core.decoding import greedy  # noqa: F401  (registers greedy and sample)
from shared_core.decoding.base import (
    DecodeJob,
    PrefixCache,
    Strategy,
    get_strategy,
    list_strategies,
    register_strategy,
)
from shared_core.decoding.engine import GenerationStream, generate, stream

__all__ = [
    "DecodeJob",
    "GenerationStream",
    "PrefixCache",
    "Strategy",
    "generate",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "stream",
]
