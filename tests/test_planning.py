"""The one precedence rule for policies, rewards, strategies and parameters (core and both adapters)."""

from __future__ import annotations

import pytest

from shared_core import ConfigError
from shared_core.planning import UNSET, choose_decoding, default_strategy, resolve_policy_name
from shared_core.specs import Policy

KEYWORDS = {"type": "keywords", "words": ["tea"]}
POLICY = Policy(reward={"type": "length", "max_words": 20}, strategy="deal", params={"top_k": 4, "lookahead": 6})


def test_without_a_strategy_the_core_stays_greedy_and_adapters_steer() -> None:
    assert default_strategy(KEYWORDS, steer=False) == "greedy"
    assert default_strategy(KEYWORDS, steer=True) == "args"
    assert default_strategy(None, steer=True) == "greedy"
    assert default_strategy(None, steer=True, sample=True) == "sample"
    assert choose_decoding(policy=None, strategy=None, reward=KEYWORDS).strategy == "greedy"
    assert choose_decoding(policy=None, strategy=None, reward=KEYWORDS, steer=True).strategy == "args"


def test_the_policy_fills_what_is_not_given() -> None:
    choice = choose_decoding(policy=POLICY, strategy=None)
    assert (choice.strategy, choice.params) == ("deal", {"top_k": 4, "lookahead": 6})
    assert choice.reward == POLICY.reward


def test_explicit_settings_win_and_later_layers_win() -> None:
    choice = choose_decoding(policy=POLICY, strategy=None, reward=KEYWORDS,
                             param_layers=[{"top_k": 8}, None, {"top_k": 9, "beam_width": 2}])
    assert choice.reward == KEYWORDS  # an explicit reward replaces the policy's, strategy and params stay
    assert choice.strategy == "deal"
    assert choice.params == {"top_k": 9, "lookahead": 6, "beam_width": 2}
    other = choose_decoding(policy=POLICY, strategy="best_of_n", param_layers=[{"n": 4}])
    assert other.params == {"n": 4}  # the policy's params belong to its own strategy only


def test_a_policy_named_per_call_drops_the_instance_reward() -> None:
    assert choose_decoding(policy=POLICY, strategy=None, reward=KEYWORDS, policy_from_call=True).reward \
        == POLICY.reward
    per_call = {"type": "keywords", "words": ["coffee"]}
    assert choose_decoding(policy=POLICY, strategy=None, reward=KEYWORDS, call_reward=per_call,
                           policy_from_call=True).reward == per_call
    # an explicit None from the call clears the reward; UNSET means the call said nothing
    assert choose_decoding(policy=None, strategy=None, reward=KEYWORDS, call_reward=None).reward is None
    assert choose_decoding(policy=None, strategy=None, reward=KEYWORDS, call_reward=UNSET).reward == KEYWORDS


def test_bad_parameter_layers_and_policy_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="must be a dict of strategy parameters, got list") as info:
        choose_decoding(policy=None, strategy="greedy", param_layers=[["top_k", 3]])  # type: ignore[list-item]
    assert info.value.field == "strategy_params"
    with pytest.raises(ConfigError, match="safe") as info:
        resolve_policy_name("no-such-policy")
    assert info.value.field == "policy"
    with pytest.raises(ConfigError, match="must be a registered policy name") as info:
        resolve_policy_name("", field="deal_policy")
    assert info.value.field == "deal_policy"
