"""Decoding strategies behind one interface, and the ``generate`` / ``stream`` entry points.

Importing this package registers the built-in strategies: greedy, sample, args, deal, best_of_n,
genarm, transfer_q and tool_call.
"""

from shared_core.decoding import greedy  # noqa: F401  (registers greedy and sample)
from shared_core.decoding import genarm, transfer_q  # noqa: F401  (registers genarm and transfer_q)
from shared_core.decoding import args, best_of_n, lookahead  # noqa: F401  (registers args, best_of_n, deal)
from shared_core.decoding import tool_call  # noqa: F401  (registers tool_call)
from shared_core.decoding.base import (
    DecodeJob,
    PrefixCache,
    Strategy,
    get_strategy,
    list_strategies,
    register_strategy,
    validate_params,
)
from shared_core.decoding.engine import GenerationStream, generate, run, stream, validate_request

__all__ = [
    "DecodeJob",
    "GenerationStream",
    "PrefixCache",
    "Strategy",
    "generate",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "run",
    "stream",
    "validate_params",
    "validate_request",
]
