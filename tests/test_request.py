"""The request layer: one planning rule (core and both adapters), one Request, one report layout."""

from __future__ import annotations

import pytest

from shared_core import ConfigError
from shared_core.request import DEFAULT_STRATEGIES, Request, plan, report, resolve_policy_arg
from shared_core.result import GenerationResult, GenerationStats, RewardScore
from shared_core.specs import Policy

KEYWORDS = {"type": "keywords", "words": ["tea"]}
POLICY = Policy(reward={"type": "length", "max_words": 20}, strategy="deal", params={"top_k": 4, "lookahead": 6})


@pytest.mark.parametrize(
    ("reward", "strategy"),
    [
        (KEYWORDS, "deal"),  # a text reward with a target: lookahead search
        ({"type": "length", "max_words": 30}, "deal"),
        ({"type": "safety"}, "best_of_n"),  # a whole-text judge: rerank samples
        ({"type": "arm", "model": "smollm2"}, "genarm"),  # an autoregressive reward model
        (lambda texts: [0.0] * len(texts), "best_of_n"),  # a Python function is judged on whole texts
        ("strict", "deal"),  # safety + a length budget: the budget is a target
        ("safe", "best_of_n"),
        ({"type": "weighted", "components": [{"weight": 1.0, "reward": KEYWORDS},
                                             {"weight": 0.0, "reward": {"type": "safety"}}]}, "deal"),
    ],
)
def test_a_reward_alone_picks_the_strategy_that_moves_it(reward, strategy: str) -> None:
    decided = plan(reward=reward)
    assert (decided.strategy, decided.chosen_by) == (strategy, "reward")
    assert DEFAULT_STRATEGIES[decided.built_reward.guidance] == strategy


def test_without_a_reward_it_is_greedy_or_sample() -> None:
    assert (plan().strategy, plan().chosen_by) == ("greedy", "default")
    assert plan(sample=True).strategy == "sample"
    assert Request.build(None, "hi", temperature=0.7).strategy_name == "sample"


def test_the_policy_fills_what_is_not_given() -> None:
    decided = plan(policy=POLICY)
    assert (decided.strategy, decided.params, decided.chosen_by) == ("deal", {"top_k": 4, "lookahead": 6}, "policy")
    assert decided.reward == POLICY.reward
    assert plan(policy="concise").policy == "concise"  # a named policy is reported by name
    assert plan(reward="safe").policy == "safe"  # so is a reward given as a policy name


def test_explicit_settings_win_and_later_layers_win() -> None:
    decided = plan(policy=POLICY, reward=KEYWORDS, param_layers=[{"top_k": 8}, None, {"top_k": 9, "beam_width": 2}])
    assert decided.reward == KEYWORDS  # an explicit reward replaces the policy's; strategy and params stay
    assert decided.strategy == "deal"
    assert decided.params == {"top_k": 9, "lookahead": 6, "beam_width": 2}
    other = plan(policy=POLICY, strategy="best_of_n", param_layers=[{"n": 4}])
    assert (other.params, other.chosen_by) == ({"n": 4}, "argument")  # the policy's params are its strategy's


def test_none_means_not_given_and_a_call_policy_drops_the_instance_reward() -> None:
    per_call = {"type": "keywords", "words": ["coffee"]}
    assert plan(policy=POLICY, instance_reward=KEYWORDS, policy_from_call=True).reward == POLICY.reward
    assert plan(policy=POLICY, instance_reward=KEYWORDS, policy_from_call=False).reward == KEYWORDS
    assert plan(policy=POLICY, reward=per_call, instance_reward=KEYWORDS, policy_from_call=True).reward == per_call
    assert plan(reward=None, instance_reward=KEYWORDS).reward == KEYWORDS  # None: the call gave no reward


def test_bad_parameter_layers_and_policy_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="must be a dict of strategy parameters, got list") as info:
        plan(strategy="greedy", param_layers=[["top_k", 3]])  # type: ignore[list-item]
    assert info.value.field == "strategy_params"
    with pytest.raises(ConfigError, match="safe") as info:
        resolve_policy_arg("no-such-policy")
    assert info.value.field == "policy"
    with pytest.raises(ConfigError, match="must be a registered policy name") as info:
        resolve_policy_arg("", field="deal_policy")
    assert info.value.field == "deal_policy"


def test_a_request_is_validated_once_before_any_model_work() -> None:
    request = Request.build("no-such-model-is-loaded", "hi", reward=KEYWORDS, max_new_tokens=8,
                            repetition_penalty=1.3)
    assert request.strategy_name == "deal" and request.reward is not None
    assert request.repetition.repetition_penalty == 1.3
    assert Request.build(None, "hi", urial=True).repetition.repetition_penalty == 1.2  # URIAL's default
    assert Request.build(None, "hi", urial=True, repetition_penalty=1.0).repetition.repetition_penalty == 1.0
    assert Request.build(None, "hi").repetition.repetition_penalty == 1.0
    with pytest.raises(ConfigError, match="repetition_penalty"):
        Request.build(None, "hi", repetition_penalty=0)
    with pytest.raises(ConfigError, match="needs a reward"):
        Request.build(None, "hi", strategy="deal")


def test_report_has_one_layout() -> None:
    request = Request.build(None, "hi", reward=KEYWORDS, max_new_tokens=8)
    stats = GenerationStats(new_tokens=3, prompt_tokens=5, seconds=0.5, forward_passes={"policy": 4},
                            tokens_processed={"policy": 8})
    result = GenerationResult(text="tea", token_ids=[1, 2, 3], finish_reason="eos",
                              reward=RewardScore(1.0, {"keywords": 1.0}), stats=stats, strategy="deal", model="m")
    summary = report(result, request)
    assert set(summary) == {"model", "strategy", "strategy_params", "policy", "chosen_by", "reward_spec", "reward",
                            "reward_error", "finish_reason", "stats"}
    assert summary["reward"] == {"total": 1.0, "components": {"keywords": 1.0}}
    assert summary["reward_spec"] == {"type": "keywords", "words": ["tea"], "forbidden": [], "forbidden_penalty": 1.0}
    assert summary["chosen_by"] == "reward" and summary["strategy_params"]["top_k"] == 10
    assert summary["stats"]["tokens_processed"] == {"policy": 8}
