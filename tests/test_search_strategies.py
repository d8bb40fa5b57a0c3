"""speculative_rejection and cards: mechanics on a tiny random model, the unguided paths, validation, errors.

The end-to-end checks on the embedded model are in ``test_search_strategies_embedded.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from shared_core.cancel import CancelToken
from shared_core.decoding import generate, get_strategy
from shared_core.decoding.candidates import cache_rows, next_token_entropy
from shared_core.decoding.speculative_rejection import check_lengths, kept_count
from shared_core.errors import ConfigError, RewardError
from shared_core.models import LocalModel
from shared_core.rewards.base import Reward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "Tell me a short story about a lighthouse."
TOKENS = 24
SAMPLING = {"temperature": 0.8, "top_p": 0.95}
SEEDS = range(4)


def count_a(texts: list[str]) -> list[float]:
    """A synthetic reward: how many times the letter "a" occurs."""
    return [float(t.count("a")) for t in texts]


class Counting:
    """A reward function that counts its calls and the texts it scored."""

    def __init__(self, fn=count_a) -> None:  # type: ignore[no-untyped-def]
        self.fn = fn
        self.calls = 0
        self.texts = 0
        self.__name__ = "counting"

    def __call__(self, texts: list[str]) -> list[float]:
        self.calls += 1
        self.texts += len(texts)
        return self.fn(texts)


def constant(texts: list[str]) -> list[float]:
    return [0.5] * len(texts)


def sampled(model: LocalModel, seed: int, n: int = TOKENS, **kwargs) -> list[int]:  # type: ignore[no-untyped-def]
    return generate(model, PROMPT, strategy="sample", seed=seed, max_new_tokens=n, **{**SAMPLING, **kwargs}).token_ids


def greedy_ids(model: LocalModel, n: int = TOKENS) -> list[int]:
    return generate(model, PROMPT, max_new_tokens=n).token_ids


# -- shared pieces --------------------------------------------------------------------------------


def test_cache_rows_takes_rows_out_without_touching_the_batch(tiny_model: LocalModel) -> None:
    from shared_core.backends.local import ModelRunner
    from shared_core.result import GenerationStats

    runner = ModelRunner(tiny_model, GenerationStats())
    ids = tiny_model.render(PROMPT)
    with torch.inference_mode():
        _, cache = runner.prefill(ids)
        cache.batch_repeat_interleave(3)
        runner.step(cache, torch.tensor([[11], [22], [33]]))
        length = cache.get_seq_length()
        row = cache_rows(cache, [1])
        assert row.get_seq_length() == length and cache.get_seq_length() == length
        # the copied row continues exactly like the same row inside the batch, and the batch is unchanged
        alone = runner.step(row, torch.tensor([[44]]))
        batch = runner.step(cache, torch.tensor([[44], [44], [44]]))
        torch.testing.assert_close(alone[0], batch[1], rtol=1e-4, atol=1e-4)
        assert row.get_seq_length() == length + 1 and cache.get_seq_length() == length + 1
        # repeated indices expand one row into several
        assert cache_rows(row, [0, 0, 0]).layers[0].keys.shape[0] == 3
        # and a plain prefix (no batch) gives the same logits as one long prefill
        reference = tiny_model.model(torch.tensor([ids + [22, 44]])).logits[0, -1]
        torch.testing.assert_close(alone[0], reference, rtol=1e-4, atol=1e-4)


def test_next_token_entropy() -> None:
    vocab = 1000
    uniform = torch.zeros(1, vocab)
    certain = torch.full((1, vocab), float("-inf"))
    certain[0, 3] = 0.0
    values = next_token_entropy(torch.cat([uniform, certain]))
    assert values[0].item() == pytest.approx(math.log(vocab), rel=1e-5)
    assert values[1].item() == 0.0


def test_check_schedule_and_survivors() -> None:
    assert check_lengths(4, 0.5, 48) == [4, 8, 16, 32]
    assert check_lengths(8, 0.5, 48) == [8, 16, 32]
    assert check_lengths(4, 0.75, 100) == [4, 16, 64]
    assert check_lengths(4, 0.0, 48) == []
    assert check_lengths(2, 0.1, 6) == [2, 3, 4, 5]  # the length always moves on
    assert [kept_count(m, 0.5) for m in (1, 2, 3, 8, 16)] == [1, 1, 2, 4, 8]
    assert kept_count(16, 0.75) == 4 and kept_count(5, 0.0) == 5


# -- speculative_rejection ------------------------------------------------------------------------


def test_speculative_rejection_with_one_candidate_is_plain_sampling_without_reward_calls(
        tiny_model: LocalModel) -> None:
    reward = Counting()
    result = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=reward, n=1, seed=3,
                      max_new_tokens=TOKENS, **SAMPLING)
    assert result.token_ids == sampled(tiny_model, 3)
    assert reward.calls == 1  # only the reported score of the finished text


@pytest.mark.parametrize("seed", [0, 5])
def test_speculative_rejection_with_a_constant_reward_is_plain_sampling(tiny_model: LocalModel, seed: int) -> None:
    """Ties go to the lower candidate index and candidate 0 samples like ``sample``: it survives every check."""
    result = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=constant, n=8, seed=seed,
                      max_new_tokens=TOKENS, **SAMPLING)
    assert result.token_ids == sampled(tiny_model, seed)
    extra = result.stats.extra
    assert extra["chosen"] == 0
    assert [c["contenders"] for c in extra["checks"]] == [8, 4, 2]  # at 4, 8 and 16 tokens
    assert [c["kept"] for c in extra["checks"]] == [4, 2, 1]


def test_speculative_rejection_moves_output_toward_the_reward(tiny_model: LocalModel) -> None:
    guided = [generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=count_a, n=8, seed=s,
                       max_new_tokens=TOKENS, **SAMPLING).reward.total for s in SEEDS]
    plain = [count_a([tiny_model.decode(sampled(tiny_model, s))])[0] for s in SEEDS]
    assert sum(guided) / len(guided) > sum(plain) / len(plain) + 1.5


def test_speculative_rejection_drops_rows_early(tiny_model: LocalModel) -> None:
    """Rejected rows leave the batch: far fewer token-rows than n full samples, one batched step per token."""
    result = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=count_a, n=8, seed=0,
                      max_new_tokens=TOKENS, **SAMPLING)
    extra = result.stats.extra
    assert extra["sample_tokens"] == 8 * 4 + 4 * 4 + 2 * 8 + 1 * 8  # 8 rows to 4 tokens, 4 to 8, 2 to 16, 1 to 24
    assert result.stats.forward_passes["policy"] == TOKENS  # the prefill, then one batched step per token
    assert extra["reward_texts_scored"] <= 8 + 4 + 2 + 1
    assert result.reward.total == extra["chosen_score"]


def test_speculative_rejection_without_rejection_is_best_of_n_over_its_samples(tiny_model: LocalModel) -> None:
    reward = Counting()
    result = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=reward, n=4, rejection_rate=0.0,
                      seed=2, max_new_tokens=TOKENS, **SAMPLING)
    extra = result.stats.extra
    assert extra["checks"] == [] and extra["sample_tokens"] == 4 * TOKENS
    assert reward.calls == 2 and reward.texts == 5  # the 4 finished samples at once, then the reported score
    # candidate 0 is the plain sample with this seed; the answer scores at least as well
    assert result.reward.total >= count_a([tiny_model.decode(sampled(tiny_model, 2))])[0]


class StopsWhenDone(Reward):
    """A reward with a known maximum that every text reaches: the first finished candidate wins at once."""

    name = "satisfied"

    @property
    def max_score(self) -> float:
        return 0.0

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        return [0.0] * len(continuations)


def test_speculative_rejection_stops_when_a_finished_candidate_reaches_the_maximum(tiny_model: LocalModel) -> None:
    free = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=constant, n=8, stop="e", seed=0,
                    max_new_tokens=TOKENS, **SAMPLING)
    early = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=StopsWhenDone(), n=8, stop="e",
                     seed=0, max_new_tokens=TOKENS, **SAMPLING)
    assert early.stats.extra["stopped_at_target"] and not free.stats.extra["stopped_at_target"]
    assert early.finish_reason == "stop" and "e" not in early.text
    assert early.stats.extra["sample_tokens"] < free.stats.extra["sample_tokens"]


def test_speculative_rejection_keeps_caches_consistent(tiny_model: LocalModel) -> None:
    """Nearly greedy sampling makes every row the greedy continuation: pruning and rows leaving must not
    disturb the surviving rows' caches, so the answer is greedy decoding token for token."""
    result = generate(tiny_model, PROMPT, strategy="speculative_rejection", reward=count_a, n=6, first_check=2,
                      temperature=1e-4, top_p=1.0, seed=0, max_new_tokens=TOKENS)
    assert result.token_ids == greedy_ids(tiny_model)
    assert len(result.stats.extra["checks"]) >= 3


# -- cards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 4])
def test_cards_with_weight_zero_is_plain_sampling_without_reward_calls(tiny_model: LocalModel, seed: int) -> None:
    reward = Counting()
    result = generate(tiny_model, PROMPT, strategy="cards", reward=reward, weight=0.0, seed=seed,
                      max_new_tokens=TOKENS, **SAMPLING)
    assert result.token_ids == sampled(tiny_model, seed)
    assert reward.calls == 1  # only the reported score of the finished text
    assert result.stats.extra["tries"] == result.stats.extra["segments"] >= 2


def test_cards_with_a_constant_reward_is_plain_sampling(tiny_model: LocalModel) -> None:
    """A reward without a maximum is compared with the text accepted so far: a constant one accepts every
    first candidate, which samples like ``sample``."""
    result = generate(tiny_model, PROMPT, strategy="cards", reward=constant, seed=6, max_new_tokens=TOKENS,
                      **SAMPLING)
    assert result.token_ids == sampled(tiny_model, 6)
    extra = result.stats.extra
    assert extra["rejected"] == 0 and extra["tries"] == extra["segments"] >= 2
    assert extra["candidates_scored"] >= extra["segments"]


def test_cards_moves_output_toward_the_reward(tiny_model: LocalModel) -> None:
    guided = [generate(tiny_model, PROMPT, strategy="cards", reward=count_a, seed=s, max_new_tokens=TOKENS,
                       **SAMPLING) for s in SEEDS]
    plain = [count_a([tiny_model.decode(sampled(tiny_model, s))])[0] for s in SEEDS]
    assert sum(r.reward.total for r in guided) / len(guided) > sum(plain) / len(plain) + 1.5
    assert sum(r.stats.extra["rejected"] for r in guided) > 0


@pytest.mark.parametrize(("params", "segments"), [
    ({"entropy_threshold": 1e-6, "min_segment": 4}, TOKENS // 4),  # every position is uncertain enough
    ({"entropy_threshold": 1e6, "min_segment": 4, "max_segment": 8}, TOKENS // 8),  # none is: full segments
])
def test_cards_segments_end_at_the_entropy_threshold(tiny_model: LocalModel, params: dict, segments: int) -> None:
    result = generate(tiny_model, PROMPT, strategy="cards", reward=constant, seed=0, max_new_tokens=TOKENS,
                      **SAMPLING, **params)
    assert result.stats.extra["segments"] == segments
    assert result.token_ids == sampled(tiny_model, 0)


def test_cards_accepts_the_best_candidate_after_max_rejections(tiny_model: LocalModel) -> None:
    """A hard threshold nothing reaches (target above every score): each segment is decided by forced
    acceptance after max_rejections candidates, i.e. two tries of 3."""
    reward = Counting()
    result = generate(tiny_model, PROMPT, strategy="cards", reward=reward, acceptance="hard", target=1000.0,
                      candidates=3, max_rejections=6, min_segment=6, max_segment=6, seed=0,
                      max_new_tokens=TOKENS, **SAMPLING)
    extra = result.stats.extra
    assert extra["segments"] == TOKENS // 6 and extra["forced"] == extra["segments"]
    assert extra["tries"] == 2 * extra["segments"] and extra["rejected"] == 6 * extra["segments"]
    assert result.stats.new_tokens == TOKENS


def test_cards_commits_the_candidates_caches_exactly(tiny_model: LocalModel) -> None:
    """Nearly greedy sampling makes every candidate the greedy continuation: with rejections, forced
    acceptances and caches copied out of the batch, the answer must still be greedy decoding."""
    result = generate(tiny_model, PROMPT, strategy="cards", reward=count_a, acceptance="hard", target=1000.0,
                      candidates=3, max_rejections=4, temperature=1e-4, top_p=1.0, seed=0, max_new_tokens=TOKENS)
    assert result.token_ids == greedy_ids(tiny_model)
    assert result.stats.extra["forced"] >= 2


def test_cards_streams_segment_by_segment(tiny_model: LocalModel) -> None:
    from shared_core.decoding import stream

    chunks = stream(tiny_model, PROMPT, strategy="cards", reward=count_a, seed=0, max_new_tokens=TOKENS, **SAMPLING)
    pieces = list(chunks)
    assert len(pieces) >= 2 and "".join(pieces) == chunks.result.text


# -- both -----------------------------------------------------------------------------------------


STRATEGIES = ["speculative_rejection", "cards"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_strategies_are_reproducible_with_a_seed(tiny_model: LocalModel, strategy: str) -> None:
    runs = [generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, seed=9, max_new_tokens=TOKENS).token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, seed=10,
                    max_new_tokens=TOKENS).token_ids != runs[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_strings_end_search_output(tiny_model: LocalModel, strategy: str) -> None:
    result = generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, stop="e", seed=0, max_new_tokens=TOKENS)
    assert result.finish_reason == "stop"
    assert "e" not in result.text and result.reward.total == count_a([result.text])[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_strategies_apply_the_request_processors(tiny_model: LocalModel, strategy: str) -> None:
    """The request's processors run before every choice: a "penalty" below 1 rewards repeats, so every
    candidate falls into a loop of a few tokens, which the random model never does by itself."""
    plain = generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, seed=0, max_new_tokens=TOKENS)
    looping = generate(tiny_model, PROMPT, strategy=strategy, reward=count_a, seed=0, max_new_tokens=TOKENS,
                       repetition_penalty=0.001)
    assert len(set(plain.token_ids)) > TOKENS - 3
    assert len(set(looping.token_ids)) <= 4


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_cancelled_search_ends_as_cancelled(tiny_model: LocalModel, strategy: str) -> None:
    token = CancelToken()

    def cancels_on_second_call(texts: list[str]) -> list[float]:
        if cancels_on_second_call.calls >= 1:  # type: ignore[attr-defined]
            token.cancel()
        cancels_on_second_call.calls += 1  # type: ignore[attr-defined]
        return count_a(texts)

    cancels_on_second_call.calls = 0  # type: ignore[attr-defined]
    result = generate(tiny_model, PROMPT, strategy=strategy, reward=cancels_on_second_call, seed=0, cancel=token,
                      max_new_tokens=TOKENS)
    assert result.finish_reason == "cancelled" and result.reward is None
    assert result.stats.forward_passes["policy"] < TOKENS


@pytest.mark.parametrize(("strategy", "params", "field"), [
    ("speculative_rejection", {"n": 0}, "params.n"),
    ("speculative_rejection", {"rejection_rate": 1.0}, "params.rejection_rate"),
    ("speculative_rejection", {"rejection_rate": -0.1}, "params.rejection_rate"),
    ("speculative_rejection", {"first_check": 0}, "params.first_check"),
    ("speculative_rejection", {"temperature": 0.0}, "params.temperature"),
    ("speculative_rejection", {"beam": 2}, "params.beam"),
    ("cards", {"weight": -1.0}, "params.weight"),
    ("cards", {"weight": float("nan")}, "params.weight"),
    ("cards", {"candidates": 0}, "params.candidates"),
    ("cards", {"acceptance": "maybe"}, "params.acceptance"),
    ("cards", {"alpha": 1.5}, "params.alpha"),
    ("cards", {"entropy_threshold": 0.0}, "params.entropy_threshold"),
    ("cards", {"min_segment": 8, "max_segment": 4}, "params.max_segment"),
    ("cards", {"max_rejections": 0}, "params.max_rejections"),
    ("cards", {"target": float("inf")}, "params.target"),
    ("cards", {"top_p": 0.0}, "params.top_p"),
])
def test_bad_parameters_are_rejected_before_model_work(strategy: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate("/nonexistent/model", PROMPT, strategy=strategy, reward=count_a, **params)
    assert info.value.field == field
    assert strategy in str(info.value)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_search_strategy_needs_a_reward(strategy: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate("/nonexistent/model", PROMPT, strategy=strategy)
    assert info.value.field == "reward" and strategy in str(info.value)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_failing_reward_surfaces_with_context(tiny_model: LocalModel, strategy: str) -> None:
    def broken_reward(texts: list[str]) -> list[float]:
        raise ZeroDivisionError("the scorer divided by zero")

    with pytest.raises(RewardError) as info:
        generate(tiny_model, PROMPT, strategy=strategy, reward=broken_reward, max_new_tokens=8)
    message = str(info.value)
    assert "broken_reward" in message and "ZeroDivisionError" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_declared_backend_needs() -> None:
    """What a remote backend must offer: sampled continuations; CARDS also per-position top log-probs."""
    assert get_strategy("speculative_rejection").needs == frozenset({"samples"})
    assert get_strategy("cards").needs == frozenset({"samples", "top_logprobs"})
