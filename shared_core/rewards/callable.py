"""Any Python function ``texts -> scores`` as a reward."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from shared_core.errors import ConfigError, RewardError
from shared_core.rewards.base import Reward
from shared_core.rewards.runtime import check_scores

__all__ = [
    "CallableReward",
]


def _accepts_prompt(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called with a ``prompt=`` keyword argument."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "prompt" and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


def _callable_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "callable" if name == "<lambda>" else name


class CallableReward(Reward):
    """Wraps a function that scores a batch of texts: ``fn(texts: list[str]) -> list[float]``.

    If ``fn`` accepts a ``prompt`` keyword (or ``**kwargs``) it also receives the prompt. The function
    must return one finite number per text. Any exception it raises, or a malformed result, surfaces
    as :class:`RewardError` naming the reward, the number of texts and a preview of the first one,
    with the original exception chained as ``__cause__``. Python only: a callable has no JSON spec.

    Args:
        fn: The scoring function.
        name: Name used in score components and error messages; defaults to the function's name.

    Example:
        >>> reward = CallableReward(lambda texts: [float(len(t)) for t in texts], name="chars")
        >>> reward.score(["ab", "abcd"])
        [2.0, 4.0]
    """

    guidance = "judge"
    spec = None  # a Python function cannot be serialized to a JSON spec

    def __init__(self, fn: Callable[..., Sequence[float]], *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError("reward", f"expected a callable texts -> scores, got {type(fn).__name__}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError("name", f"must be a non-empty string, got {name!r}")
        self.fn = fn
        self.name = name or _callable_name(fn)
        self._pass_prompt = _accepts_prompt(fn)

    def _context(self, texts: Sequence[str]) -> str:
        first = texts[0] if texts else ""
        preview = first if len(first) <= 80 else first[:80] + "..."
        return f"reward {self.name!r} on {len(texts)} text(s), first {preview!r}"

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        texts = list(continuations)
        if not texts:
            return []
        try:
            result = self.fn(texts, prompt=prompt) if self._pass_prompt else self.fn(texts)
        except Exception as exc:
            raise RewardError(f"{self._context(texts)} raised {type(exc).__name__}: {exc}") from exc
        return check_scores(result, len(texts), self._context(texts))
