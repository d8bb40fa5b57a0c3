"""Transfer Q*: top-k candidates valued by reward on cached, batched baseline rollouts; direct and indirect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shared_core import ConfigError, generate
from shared_core.decoding.engine import validate_request
from shared_core.decoding.transfer_q import importance_weights
from shared_core.models import LocalModel, load_model
from shared_core.rewards.callable import CallableReward

PROMPT = "hello there"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def letter_count(texts: list[str]) -> list[float]:
    """A reward the random tiny model can be steered by: how many times the letter 'a' appears."""
    return [float(t.count("a")) for t in texts]


REWARD = CallableReward(letter_count, name="letter_a")


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory, tiny_model_dir: str) -> str:
    """The tiny model's weights in another folder: a separate model object with identical outputs."""
    target = tmp_path_factory.mktemp("tiny-twin")
    shutil.copytree(tiny_model_dir, target, dirs_exist_ok=True)
    return str(target)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory, smollm2: LocalModel, save_tiny_llama) -> str:
    """A different tiny random model with the same tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-other"), smollm2.tokenizer, seed=5)


def tq(model: LocalModel, baseline: str, **params):
    params = {"k": 4, "horizon": 3, "alpha": 0.5, "max_new_tokens": 12, **params}
    return generate(model, PROMPT, strategy="transfer_q", reward=REWARD, baseline=baseline, **params)


# --------------------------------------------------------------------------- behaviour


def test_rollout_values_steer_toward_the_reward(tiny_model: LocalModel, tiny_model_dir: str) -> None:
    greedy = generate(tiny_model, PROMPT, max_new_tokens=12)
    guided = tq(tiny_model, tiny_model_dir)
    assert guided.token_ids != greedy.token_ids
    assert letter_count([guided.text])[0] > letter_count([greedy.text])[0]


def test_indirect_with_baseline_equal_to_target_equals_direct(
    tiny_model: LocalModel, tiny_model_dir: str, twin_dir: str
) -> None:
    direct = tq(tiny_model, tiny_model_dir)
    # the same model object: baseline and target share one cache, every importance ratio is exactly 1
    assert tq(tiny_model, tiny_model_dir, mode="indirect").token_ids == direct.token_ids
    # a separate copy of the same weights: the ratios are computed from two models' forwards
    twin_direct = tq(tiny_model, twin_dir)
    twin_indirect = tq(tiny_model, twin_dir, mode="indirect")
    assert twin_indirect.token_ids == twin_direct.token_ids == direct.token_ids
    assert twin_indirect.stats.extra["transfer_q"]["last_log_ratios"] == pytest.approx([0.0] * 4, abs=1e-3)


def test_indirect_reweights_rollouts_of_a_different_baseline(tiny_model: LocalModel, other_dir: str) -> None:
    result = tq(tiny_model, other_dir, mode="indirect")
    ratios = result.stats.extra["transfer_q"]["last_log_ratios"]
    assert len(ratios) == 4 and max(abs(r) for r in ratios) > 1e-2
    assert result.stats.forward_passes["policy"] == len(result.token_ids)  # the ratio forward replaces the step


def test_importance_weights_are_self_normalized() -> None:
    w = importance_weights(torch.tensor([0.0, 0.0, 0.0]))
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0])
    w = importance_weights(torch.tensor([2.0, 0.0, -1.0, 0.5]))
    assert float(w.mean()) == pytest.approx(1.0) and w[0] > w[3] > w[1] > w[2]


def test_rollouts_extend_a_shared_prefix_cache(tiny_model: LocalModel, other_dir: str) -> None:
    """No fresh ``generate`` and no re-encoding: after the prompt, every baseline forward feeds 1 token per row."""
    baseline = load_model(other_dir)
    shapes: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))

    def no_generate(*args, **kwargs):
        raise AssertionError("transfer_q must not call generate")

    hook = baseline.model.register_forward_pre_hook(record, with_kwargs=True)
    baseline.model.generate, original = no_generate, baseline.model.generate
    try:
        result = tq(tiny_model, other_dir, max_new_tokens=6, horizon=3, k=4)
    finally:
        hook.remove()
        baseline.model.generate = original
    n = len(result.token_ids)
    assert shapes[0] == (1, len(tiny_model.render(PROMPT)))  # the prompt, once
    assert all(shape == (4, 1) for shape in shapes[1:])  # k rows, one new token each
    # H forwards per step; rollouts never run past the token budget (the last step has nothing to roll out)
    horizons = [min(3, n - 1 - t) for t in range(n)]
    assert result.stats.forward_passes == {"policy": n, "baseline": 1 + sum(horizons)}
    assert result.stats.extra["transfer_q"]["rollouts"] == 4 * sum(1 for h in horizons if h > 0)


def test_k_one_is_the_target_greedy_output(tiny_model: LocalModel, other_dir: str) -> None:
    greedy = generate(tiny_model, PROMPT, max_new_tokens=10)
    assert tq(tiny_model, other_dir, k=1, max_new_tokens=10).token_ids == greedy.token_ids


def test_baseline_instruction_changes_the_baseline_prompt(tiny_model: LocalModel, twin_dir: str) -> None:
    shapes: list[tuple[int, int]] = []
    twin = load_model(twin_dir)
    hook = twin.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    try:
        tq(tiny_model, twin_dir, baseline_instruction="Use many words with the letter a.", max_new_tokens=2)
    finally:
        hook.remove()
    expected = twin.render([{"role": "system", "content": "Use many words with the letter a."},
                            {"role": "user", "content": PROMPT}])
    assert shapes[0] == (1, len(expected))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"horizon": 0}, "params.horizon"),
        ({"k": 0}, "params.k"),
        ({"alpha": 0.0}, "params.alpha"),
        ({"alpha": -1.0}, "params.alpha"),
        ({"alpha": float("nan")}, "params.alpha"),
        ({"mode": "sideways"}, "params.mode"),
        ({"baseline": None}, "params.baseline"),
        ({"baseline": "/no/such/baseline"}, "params.baseline"),
        ({"rollout_temperature": float("inf")}, "params.rollout_temperature"),
    ],
)
def test_bad_parameters_name_the_field(tiny_model_dir: str, params: dict, field: str) -> None:
    full = {"baseline": tiny_model_dir, **params}
    with pytest.raises(ConfigError) as err:
        validate_request(PROMPT, strategy="transfer_q", reward=REWARD, params=full)
    assert err.value.field == field


def test_missing_baseline_message_says_what_is_valid() -> None:
    with pytest.raises(ConfigError) as err:
        validate_request(PROMPT, strategy="transfer_q", reward=REWARD)
    assert err.value.field == "params.baseline" and "smollm2" in str(err.value)


def test_transfer_q_needs_a_reward(tiny_model_dir: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_request(PROMPT, strategy="transfer_q", params={"baseline": tiny_model_dir})
    assert err.value.field == "reward"


def test_baseline_with_another_tokenizer_is_rejected(tmp_path: Path, tiny_model: LocalModel,
                                                     smollm2: LocalModel, save_tiny_llama) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.source)
    tokenizer.add_tokens(["<baseline_only>"])
    save_tiny_llama(tmp_path, tokenizer, num_hidden_layers=1)
    with pytest.raises(ConfigError) as err:
        tq(tiny_model, str(tmp_path))
    assert err.value.field == "params.baseline" and "different tokenizer" in str(err.value)


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.embedded
def test_transfer_q_raises_a_keyword_reward_on_the_embedded_model(smollm2: LocalModel) -> None:
    reward = {"type": "keywords", "words": ["two"]}
    prompt = "Give me two tips for staying safe online."
    greedy = generate(smollm2, prompt, strategy="greedy", reward=reward, max_new_tokens=12)
    guided = generate(smollm2, prompt, strategy="transfer_q", reward=reward, baseline="smollm2",
                      k=3, horizon=4, alpha=0.1, max_new_tokens=12)
    assert guided.reward is not None and greedy.reward is not None
    assert greedy.reward.total == 0.0 and guided.reward.total == 1.0
    assert "two" in guided.text
    n = len(guided.token_ids)
    # baseline == target with the same prompt: one shared cache, H forwards per step and no other
    assert guided.stats.forward_passes == {"policy": 1 + sum(min(4, n - 1 - t) for t in range(n))}
