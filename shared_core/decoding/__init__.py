"""Decoding strategies behind one interface, and the ``generate`` / ``stream`` entry points.

Importing this package registers the built-in strategies: greedy, sample, args, deal, best_of_n,
speculative_rejection, cards, genarm, transfer_q and tool_call.
"""

# Importing the strategy modules registers them.
from shared_core.decoding import (  # noqa: F401
    args,
    best_of_n,
    cards,
    genarm,
    greedy,
    lookahead,
    speculative_rejection,
    tool_call,
    transfer_q,
)
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
