"""Guided strategies end to end on the embedded model: each fixes what plain greedy misses."""

from __future__ import annotations

import pytest

from shared_core.decoding import generate, stream
from shared_core.decoding.lookahead import ends_sentence
from shared_core.models import LocalModel

WORDS = ["dog", "frisbee", "catch", "park"]
KEYWORDS = {"type": "keywords", "words": WORDS}
KEYWORD_PROMPT = "Write one sentence using all of these words: dog, frisbee, catch, park."


@pytest.fixture(scope="module")
def greedy_keywords(smollm2: LocalModel):
    result = generate(smollm2, KEYWORD_PROMPT, strategy="greedy", reward=KEYWORDS, max_new_tokens=48)
    assert result.reward.total < 1.0  # greedy leaves a word out ("catch")
    return result


def test_deal_uses_every_word_and_ends_at_a_full_stop(smollm2: LocalModel, greedy_keywords) -> None:
    chunks = stream(smollm2, KEYWORD_PROMPT, strategy="deal", reward=KEYWORDS, max_new_tokens=48)
    text = "".join(chunks)
    result = chunks.result
    assert text == result.text
    assert result.reward.total == 1.0 > greedy_keywords.reward.total
    assert result.reward.components == {"keywords": 1.0}
    assert result.finish_reason == "eos" and ends_sentence(result.text)
    assert result.stats.extra["searches"] >= 2


def test_deal_keeps_a_length_budget_and_ends_a_sentence(smollm2: LocalModel) -> None:
    budget = {"type": "length", "max_words": 30}
    greedy = generate(smollm2, "Describe the water cycle.", strategy="greedy", reward=budget, max_new_tokens=64)
    assert len(greedy.text.split()) > 30 and greedy.reward.total < 0
    aligned = generate(smollm2, "Describe the water cycle.", strategy="deal", reward=budget, max_new_tokens=64)
    assert len(aligned.text.split()) <= 30 and aligned.reward.total == 0.0
    assert aligned.finish_reason == "eos" and ends_sentence(aligned.text)


def test_args_avoids_a_forbidden_word_and_weight_zero_is_greedy(smollm2: LocalModel) -> None:
    prompt = "Write one sentence about a dog playing in a park."
    forbidden = {"type": "keywords", "forbidden": ["park"]}
    greedy = generate(smollm2, prompt, strategy="greedy", reward=forbidden, max_new_tokens=40)
    assert "park" in greedy.text and greedy.reward.total == -1.0
    unweighted = generate(smollm2, prompt, strategy="args", reward=forbidden, weight=0.0, max_new_tokens=40)
    assert unweighted.token_ids == greedy.token_ids
    guided = generate(smollm2, prompt, strategy="args", reward=forbidden, weight=3.0, max_new_tokens=40)
    assert guided.reward.total == 0.0 and "park" not in guided.text.lower()
    assert guided.finish_reason == "eos"


def test_best_of_n_finds_the_missing_word_with_early_stopping_rows(smollm2: LocalModel, greedy_keywords) -> None:
    result = generate(smollm2, KEYWORD_PROMPT, strategy="best_of_n", reward=KEYWORDS, n=8, seed=0,
                      max_new_tokens=48)
    assert result.reward.total > greedy_keywords.reward.total
    steps = result.stats.forward_passes["policy"]  # one prefill + one batched step per later token
    assert result.stats.extra["sample_tokens"] < 8 * steps  # rows that reached EOS left the batch


def test_args_with_a_classifier_reward_scores_candidates_incrementally(smollm2: LocalModel) -> None:
    reward = {"type": "classifier", "model": "smollm2"}
    result = generate(smollm2, "Say something kind.", strategy="args", reward=reward, max_new_tokens=8)
    assert result.stats.extra["reward_scoring"] == "tokens"
    stats = result.stats
    passes = stats.forward_passes
    classifier = [name for name in passes if name != "policy"]
    # one classifier forward per token, plus one for the reported reward of the finished text
    assert len(classifier) == 1 and passes[classifier[0]] == stats.new_tokens + 1 and passes["policy"] == stats.new_tokens
    # The incremental path reads each committed token and the k=10 candidates once per step; re-reading
    # candidate texts in full (the slow path) would read several times more.
    read = stats.tokens_processed[classifier[0]]
    incremental = stats.prompt_tokens + stats.new_tokens * (1 + 10)
    assert read <= incremental + (stats.prompt_tokens + stats.new_tokens), (read, incremental)
    assert "slow_paths" not in stats.extra
