"""The vocabulary of what a backend can do, and the check that a strategy's needs are met.

A strategy declares ``needs`` (``Strategy.needs``, a frozenset of the names below); a backend declares
``capabilities``. Asking a backend for a strategy it cannot serve is a :class:`ConfigError` on
``strategy`` that names the strategy, the missing capability and the backend, raised before any
model work (no request is sent, no forward pass runs).
"""

from __future__ import annotations

from collections.abc import Iterable

from shared_core.errors import ConfigError

__all__ = [
    "CAPABILITIES",
    "LOCAL_CAPABILITIES",
    "LOGITS",
    "PROMPT_LOGPROBS",
    "REMOTE_CAPABILITIES",
    "SAMPLES",
    "TOP_LOGPROBS",
    "check_capabilities",
    "check_vocabulary",
]

#: Full next-token logits with a KV cache, in process: logits processors, tree-masked candidate scoring,
#: reward models sharing the policy's cache (GenARM, Transfer Q*, tool-call masks, JSON masks).
LOGITS = "logits"
#: Sampled (or greedy) continuations of a token-id prefix, several at once (``n``), with stop strings and a seed.
SAMPLES = "samples"
#: The top-k log-probabilities at every generated position (OpenAI ``logprobs=k``).
TOP_LOGPROBS = "top_logprobs"
#: Log-probabilities of the prompt's own tokens (vLLM ``prompt_logprobs``).
PROMPT_LOGPROBS = "prompt_logprobs"

#: Every capability name, with what it means; strategies' ``needs`` and backends' ``capabilities`` use only these.
CAPABILITIES: dict[str, str] = {
    LOGITS: "full next-token logits with a KV cache, in process",
    SAMPLES: "sampled or greedy continuations of a token-id prompt, n at a time",
    TOP_LOGPROBS: "top-k log-probabilities at every generated position",
    PROMPT_LOGPROBS: "log-probabilities of the prompt's tokens",
}

#: The in-process transformers backend has everything.
LOCAL_CAPABILITIES: frozenset[str] = frozenset(CAPABILITIES)
#: What an OpenAI-compatible ``/v1/completions`` server (vLLM, SGLang, llama.cpp server) offers by default.
REMOTE_CAPABILITIES: frozenset[str] = frozenset({SAMPLES, TOP_LOGPROBS, PROMPT_LOGPROBS})


def check_vocabulary(names: Iterable[str], field: str) -> frozenset[str]:
    """``names`` as a frozenset, every one a known capability; otherwise a ConfigError on ``field``."""
    chosen = frozenset(names)
    unknown = sorted(chosen - set(CAPABILITIES))
    if unknown:
        raise ConfigError(field, f"unknown capability {unknown[0]!r}; valid: {', '.join(sorted(CAPABILITIES))}")
    return chosen


def check_capabilities(strategy: str, needs: Iterable[str], backend: str, capabilities: Iterable[str]) -> None:
    """Raises ConfigError(field="strategy") when ``backend`` lacks something ``strategy`` needs."""
    have = frozenset(capabilities)
    missing = sorted(frozenset(needs) - have)
    if missing:
        what = CAPABILITIES.get(missing[0], missing[0])
        raise ConfigError(
            "strategy",
            f"strategy {strategy!r} needs {missing[0]!r} ({what}), which backend {backend!r} does not offer "
            f"(it offers: {', '.join(sorted(have)) or 'nothing'}); use a local model for {strategy!r}",
        )
