"""Guided strategies (args, deal, best_of_n): mechanics on a tiny random model, validation, errors.

The end-to-end checks on the embedded model are in ``test_strategies_embedded.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from shared_core.decoding import generate
from shared_core.decoding.lookahead import ends_sentence, reward_target
from shared_core.errors import ConfigError, RewardError
from shared_core.models import LocalModel
from shared_core.rewards.base import Reward

PROMPT = "Tell me a short story about a lighthouse."
TOKENS = 24


def count_a(texts: list[str]) -> list[float]:
    """A synthetic reward: how many times the letter "a" occurs."""
    return [float(t.count("a")) for t in texts]


def greedy_ids(model: LocalModel, prompt: str = PROMPT, n: int = TOKENS) -> list[int]:
    return generate(model, prompt, max_new_tokens=n).token_ids


def hf_greedy(model: LocalModel, ids: list[int], n: int) -> list[int]:
    """Greedy continuation of ``ids`` by transformers itself (no deal code involved)."""
    with torch.inference_mode():
        out = model.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, num_beams=1,
                                   eos_token_id=sorted(model.eos_token_ids), pad_token_id=model.pad_token_id)
    return out[0, len(ids):].tolist()


# -- args -----------------------------------------------------------------------------------------


def test_args_weight_zero_is_exactly_greedy(tiny_model: LocalModel) -> None:
    guided = generate(tiny_model, PROMPT, strategy="args", reward=count_a, weight=0.0, max_new_tokens=TOKENS)
    assert guided.token_ids == greedy_ids(tiny_model)
    # ...while a positive weight with the same reward does change the output.
    assert generate(tiny_model, PROMPT, strategy="args", reward=count_a, weight=5.0,
                    max_new_tokens=TOKENS).token_ids != guided.token_ids


def test_args_moves_output_toward_the_reward(tiny_model: LocalModel) -> None:
    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=count_a, max_new_tokens=TOKENS)
    guided = generate(tiny_model, PROMPT, strategy="args", reward=count_a, weight=5.0, max_new_tokens=TOKENS)
    assert guided.reward.total > greedy.reward.total + 3
    assert guided.stats.extra["reward_scoring"] == "text"
    assert guided.stats.extra["candidates_scored"] == 10 * guided.stats.new_tokens
    assert guided.stats.forward_passes["policy"] == guided.stats.new_tokens  # prefill + one per later token


def test_args_only_considers_the_top_k_tokens(tiny_model: LocalModel) -> None:
    """With top_k=1 the reward has nothing to choose from: greedy, however large the weight."""
    guided = generate(tiny_model, PROMPT, strategy="args", reward=count_a, weight=100.0, top_k=1,
                      max_new_tokens=TOKENS)
    assert guided.token_ids == greedy_ids(tiny_model)


class FavouriteToken(Reward):
    """Rewards one token id through an incremental token scorer; text scoring counts its calls."""

    name = "favourite"

    def __init__(self, token_id: int, text: str) -> None:
        self.token_id = token_id
        self.text = text
        self.text_calls = 0
        self.token_calls = 0

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        self.text_calls += 1
        return [float(c.count(self.text)) for c in continuations]

    def token_scorer(self, model, prompt_ids, stats=None):  # type: ignore[no-untyped-def]
        reward = self

        class Scorer:
            def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
                reward.token_calls += 1
                return [10.0 if c == reward.token_id else 0.0 for c in candidate_ids]

        return Scorer()


def test_args_uses_the_incremental_token_scorer(tiny_model: LocalModel) -> None:
    # the 5th most likely first token of the greedy run becomes the favourite
    logits = tiny_model.model(torch.tensor([tiny_model.render(PROMPT)])).logits[0, -1]
    favourite = int(torch.topk(logits, 5).indices[4])
    reward = FavouriteToken(favourite, tiny_model.decode([favourite]))
    result = generate(tiny_model, PROMPT, strategy="args", reward=reward, weight=1.0, max_new_tokens=8)
    assert result.token_ids[0] == favourite
    assert result.stats.extra["reward_scoring"] == "tokens"
    assert reward.token_calls == 8
    assert reward.text_calls <= 2  # only the final score of the result, never per step


def test_args_sampling_is_reproducible_with_a_seed(tiny_model: LocalModel) -> None:
    runs = [generate(tiny_model, PROMPT, strategy="args", reward=count_a, temperature=1.0, seed=7,
                     max_new_tokens=TOKENS).token_ids for _ in range(2)]
    assert runs[0] == runs[1]
    assert generate(tiny_model, PROMPT, strategy="args", reward=count_a, temperature=1.0, seed=8,
                    max_new_tokens=TOKENS).token_ids != runs[0]


# -- deal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"top_k": 1},
    {"top_k": 1, "lookahead": 3},
    {"top_k": 1, "lookahead": 5, "search_every": 2},
    {"top_k": 1, "lookahead": 4, "beam_width": 3},
])
def test_deal_with_one_candidate_is_greedy(tiny_model: LocalModel, params: dict) -> None:
    """One candidate per search leaves nothing to choose: the committed chunks, cropped caches and the
    logits kept from rollouts must then reproduce greedy decoding token for token."""
    result = generate(tiny_model, PROMPT, strategy="deal", reward=count_a, max_new_tokens=TOKENS, **params)
    assert result.token_ids == greedy_ids(tiny_model)


def test_deal_commits_the_rollout_it_scored(tiny_model: LocalModel) -> None:
    """The reward wants the 3rd-ranked first token followed by its own greedy continuation (as
    transformers computes it). Every later search must find that continuation among its rollouts, which
    only happens if the gathered, cropped KV cache and the kept rollout logits are exact."""
    prompt_ids = tiny_model.render(PROMPT)
    logits = tiny_model.model(torch.tensor([prompt_ids])).logits[0, -1]
    third = int(torch.topk(logits, 3).indices[2])
    expected = [third] + hf_greedy(tiny_model, prompt_ids + [third], 15)
    expected_text = tiny_model.decode(expected)

    def agrees_with_expected(texts: list[str]) -> list[float]:
        def common(text: str) -> int:
            n = 0
            while n < min(len(text), len(expected_text)) and text[n] == expected_text[n]:
                n += 1
            return n
        return [float(common(t)) for t in texts]

    result = generate(tiny_model, PROMPT, strategy="deal", reward=agrees_with_expected, top_k=3, lookahead=4,
                      search_every=3, max_new_tokens=16)
    assert result.token_ids == expected
    assert result.stats.extra["searches"] >= 5


def test_deal_moves_output_toward_the_reward(tiny_model: LocalModel) -> None:
    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=count_a, max_new_tokens=TOKENS)
    guided = generate(tiny_model, PROMPT, strategy="deal", reward=count_a, max_new_tokens=TOKENS)
    assert guided.reward.total > greedy.reward.total + 3
    extra = guided.stats.extra
    assert extra["searches"] >= 2 and extra["candidates_scored"] >= 10 * extra["searches"]
    # each search is one batched rollout of lookahead=8 forwards and commits search_every=4 tokens
    assert extra["searches"] <= TOKENS // 4 + 1
    assert guided.stats.forward_passes["policy"] <= 1 + 8 * extra["searches"]


def test_deal_beam_search_moves_output_toward_the_reward(tiny_model: LocalModel) -> None:
    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=count_a, max_new_tokens=TOKENS)
    guided = generate(tiny_model, PROMPT, strategy="deal", reward=count_a, beam_width=3, top_k=4, lookahead=4,
                      max_new_tokens=TOKENS)
    assert guided.reward.total > greedy.reward.total + 3
    assert guided.stats.new_tokens <= TOKENS


def test_deal_ends_at_a_sentence_boundary_within_a_length_budget(tiny_model: LocalModel) -> None:
    """The random model never stops by itself; with a length target, deal ends (EOS) right after a
    sentence-closing token inside the budget instead of running on."""
    budget = {"type": "length", "max_words": 6}
    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=budget, max_new_tokens=40)
    assert greedy.finish_reason == "length" and len(greedy.text.split()) > 6
    result = generate(tiny_model, PROMPT, strategy="deal", reward=budget, max_new_tokens=40)
    assert result.finish_reason == "eos" and ends_sentence(result.text)
    assert len(result.text.split()) <= 6 and result.reward.total == 0.0


def test_reward_targets_of_the_built_in_rewards() -> None:
    from shared_core.policies import build_reward

    assert reward_target(build_reward({"type": "keywords", "words": ["a", "b"]})) == 1.0
    assert reward_target(build_reward({"type": "keywords", "forbidden": ["a"]})) == 0.0
    assert reward_target(build_reward({"type": "length", "max_words": 3})) == 0.0
    assert reward_target(build_reward({"type": "weighted", "components": [
        {"weight": 2.0, "reward": {"type": "keywords", "words": ["a"]}},
        {"weight": 0.5, "reward": {"type": "length", "max_words": 3}}]})) == 2.0
    assert reward_target(build_reward(count_a)) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("The end.", True), ('He said "stop!"', True), ("Really?", True), ("the **end.**", True),
    ("tilted at 23.", False), ("1.", False), ("no stop", False), ("trailing comma,", False),
])
def test_sentence_boundaries(text: str, expected: bool) -> None:
    assert ends_sentence(text) is expected


# -- best_of_n ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    {"temperature": 0.8, "top_p": 0.95},
    {"temperature": 1.3, "top_p": 0.5},
    {"temperature": 0.7, "top_k": 40},
    {"temperature": 1.0, "top_k": 20, "top_p": 0.9},
])
def test_shortlist_nucleus_is_the_exact_sampling_distribution(settings: dict) -> None:
    """best_of_n samples from a short list instead of sorting the vocabulary: same distribution."""
    from shared_core.decoding.best_of_n import nucleus
    from shared_core.processors.sampling import SamplingParams, warp_logits

    params = SamplingParams(**settings)
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0)) * 4
    ids, probs, exact = nucleus(logits, params)
    reference = warp_logits(logits, params).softmax(dim=-1)
    assert bool(exact.all())
    dense = torch.zeros_like(reference).scatter(-1, ids, probs)
    torch.testing.assert_close(dense, reference)


def test_best_of_n_is_reproducible_with_a_seed(tiny_model: LocalModel) -> None:
    runs = [generate(tiny_model, PROMPT, strategy="best_of_n", reward=count_a, n=3, seed=3, max_new_tokens=TOKENS)
            for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].stats.extra["sample_scores"] == runs[1].stats.extra["sample_scores"]


def few_a(texts: list[str]) -> list[float]:
    """A synthetic reward for fewer "a"s (the tiny model's greedy output has many)."""
    return [-c for c in count_a(texts)]


def test_best_of_n_keeps_the_best_sample(tiny_model: LocalModel) -> None:
    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=few_a, max_new_tokens=TOKENS)
    result = generate(tiny_model, PROMPT, strategy="best_of_n", reward=few_a, n=8, seed=0, max_new_tokens=TOKENS)
    scores = result.stats.extra["sample_scores"]
    assert len(scores) == 8 and len(set(scores)) > 1
    assert result.reward.total == max(scores) > greedy.reward.total
    assert result.stats.forward_passes["policy"] == TOKENS  # one prefill, then the 8 rows as one batch


def test_best_of_n_with_greedy_row_never_loses_to_greedy(tiny_model: LocalModel) -> None:
    def prefers_short(texts: list[str]) -> list[float]:
        return [-float(len(t)) for t in texts]

    greedy = generate(tiny_model, PROMPT, strategy="greedy", reward=prefers_short, max_new_tokens=TOKENS)
    result = generate(tiny_model, PROMPT, strategy="best_of_n", reward=prefers_short, n=4, seed=0,
                      include_greedy=True, max_new_tokens=TOKENS)
    assert result.reward.total >= greedy.reward.total


def test_best_of_n_applies_stop_strings_before_scoring(tiny_model: LocalModel) -> None:
    """With "a" as a stop string every sample is cut before its first "a", so all score 0."""
    free = generate(tiny_model, PROMPT, strategy="best_of_n", reward=count_a, n=4, seed=1, max_new_tokens=TOKENS)
    assert max(free.stats.extra["sample_scores"]) > 0
    cut = generate(tiny_model, PROMPT, strategy="best_of_n", reward=count_a, n=4, seed=1, stop="a",
                   max_new_tokens=TOKENS)
    assert cut.stats.extra["sample_scores"] == [0.0] * 4
    assert "a" not in cut.text
    assert cut.stats.extra["sample_tokens"] < free.stats.extra["sample_tokens"]  # cut rows left the batch


@pytest.mark.parametrize("strategy", ["args", "deal", "best_of_n"])
def test_stop_strings_end_guided_output(tiny_model: LocalModel, strategy: str) -> None:
    result = generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, stop="e", seed=0, max_new_tokens=TOKENS)
    assert result.finish_reason == "stop"
    assert "e" not in result.text and result.reward.total == count_a([result.text])[0]


# -- validation and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "params", "field"), [
    ("args", {"top_k": 0}, "params.top_k"),
    ("args", {"weight": float("nan")}, "params.weight"),
    ("args", {"weight": -1.0}, "params.weight"),
    ("args", {"weight": float("inf")}, "params.weight"),
    ("args", {"temperature": -0.5}, "params.temperature"),
    ("deal", {"top_k": 0}, "params.top_k"),
    ("deal", {"lookahead": 0}, "params.lookahead"),
    ("deal", {"beam_width": 0}, "params.beam_width"),
    ("deal", {"search_every": 9, "lookahead": 4}, "params.search_every"),
    ("deal", {"target": float("nan")}, "params.target"),
    ("best_of_n", {"n": 0}, "params.n"),
    ("best_of_n", {"temperature": 0.0}, "params.temperature"),
    ("best_of_n", {"top_p": 1.5}, "params.top_p"),
    ("deal", {"depth": 3}, "params.depth"),
])
def test_bad_parameters_are_rejected_before_model_work(strategy: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate("/nonexistent/model", PROMPT, strategy=strategy, reward=count_a, **params)
    assert info.value.field == field
    assert strategy in str(info.value)


@pytest.mark.parametrize("strategy", ["args", "deal", "best_of_n"])
def test_a_guided_strategy_needs_a_reward(strategy: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate("/nonexistent/model", PROMPT, strategy=strategy)
    assert info.value.field == "reward" and strategy in str(info.value)


@pytest.mark.parametrize("strategy", ["args", "deal", "best_of_n"])
def test_a_failing_reward_surfaces_with_context(tiny_model: LocalModel, strategy: str) -> None:
    def broken_reward(texts: list[str]) -> list[float]:
        raise ZeroDivisionError("the scorer divided by zero")

    with pytest.raises(RewardError) as info:
        generate(tiny_model, PROMPT, strategy=strategy, reward=broken_reward, max_new_tokens=8)
    message = str(info.value)
    assert "broken_reward" in message and "ZeroDivisionError" in message and "divided by zero" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_failing_token_scorer_surfaces_with_context(tiny_model: LocalModel) -> None:
    class Broken(FavouriteToken):
        def token_scorer(self, model, prompt_ids, stats=None):  # type: ignore[no-untyped-def]
            class Scorer:
                def score_candidates(self, prefix_ids, candidate_ids):  # type: ignore[no-untyped-def]
                    raise KeyError("no such token")

            return Scorer()

    with pytest.raises(RewardError, match="favourite.*candidate token.*KeyError"):
        generate(tiny_model, PROMPT, strategy="args", reward=Broken(1, "x"), max_new_tokens=4)


# ---------------------------------------------------------------------------------------- logits processors


STRATEGY_CASES = {
    "greedy": {},
    "sample": {"temperature": 0.7, "seed": 0},
    "args": {"reward": count_a},
    "deal": {"reward": count_a},
    "best_of_n": {"reward": count_a, "n": 3, "seed": 0},
    "genarm": {"reward": "ARM"},
    "transfer_q": {"reward": count_a, "baseline": "BASELINE", "k": 3, "horizon": 2},
    "cards": {"reward": count_a, "seed": 0, "max_segment": 4, "min_segment": 2},
    "speculative_rejection": {"reward": count_a, "n": 3, "seed": 0, "first_check": 2},
    "tool_call": {"functions": [{"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "maxLength": 40}}, "required": ["x"]}}]},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_CASES))
def test_the_repetition_penalty_applies_to_every_strategy(tiny_model: LocalModel, tiny_model_dir: str,
                                                           strategy: str, monkeypatch) -> None:
    """The request's logits processors run in every strategy: a repetition penalty reaches each one's choices."""
    from shared_core.decoding import get_strategy, list_strategies
    from shared_core.processors import RepetitionPenaltyProcessor

    built_in = {name for name in list_strategies() if get_strategy(name).__module__.startswith("shared_core.")}
    assert set(STRATEGY_CASES) >= built_in - {"urial"}, "a built-in strategy has no repetition-penalty case"
    kwargs = dict(STRATEGY_CASES[strategy])
    if kwargs.get("reward") == "ARM":
        kwargs["reward"] = {"type": "arm", "model": tiny_model_dir, "weight": 0.5}
    if kwargs.get("baseline") == "BASELINE":
        kwargs["baseline"] = tiny_model_dir
    seen: list[int] = []
    original = RepetitionPenaltyProcessor.__call__

    def spy(self, generated, scores):
        seen.append(len(generated))
        return original(self, generated, scores)

    monkeypatch.setattr(RepetitionPenaltyProcessor, "__call__", spy)
    plain = generate(tiny_model, "hello", strategy=strategy, max_new_tokens=30, **kwargs)
    assert seen == []  # penalty 1 (the default): no processor at all
    penalized = generate(tiny_model, "hello", strategy=strategy, max_new_tokens=30, repetition_penalty=50.0, **kwargs)
    assert seen, f"{strategy} never ran the request's processors"
    if strategy != "tool_call":  # where the random model repeats itself, a strong penalty varies its tokens
        def variety(ids: list[int]) -> float:
            return len(set(ids)) / len(ids)

        assert variety(penalized.token_ids) >= variety(plain.token_ids), strategy
        if variety(plain.token_ids) < 0.8:
            assert variety(penalized.token_ids) > variety(plain.token_ids), strategy


@pytest.mark.parametrize("strategy", ["sample", "best_of_n", "speculative_rejection"])
def test_a_vanishing_temperature_samples_like_greedy_instead_of_failing(tiny_model: LocalModel, strategy: str) -> None:
    """A temperature of 1e-44 overflows a plain ``scores / t`` into inf - inf = NaN; it must act as greedy."""
    greedy = generate(tiny_model, PROMPT, max_new_tokens=6)
    extra = {} if strategy == "sample" else {"reward": lambda texts: [0.0] * len(texts), "n": 2}
    result = generate(tiny_model, PROMPT, strategy=strategy, temperature=1e-44, seed=0, max_new_tokens=6, **extra)
    assert result.token_ids == greedy.token_ids
