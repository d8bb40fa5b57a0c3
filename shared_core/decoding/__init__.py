"""Decoding strategies behind one interface, and the ``generate`` / ``stream`` entry points."""

from shared_core.decoding import greedy  # noqa: F401  (registers greedy and sample)
from shared_core.decoding import genarm, transfer_q  # noqa: F401  (registers genarm and transfer_q)
from shared_core.decoding import args, best_of_n, lookahead  # noqa: F401  (registers args, best_of_n, deal)
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
