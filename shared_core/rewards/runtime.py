"""Calling a reward safely: every failure surfaces as a RewardError that says which reward and on what."""

from __future__ import annotations

import math
from collections.abc import Sequence

from shared_core.errors import RewardError
from shared_core.result import RewardScore
from shared_core.rewards.base import Reward


def _context(reward: Reward, texts: Sequence[str]) -> str:
    preview = texts[0][:60] + ("..." if texts and len(texts[0]) > 60 else "") if texts else ""
    return f"reward {getattr(reward, 'name', type(reward).__name__)!r} scoring {len(texts)} text(s) (first: {preview!r})"


def score_texts(reward: Reward, texts: Sequence[str], *, prompt: str = "") -> list[float]:
    """``reward.score`` with its errors wrapped in context and its output checked (one finite float per text)."""
    texts = list(texts)
    try:
        scores = reward.score(texts, prompt=prompt)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"{_context(reward, texts)} failed: {type(exc).__name__}: {exc}") from exc
    scores = [float(s) for s in scores]
    if len(scores) != len(texts):
        raise RewardError(f"{_context(reward, texts)} returned {len(scores)} scores; expected one per text")
    bad = [s for s in scores if not math.isfinite(s)]
    if bad:
        raise RewardError(f"{_context(reward, texts)} returned a non-finite score {bad[0]!r}")
    return scores


def final_score(reward: Reward, text: str, *, prompt: str = "") -> RewardScore:
    """The total and per-component scores reported in a GenerationResult (each component scored once)."""
    from shared_core.rewards.weighted import evaluate_reward

    try:
        verdict = evaluate_reward(reward, text, prompt=prompt)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"{_context(reward, [text])} failed: {type(exc).__name__}: {exc}") from exc
    if not math.isfinite(verdict.total):
        raise RewardError(f"{_context(reward, [text])} returned a non-finite score {verdict.total!r}")
    return RewardScore(total=float(verdict.total), components={k: float(v) for k, v in verdict.components.items()})
