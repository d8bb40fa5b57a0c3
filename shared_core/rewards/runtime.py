"""Calling a reward safely: every failure surfaces as a RewardError that says which reward and on what.

Rewards are user code (a Python function, a custom :class:`Reward` or token scorer) or load models,
so their output is checked, not trusted: one finite real number per text or candidate, nothing else.
A wrong type, a wrong length (a single score is never broadcast) or a NaN raises a
:class:`RewardError` naming the reward and the bad value.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

from shared_core.compute import charged_to
from shared_core.errors import RewardError
from shared_core.result import GenerationStats, RewardScore
from shared_core.rewards.base import Reward, TokenScorer

__all__ = ["RewardWarning", "check_scores", "final_score", "reward_name", "score_candidates", "score_texts"]


class RewardWarning(UserWarning):
    """A reward failed where deal could carry on without it (the final report); the message says why."""


def reward_name(reward: Any) -> str:
    return str(getattr(reward, "name", None) or type(reward).__name__)


def _preview(texts: Sequence[str]) -> str:
    if not texts:
        return "''"
    first = texts[0]
    return repr(first if len(first) <= 60 else first[:60] + "...")


def _context(reward: Any, texts: Sequence[str]) -> str:
    return f"reward {reward_name(reward)!r} scoring {len(texts)} text(s) (first: {_preview(texts)})"


def _as_number(value: Any) -> float | None:
    """``value`` as a float when it is one real number (numpy and torch scalars included), else ``None``."""
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_scores(values: Any, expected: int, context: str) -> list[float]:
    """``values`` as ``expected`` finite floats; a :class:`RewardError` starting with ``context`` otherwise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise RewardError(f"{context} returned {type(values).__name__} {values!r:.80}; expected a list of "
                          f"{expected} number(s)")
    try:
        items = list(values)
    except TypeError as exc:
        raise RewardError(f"{context} returned {type(values).__name__}; expected a list of {expected} number(s)") from exc
    except Exception as exc:  # a lazy result (a generator) fails only when it is read
        raise RewardError(f"{context} failed while its scores were read: {type(exc).__name__}: {exc}") from exc
    if len(items) != expected:
        raise RewardError(f"{context} returned {len(items)} score(s); expected exactly one per item ({expected})")
    scores = []
    for i, item in enumerate(items):
        number = _as_number(item)
        if number is None:
            raise RewardError(f"{context} returned {item!r:.80} ({type(item).__name__}) at index {i}; "
                              "expected a real number")
        if not math.isfinite(number):
            raise RewardError(f"{context} returned a non-finite score {number!r} at index {i}")
        scores.append(number)
    return scores


def score_texts(reward: Reward, texts: Sequence[str], *, prompt: str = "",
                stats: GenerationStats | None = None) -> list[float]:
    """``reward.score``, its model work charged to ``stats``, its errors wrapped, its output checked."""
    texts = list(texts)
    context = _context(reward, texts)
    try:
        with charged_to(stats):
            values = reward.score(texts, prompt=prompt)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"{context} failed: {type(exc).__name__}: {exc}") from exc
    return check_scores(values, len(texts), context)


def score_candidates(reward: Any, scorer: TokenScorer, prefix_ids: Sequence[int], candidates: Sequence[int],
                     *, stats: GenerationStats | None = None) -> list[float]:
    """A token scorer's ratings of ``candidates`` after ``prefix_ids``, checked like :func:`score_texts`."""
    context = (f"reward {reward_name(reward)!r} rating {len(candidates)} candidate token(s) after "
               f"{len(prefix_ids)} generated token(s)")
    try:
        with charged_to(stats):
            values = scorer.score_candidates(prefix_ids, candidates)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"{context} failed: {type(exc).__name__}: {exc}") from exc
    return check_scores(values, len(candidates), context)


def final_score(reward: Reward, text: str, *, prompt: str = "",
                stats: GenerationStats | None = None) -> tuple[RewardScore | None, str | None]:
    """The reward reported with a finished generation: ``(score, None)``, or ``(None, error)`` when it fails.

    A finished generation is never thrown away because the report failed: the error message comes
    back (``GenerationResult.reward_error``) and a :class:`RewardWarning` is emitted. Failures while
    a reward *steers* decoding still raise, since there is no answer to return.
    """
    context = _context(reward, [text])
    try:
        if type(reward).evaluate is Reward.evaluate:  # the default verdict is its one score: checked as such
            total = score_texts(reward, [text], prompt=prompt, stats=stats)[0]
            verdict = RewardScore(total=total, components={reward.name: total})
        else:
            with charged_to(stats):
                verdict = reward.evaluate(text, prompt=prompt)
        total = check_scores([verdict.total], 1, context)[0]
        names = list(verdict.components)
        values = check_scores([verdict.components[k] for k in names], len(names), context + " (components)")
    except Exception as exc:
        cause = exc if isinstance(exc, RewardError) else RewardError(f"{context} failed: {type(exc).__name__}: {exc}")
        message = str(cause)
        warnings.warn(f"the answer is returned without its reward: {message}", RewardWarning, stacklevel=3)
        return None, message
    return RewardScore(total=total, components=dict(zip(names, values))), None
