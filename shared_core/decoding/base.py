"""The strategy interface, the per-request decode job, and the strategy registry.

A strategy is a small class with a name, a pydantic ``Params`` model for its own parameters, and
``decode(job)``: a generator that yields token ids as it commits them. The engine feeds them to the
job's :class:`StopState` (EOS, stop strings, token budget), streams the text, and closes the
generator as soon as the sequence has finished, so strategies never need their own stop logic.
Strategies that look ahead read ``job.remaining`` and ``job.finished``.
"""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from shared_core.backends.local import ModelRunner
from shared_core.cancel import CancelToken
from shared_core.decoding.stopping import StopState
from shared_core.errors import ConfigError
from shared_core.models import LocalModel
from shared_core.processors.base import LogitsProcessorList
from shared_core.result import GenerationStats
from shared_core.rewards.base import Reward

__all__ = [
    "DecodeJob",
    "NoParams",
    "PrefixCache",
    "Strategy",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "validate_params",
]


class NoParams(BaseModel):
    """For strategies without parameters of their own."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PrefixCache:
    """A KV cache computed once for a fixed prompt prefix (e.g. a URIAL preamble) and reused by copy."""

    ids: tuple[int, ...]
    cache: Any


@dataclass
class DecodeJob:
    """Everything one strategy run needs for one prompt."""

    model: LocalModel
    prompt_ids: list[int]
    prompt_text: str
    params: Any
    reward: Reward | None
    max_new_tokens: int
    generator: torch.Generator
    stats: GenerationStats
    state: StopState
    prefix: PrefixCache | None = None
    prompt: Any = None  # the prompt as given (string or chat messages), for models that render it themselves
    chat: bool | None = None  # the ``chat`` flag the prompt was rendered with
    processors: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    cancel: CancelToken | None = None
    runners: dict[str, ModelRunner] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def remaining(self) -> int:
        """How many more tokens may be committed."""
        return self.max_new_tokens - len(self.state.token_ids)

    @property
    def committed(self) -> list[int]:
        return self.state.token_ids

    def runner(self, lm: LocalModel | None = None, label: str = "policy") -> ModelRunner:
        """The forward-pass runner for ``lm`` (the policy model by default), counted under ``label``."""
        if label not in self.runners:
            self.runners[label] = ModelRunner(lm or self.model, self.stats, label, cancel=self.cancel)
        return self.runners[label]

    def process(self, generated: Sequence[Sequence[int]], logits: torch.Tensor) -> torch.Tensor:
        """The request's logits processors applied to ``logits`` (rows, vocab) after each row's ``generated`` ids."""
        return self.processors(generated, logits) if self.processors else logits

    def process_one(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """:meth:`process` for one row of logits (vocab,)."""
        return self.processors.one(generated, logits)

    def prefill(self) -> tuple[torch.Tensor, Any]:
        """Encodes the prompt into a fresh KV cache; reuses a cached prefix (copied) when one is set."""
        runner = self.runner()
        started = time.perf_counter()
        if self.prefix is not None and tuple(self.prompt_ids[: len(self.prefix.ids)]) == self.prefix.ids:
            cache = copy.deepcopy(self.prefix.cache)
            rest = self.prompt_ids[len(self.prefix.ids) :]
            self.stats.extra["prefix_tokens_reused"] = len(self.prefix.ids)
            result = runner.prefill(rest, cache=cache)
        else:
            result = runner.prefill(self.prompt_ids)
        self.stats.extra["prefill_seconds"] = time.perf_counter() - started
        return result

    def candidate_text(self, continuation_ids: Sequence[int]) -> str:
        """The text a reward should see for a candidate continuation (stop strings applied)."""
        text = self.model.decode(continuation_ids)
        for stop in self.state.stop_strings:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text

    def check_cancelled(self) -> None:
        """Raises :class:`~shared_core.cancel.Cancelled` if the request was cancelled (between steps)."""
        if self.cancel is not None:
            self.cancel.check()

    def score(self, continuations: Sequence[str]) -> list[float]:
        """The reward's scores for candidate texts, with failures reported with context."""
        from shared_core.rewards.runtime import score_texts

        assert self.reward is not None
        return score_texts(self.reward, continuations, prompt=self.prompt_text, stats=self.stats)


class Strategy(ABC):
    """A decoding strategy: subclass, set ``name`` and ``Params``, implement :meth:`decode`, register."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    needs_reward: ClassVar[bool] = False
    description: ClassVar[str] = ""
    #: What the strategy needs from a backend (see ``shared_core.backends``); the local model has everything.
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    @abstractmethod
    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        """Yields committed token ids (one or more at a time) until EOS, the budget, or the engine stops it."""

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]] | None:
        """Optionally decodes several prompts together, yielding one chunk per job each step."""
        return None


_REGISTRY: dict[str, type[Strategy]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Registers a strategy class under ``cls.name`` (usable as a decorator)."""
    if not getattr(cls, "name", None):
        raise ConfigError("strategy", f"{cls.__name__} has no name")
    with _REGISTRY_LOCK:
        _REGISTRY[cls.name] = cls
    return cls


def list_strategies() -> list[str]:
    """The names of every registered strategy."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; a clear error lists the registered ones."""
    if name not in _REGISTRY:
        raise ConfigError("strategy", f"unknown strategy {name!r}; registered strategies: {', '.join(list_strategies())}")
    return _REGISTRY[name]


def validate_params(strategy: type[Strategy], params: dict[str, Any]) -> BaseModel:
    """Validates strategy parameters, naming the bad field and the valid ones."""
    from pydantic import ValidationError

    valid = sorted(strategy.Params.model_fields)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"params.{unknown[0]}",
            f"not a parameter of strategy {strategy.name!r}; valid parameters: {', '.join(valid) or '(none)'}",
        )
    try:
        return strategy.Params(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"params.{loc}", f"{err['msg']} (got {err.get('input')!r}) for strategy {strategy.name!r}") from exc
