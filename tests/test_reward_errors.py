"""Rewards that misbehave: every bad output is a RewardError naming the reward and the bad value.

A reward is user code, so its output is checked wherever a strategy uses it: one finite real number per
text (or per candidate token), nothing else, and a single score is never broadcast to many texts. This
holds for custom :class:`Reward` subclasses and custom token scorers, not only for Python functions. A
reward that fails only when the finished answer is scored does not cost the answer: the result comes
back with ``reward=None``, ``reward_error`` saying why, and a :class:`RewardWarning`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from shared_core import RewardError, RewardWarning, generate, report, stream
from shared_core.models import LocalModel
from shared_core.request import Request
from shared_core.result import RewardScore
from shared_core.rewards import Reward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Scores = Callable[[list[Any]], Any]


class CustomReward(Reward):
    """A user's own reward class whose ``score`` returns whatever ``make(texts)`` returns."""

    name = "my-reward"
    guidance = "judge"

    def __init__(self, make: Scores) -> None:
        self.make = make

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        return self.make(list(continuations))


class CustomScorer:
    def __init__(self, make: Scores) -> None:
        self.make = make

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        return self.make(list(candidate_ids))


class CustomTokenReward(Reward):
    """A reward with its own token scorer (rates candidate tokens); its text scores are fine."""

    name = "my-token-reward"
    guidance = "token"

    def __init__(self, make: Scores) -> None:
        self.make = make

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        return [0.0] * len(continuations)

    def token_scorer(self, model: Any, prompt_ids: Sequence[int], stats: Any = None) -> CustomScorer:
        return CustomScorer(self.make)


BAD_OUTPUTS: dict[str, tuple[Scores, str]] = {
    "a string": (lambda items: "0.5", "returned str '0.5'; expected a list of"),
    "None": (lambda items: None, "returned NoneType None"),
    "one score for many": (lambda items: [0.5], "returned 1 score(s); expected exactly one per item"),
    "one too many": (lambda items: [0.1] * (len(items) + 1), "score(s); expected exactly one per item"),
    "a NaN": (lambda items: [0.0] * (len(items) - 1) + [math.nan], "non-finite score nan at index"),
    "an infinity": (lambda items: [math.inf] * len(items), "non-finite score inf at index 0"),
    "words": (lambda items: ["high"] * len(items), "returned 'high' (str) at index 0; expected a real number"),
    "booleans": (lambda items: [True] * len(items), "returned True (bool) at index 0"),
    "nested lists": (lambda items: [[0.1, 0.2]] * len(items), "(list) at index 0; expected a real number"),
}

STRATEGIES: dict[str, dict[str, Any]] = {
    "best_of_n": {"n": 3, "seed": 0},
    "deal": {"top_k": 3, "lookahead": 2, "search_every": 1},
    "args": {"top_k": 3},
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_custom_reward_class_with_bad_output_raises_a_reward_error(tiny_model: LocalModel, strategy: str,
                                                                     bad: str) -> None:
    make, needle = BAD_OUTPUTS[bad]
    with pytest.raises(RewardError) as info:
        generate(tiny_model, "hello", strategy=strategy, reward=CustomReward(make), max_new_tokens=4,
                 **STRATEGIES[strategy])
    message = str(info.value)
    assert message.startswith("reward 'my-reward' scoring 3 text(s)"), message
    assert needle in message


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
def test_a_custom_token_scorer_with_bad_output_raises_a_reward_error(tiny_model: LocalModel, bad: str) -> None:
    make, needle = BAD_OUTPUTS[bad]
    with pytest.raises(RewardError) as info:
        generate(tiny_model, "hello", strategy="args", reward=CustomTokenReward(make), top_k=3, max_new_tokens=4)
    message = str(info.value)
    assert message.startswith("reward 'my-token-reward' rating 3 candidate token(s) after 0 generated"), message
    assert needle in message


def test_well_formed_scores_of_any_numeric_kind_are_accepted(tiny_model: LocalModel) -> None:
    import numpy as np

    for make in (lambda items: torch.arange(len(items), dtype=torch.float32),
                 lambda items: np.arange(len(items), dtype=np.float64),
                 lambda items: tuple(range(len(items)))):
        result = generate(tiny_model, "hello", strategy="best_of_n", reward=CustomReward(make), n=3, seed=0,
                          max_new_tokens=4)
        assert result.reward is not None and result.reward_error is None
        token = generate(tiny_model, "hello", strategy="args", reward=CustomTokenReward(make), top_k=3,
                         max_new_tokens=4)
        assert token.stats.extra["reward_scoring"] == "tokens"


def test_an_exception_while_steering_raises_with_the_reward_named(tiny_model: LocalModel) -> None:
    def explode(items: list[Any]) -> list[float]:
        raise ZeroDivisionError("boom")

    with pytest.raises(RewardError, match=r"reward 'my-reward' scoring 3 text\(s\).* failed: ZeroDivisionError: boom"):
        generate(tiny_model, "hello", strategy="best_of_n", reward=CustomReward(explode), n=3, seed=0,
                 max_new_tokens=4)
    with pytest.raises(RewardError, match="'my-token-reward' rating 3 candidate.* failed: ZeroDivisionError: boom"):
        generate(tiny_model, "hello", strategy="args", reward=CustomTokenReward(explode), top_k=3, max_new_tokens=4)


def test_a_lazy_result_that_fails_when_read_raises_a_reward_error(tiny_model: LocalModel) -> None:
    def lazy(items: list[Any]) -> Any:
        return (1.0 / (len(item) - len(item)) for item in items)  # a generator: fails only when read

    with pytest.raises(RewardError, match="'my-reward' scoring 3 text.* failed while its scores were read: "
                                          "ZeroDivisionError") as info:
        generate(tiny_model, "hello", strategy="best_of_n", reward=CustomReward(lazy), n=3, seed=0, max_new_tokens=4)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# ---------------------------------------------------------------------------------------- only the final verdict fails


def _explode(items: list[Any]) -> list[float]:
    raise RuntimeError("the judge is offline")


@pytest.mark.parametrize(("make", "needle"), [
    (_explode, "failed: RuntimeError: the judge is offline"),
    (lambda items: [math.nan] * len(items), "non-finite score nan at index 0"),
    (lambda items: "good", "returned str 'good'"),
    (lambda items: [0.5, 0.7], "returned 2 score(s); expected exactly one per item (1)"),
    (lambda items: [], "returned 0 score(s); expected exactly one per item (1)"),
], ids=["raises", "nan", "string", "two-scores", "no-score"])
def test_a_reward_failing_on_the_final_answer_keeps_the_answer(tiny_model: LocalModel, make: Scores,
                                                              needle: str) -> None:
    plain = generate(tiny_model, "hello", max_new_tokens=6)
    request = Request.build(tiny_model, "hello", strategy="greedy", reward=CustomReward(make), max_new_tokens=6)
    with pytest.warns(RewardWarning, match="the answer is returned without its reward: reward 'my-reward'"):
        result = generate(request)
    assert result.text == plain.text and result.token_ids == plain.token_ids
    assert result.finish_reason == plain.finish_reason
    assert result.reward is None and result.reward_error is not None
    assert result.reward_error.startswith("reward 'my-reward' scoring 1 text(s)") and needle in result.reward_error
    assert report(result, request)["reward_error"] == result.reward_error


def test_a_failing_final_verdict_in_a_stream_keeps_the_streamed_answer(tiny_model: LocalModel) -> None:
    deltas = stream(tiny_model, "hello", strategy="greedy", reward=CustomReward(_explode), max_new_tokens=6)
    with pytest.warns(RewardWarning):
        text = "".join(deltas)
    assert text == deltas.result.text and text
    assert deltas.result.reward is None and "the judge is offline" in (deltas.result.reward_error or "")


class BadVerdict(CustomReward):
    """Steers fine, but reports a broken verdict (a NaN component)."""

    def evaluate(self, continuation: str, *, prompt: str = "") -> RewardScore:
        return RewardScore(total=0.5, components={"style": math.nan})


def test_a_broken_verdict_after_good_steering_keeps_the_answer(tiny_model: LocalModel) -> None:
    reward = BadVerdict(lambda items: [float(len(t)) for t in items])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = generate(tiny_model, "hello", strategy="best_of_n", reward=reward, n=3, seed=0, max_new_tokens=4)
    assert any(issubclass(w.category, RewardWarning) for w in caught)
    assert result.reward is None and "(components) returned a non-finite score nan" in (result.reward_error or "")
    assert result.text and result.stats.extra["samples"] == 3
