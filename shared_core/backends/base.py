"""The backend interface: what a strategy may ask of the thing that holds the model.

Two implementations: :class:`~shared_core.backends.local.LocalBackend` (the in-process transformers
model: every capability, including ``next_logits`` with a KV cache) and
:class:`~shared_core.backends.remote.RemoteModel` (an OpenAI-compatible server: ``samples``,
``top_logprobs``, ``prompt_logprobs``). Token ids are the currency: prompts are rendered once with the
model's chat template and sent as ids, so both sides see exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "Completion"]


@dataclass
class Completion:
    """One continuation proposed by a backend.

    ``token_ids`` are the generated ids (EOS included when the backend returns it); ``logprobs`` the
    sampled tokens' log-probs and ``top`` the top-k ``(id, logprob)`` pairs at each position (best
    first), when they were asked for; ``finish_reason`` is ``"stop"`` (EOS or a stop string) or ``"length"``.
    """

    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    ids_from_text: bool = False  # the server returned no token ids: they were re-encoded from the text


@runtime_checkable
class Backend(Protocol):
    """What every backend offers; ``capabilities`` (names from :mod:`shared_core.backends.capabilities`) says what more."""

    name: str
    capabilities: frozenset[str]
    eos_token_ids: frozenset[int]

    @property
    def context_window(self) -> int: ...

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def render(self, prompt: str | Sequence[Mapping[str, Any]], *, chat: bool | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids for a prompt: the chat template for messages (and strings, on chat models)."""

    def propose(self, prefix_ids: Sequence[int], n: int, max_tokens: int, stop: Sequence[str] = (),
                temperature: float = 1.0, seed: int | None = None) -> list[Completion]:
        """``n`` continuations of ``prefix_ids`` (greedy at ``temperature=0``), with their tokens' log-probs."""

    def top_next(self, prefix_ids: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """The ``k`` most likely next tokens after ``prefix_ids`` and their log-probs, best first."""
