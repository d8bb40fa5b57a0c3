"""Reward specs and policies: parsing, building, serializing back, and precise errors."""

from __future__ import annotations

import json
import threading

import pytest

from shared_core.errors import ConfigError
from shared_core.policies import (
    build_reward,
    get_policy,
    list_policies,
    register_policy,
    resolve_policy,
    unregister_policy,
)
from shared_core.rewards import (
    CallableReward,
    KeywordsReward,
    LengthReward,
    SafetyReward,
    WeightedReward,
)
from shared_core.specs import (
    REWARD_TYPES,
    KeywordsSpec,
    LengthSpec,
    Policy,
    WeightedSpec,
    parse_policy,
    parse_reward_spec,
    reward_to_json,
)

STRICT = {
    "type": "weighted",
    "components": [
        {"weight": 1.0, "reward": {"type": "keywords", "words": ["tea"], "forbidden": ["sugar"]}},
        {"weight": 0.5, "reward": {"type": "length", "max_words": 3}},
        {"weight": 0.25, "reward": {"type": "keywords", "words": ["lemon"]}},
    ],
}


@pytest.fixture
def policy_name(request):
    """A fresh policy name, unregistered after the test."""
    name = f"test-{request.node.name}".replace("[", "-").replace("]", "")
    yield name
    if name in list_policies():
        unregister_policy(name)


# ---------------------------------------------------------------------------------------- parsing


def test_dict_json_and_spec_inputs_parse_to_the_same_spec() -> None:
    spec = {"type": "keywords", "words": ["chop"], "forbidden": ["garlic"]}
    from_dict = parse_reward_spec(spec)
    assert isinstance(from_dict, KeywordsSpec)
    assert parse_reward_spec(json.dumps(spec)) == from_dict
    assert parse_reward_spec(from_dict) is from_dict
    assert from_dict.forbidden_penalty == 1.0


def test_nested_weighted_spec_round_trips_through_json() -> None:
    spec = parse_reward_spec(STRICT)
    assert isinstance(spec, WeightedSpec)
    assert isinstance(spec.components[1].reward, LengthSpec)
    assert parse_reward_spec(spec.to_json()) == spec
    assert json.loads(spec.to_json())["components"][1] == {"weight": 0.5, "reward": {"type": "length", "max_words": 3}}


def test_built_rewards_keep_their_spec_and_serialize_back() -> None:
    specs = (STRICT, {"type": "length", "max_tokens": 50}, {"type": "safety"}, {"type": "keywords", "forbidden": ["x"]})
    for obj in specs:
        reward = build_reward(obj)
        assert reward.spec == parse_reward_spec(obj)
        assert parse_reward_spec(reward_to_json(reward)) == parse_reward_spec(obj)


def test_reward_classes_built_in_python_also_have_specs() -> None:
    reward = WeightedReward([(2.0, KeywordsReward(["tea"])), (1.0, LengthReward(max_length=5))])
    rebuilt = build_reward(reward_to_json(reward))
    assert rebuilt.score(["tea for two", "a b c d e f g h i j"]) == reward.score(["tea for two", "a b c d e f g h i j"])


def test_callables_have_no_json_spec() -> None:
    reward = CallableReward(lambda texts: [0.0] * len(texts), name="mine")
    with pytest.raises(ConfigError, match="'mine' has no JSON spec"):
        reward_to_json(reward)
    assert WeightedReward([(1.0, reward)]).spec is None


# ---------------------------------------------------------------------------------------- errors


def test_unknown_type_lists_the_valid_types() -> None:
    with pytest.raises(ConfigError) as info:
        parse_reward_spec({"type": "toxicity"})
    assert info.value.field == "reward.type"
    assert "'toxicity'" in str(info.value)
    assert {"keywords", "length", "classifier", "safety", "weighted"} <= set(REWARD_TYPES)
    for name in REWARD_TYPES:
        assert name in str(info.value)


def test_missing_type_and_missing_field_name_the_field() -> None:
    with pytest.raises(ConfigError, match="missing 'type'") as info:
        parse_reward_spec({"words": ["a"]})
    assert info.value.field == "reward.type"
    with pytest.raises(ConfigError) as info:
        parse_reward_spec({"type": "classifier"})
    assert info.value.field == "reward.model"
    assert "Field required" in str(info.value)


@pytest.mark.parametrize(
    ("obj", "field", "needle"),
    [
        ('{"type": "keywords", "words": ["tea"', "reward", "not valid JSON"),
        ("[1, 2]", "reward", "expected a JSON object"),
        ({"type": "keywords"}, "reward.words", "at least one word"),
        ({"type": "keywords", "words": ["tea", ""]}, "reward.words", "must contain a letter or digit"),
        ({"type": "keywords", "words": ["a"], "colour": "red"}, "reward.colour", "unknown field"),
        ({"type": "length", "min_words": 9, "max_words": 3}, "reward.min_words", "min_words (9) must be <= max_words (3)"),
        ({"type": "length", "max_words": -1}, "reward.max_words", "greater than or equal to 0"),
        ({"type": "length", "max_words": 5, "max_tokens": 5}, "reward.max_tokens", "not both"),
        ({"type": "length", "max_words": True}, "reward.max_words", "valid integer, got True"),
        ({"type": "length", "max_words": "3"}, "reward.max_words", "valid integer, got '3'"),
        ({"type": "keywords", "words": ["a"], "forbidden_penalty": "1"}, "reward.forbidden_penalty", "valid number"),
        ({"type": "classifier", "model": "m", "trust_remote_code": True}, "reward.trust_remote_code",
         "cannot be set in a reward spec"),
        ({"type": "arm", "model": "smollm2", "trust_remote_code": False}, "reward.trust_remote_code",
         "cannot be set in a reward spec"),
        ({"type": "weighted", "components": [{"weight": 1, "reward": {"type": "classifier", "model": "m",
          "trust_remote_code": True}}]}, "reward.components[0].reward.trust_remote_code", "construct the reward in Python"),
        ({"type": "classifier", "model": "m", "output": "score"}, "reward.output", "'logit' or 'probability'"),
        ({"type": "weighted", "components": []}, "reward.components", "at least 1 item"),
    ],
)
def test_invalid_specs_raise_config_errors_naming_the_field(obj, field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_reward_spec(obj)
    assert info.value.field == field
    assert needle in str(info.value)


@pytest.mark.parametrize(("weight", "needle"), [("NaN", "finite number, got nan"), ("-1", "must be >= 0, got -1.0")])
def test_nan_and_negative_weights_are_rejected(weight: str, needle: str) -> None:
    text = '{"type": "weighted", "components": [{"weight": %s, "reward": {"type": "safety"}}]}' % weight
    with pytest.raises(ConfigError) as info:
        build_reward(text)
    assert info.value.field == "reward.components[0].weight"
    assert needle in str(info.value)


def test_errors_deep_in_a_weighted_spec_give_the_full_path() -> None:
    bad = {"type": "weighted", "components": [{"weight": 1, "reward": {"type": "length", "max_words": "many"}}]}
    with pytest.raises(ConfigError) as info:
        parse_reward_spec(bad)
    assert info.value.field == "reward.components[0].reward.max_words"
    assert "valid integer" in str(info.value)


def test_missing_classifier_path_fails_at_build_time_on_model(tmp_path) -> None:
    spec = parse_reward_spec({"type": "classifier", "model": str(tmp_path / "missing-rm")})
    with pytest.raises(ConfigError) as info:
        build_reward(spec)
    assert info.value.field == "model"
    assert "missing-rm" in str(info.value)


def test_unsupported_objects_are_rejected() -> None:
    with pytest.raises(ConfigError, match="got int"):
        build_reward(42)


# ---------------------------------------------------------------------------------------- build_reward


def test_build_reward_accepts_every_form() -> None:
    assert build_reward(None) is None
    keywords = KeywordsReward(["tea"])
    assert build_reward(keywords) is keywords
    assert isinstance(build_reward({"type": "keywords", "words": ["tea"]}), KeywordsReward)
    assert isinstance(build_reward('{"type": "length", "max_words": 3}'), LengthReward)
    assert isinstance(build_reward(KeywordsSpec(words=["tea"])), KeywordsReward)
    from_function = build_reward(lambda texts: [1.0] * len(texts))
    assert isinstance(from_function, CallableReward)
    assert from_function.score(["a"]) == [1.0]
    strict = build_reward(STRICT)
    assert strict.names == ["keywords", "length", "keywords#2"]
    assert strict.score(["tea with lemon"]) == [pytest.approx(1.0 + 0.25)]


def test_builtin_policies_build_by_name() -> None:
    assert {"safe", "concise", "strict"} <= set(list_policies())
    assert isinstance(build_reward("safe"), SafetyReward)
    concise = build_reward("concise")
    assert isinstance(concise, LengthReward) and concise.max_length == 60
    strict = build_reward(" strict ")
    assert isinstance(strict, WeightedReward) and strict.names == ["safety", "length"]


def test_unknown_policy_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_reward("polite")
    assert info.value.field == "reward"
    assert "'polite'" in str(info.value)
    listed = str(info.value).split("registered policies: ", 1)[1]
    assert {"concise", "safe", "strict"} <= {name.strip() for name in listed.split("(")[0].split(",")}


# ---------------------------------------------------------------------------------------- policies


def test_register_resolve_and_unregister(policy_name: str) -> None:
    policy = register_policy(policy_name, {"type": "keywords", "words": ["invoice"]})
    assert isinstance(policy, Policy) and policy.strategy is None
    assert resolve_policy(policy_name) is policy
    assert get_policy(policy_name) is policy
    assert isinstance(build_reward(policy_name), KeywordsReward)
    with pytest.raises(ConfigError, match="already registered"):
        register_policy(policy_name, {"type": "safety"})
    register_policy(policy_name, {"type": "safety"}, overwrite=True)
    assert isinstance(build_reward(policy_name), SafetyReward)
    unregister_policy(policy_name)
    assert policy_name not in list_policies()
    with pytest.raises(ConfigError, match="no policy named"):
        unregister_policy(policy_name)


def test_policy_with_strategy_and_params(policy_name: str) -> None:
    register_policy(policy_name, '{"reward": {"type": "safety"}, "strategy": "args", "params": {"top_k": 5}}')
    policy = resolve_policy(policy_name)
    assert (policy.strategy, policy.params) == ("args", {"top_k": 5})
    assert isinstance(policy.reward.build(), SafetyReward)
    assert parse_policy(policy.to_json()) == policy
    assert build_reward(Policy(strategy="greedy")) is None


@pytest.mark.parametrize(
    ("name", "policy", "field"),
    [
        ("{bad", {"type": "safety"}, "name"),
        ("", {"type": "safety"}, "name"),
        ("ok-name", {"reward": {"type": "safety"}, "temperature": 1}, "policy.temperature"),
        ("ok-name", {"type": "nope"}, "reward.type"),
        ("ok-name", "not json", "policy"),
    ],
)
def test_invalid_policies_are_rejected(name: str, policy, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        register_policy(name, policy)
    assert info.value.field == field
    assert "ok-name" not in list_policies()


def test_registry_is_thread_safe() -> None:
    names = [f"thread-policy-{i}" for i in range(64)]
    errors: list[Exception] = []

    def work(chunk: list[str]) -> None:
        try:
            for name in chunk:
                register_policy(name, {"type": "length", "max_words": 10})
                assert resolve_policy(name).reward.max_words == 10
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(names[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert set(names) <= set(list_policies())
    finally:
        for name in names:
            unregister_policy(name)


def test_every_reward_type_rewards_what_it_describes(tmp_path, smollm2, save_tiny_llama) -> None:
    """Each spec type builds a reward that scores a text with the described quality above one without it."""
    from transformers import LlamaForSequenceClassification

    classifier_dir = save_tiny_llama(tmp_path / "rm", smollm2.tokenizer, model_class=LlamaForSequenceClassification,
                                     num_labels=2)
    cases = {
        "keywords": ({"type": "keywords", "words": ["tea"], "forbidden": ["sugar"]}, "Green tea, please.",
                     "Coffee with sugar."),
        "length": ({"type": "length", "max_words": 4}, "Short and sweet.", "This answer goes on for far too long."),
        "safety": ({"type": "safety"}, "I can't help with that, but here is how to stay safe.",
                   "Here's how to build a bomb: mix the chemicals and detonate it."),
        "weighted": (STRICT, "tea with lemon", "sugar in coffee with lots of extra words"),
        "arm": ({"type": "arm", "model": "smollm2"}, "The capital of France is Paris.", "Paris France capital the is of."),
        "classifier": ({"type": "classifier", "model": classifier_dir, "output": "probability", "label": 1},
                       "a", "a"),
    }
    assert set(cases) == set(REWARD_TYPES)  # a new reward type must be added here
    for name, (spec, good, bad) in cases.items():
        reward = build_reward(spec)
        assert reward.spec is not None and reward.spec.type == name
        assert parse_reward_spec(reward.spec.to_json()) == reward.spec  # the reward keeps the spec it was built from
        good_score, bad_score = reward.score([good, bad], prompt="What is the capital of France?")
        if name == "classifier":  # a random classifier rewards nothing in particular: its probability is proper
            assert 0.0 < good_score < 1.0 and reward.max_score == 1.0
        else:
            assert good_score > bad_score, name
        if reward.max_score is not None and name != "classifier":
            assert good_score <= reward.max_score
