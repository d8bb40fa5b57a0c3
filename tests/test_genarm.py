"""GenARM: base + alpha * ARM log-probs, one cached forward per model per token; ARM spec errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from shared_core import ConfigError, generate
from shared_core.decoding.engine import validate_request
from shared_core.models import LocalModel, load_model
from shared_core.policies import build_reward
from shared_core.rewards.arm import ArmReward, collect_arms, instructed_prompt

PROMPT = "hello there"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_token_lover(save_tiny_llama, folder: Path, tokenizer, token_id: int, seed: int) -> str:
    """A tiny ARM that puts almost all probability on ``token_id`` at every position.

    A huge bias on the last MLP output makes the final hidden state point in one fixed direction
    whatever the input; the (untied) output row of ``token_id`` is aligned with it.
    """
    def love(model) -> None:
        direction = torch.nn.functional.normalize(torch.randn(64), dim=0)
        model.model.layers[-1].mlp.down_proj.bias.copy_(1000.0 * direction)
        model.lm_head.weight[token_id] = 10.0 * direction

    return save_tiny_llama(folder, tokenizer, seed=seed, edit=love, mlp_bias=True, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tokens(smollm2: LocalModel) -> tuple[int, int]:
    """Two ordinary word tokens for the ARMs to love."""
    a, b = smollm2.encode(" banana")[0], smollm2.encode(" violin")[0]
    assert a != b
    return a, b


@pytest.fixture(scope="module")
def arm_a(tmp_path_factory, smollm2: LocalModel, tokens, save_tiny_llama) -> str:
    return make_token_lover(save_tiny_llama, tmp_path_factory.mktemp("arm-a"), smollm2.tokenizer, tokens[0], seed=1)


@pytest.fixture(scope="module")
def arm_b(tmp_path_factory, smollm2: LocalModel, tokens, save_tiny_llama) -> str:
    return make_token_lover(save_tiny_llama, tmp_path_factory.mktemp("arm-b"), smollm2.tokenizer, tokens[1], seed=2)


def arm(model: str, weight: float = 1.0, **extra) -> dict:
    return {"type": "arm", "model": model, "weight": weight, **extra}


def two_arms(a: str, wa: float, b: str, wb: float) -> dict:
    return {"type": "weighted", "components": [{"weight": wa, "reward": arm(a)}, {"weight": wb, "reward": arm(b)}]}


# --------------------------------------------------------------------------- mechanics on tiny models


def test_alpha_zero_gives_exactly_the_base_output(tiny_model: LocalModel, arm_a: str) -> None:
    base = generate(tiny_model, PROMPT, max_new_tokens=24)
    guided = generate(tiny_model, PROMPT, strategy="genarm", reward=arm(arm_a, 0.0), max_new_tokens=24)
    assert guided.token_ids == base.token_ids
    assert guided.stats.forward_passes == {"policy": len(base.token_ids)}  # a zero-weight ARM never runs


def test_alpha_zero_sampling_matches_plain_sampling(tiny_model: LocalModel, arm_a: str) -> None:
    plain = generate(tiny_model, PROMPT, strategy="sample", temperature=0.8, seed=3, max_new_tokens=16)
    guided = generate(tiny_model, PROMPT, strategy="genarm", reward=arm(arm_a, 0.0), temperature=0.8, seed=3,
                      max_new_tokens=16)
    assert guided.token_ids == plain.token_ids


def test_an_arm_that_loves_a_token_makes_it_appear(tiny_model: LocalModel, arm_a: str, tokens) -> None:
    loved = tokens[0]
    base = generate(tiny_model, PROMPT, max_new_tokens=16)
    assert loved not in base.token_ids
    guided = generate(tiny_model, PROMPT, strategy="genarm", reward=arm(arm_a, 0.5), max_new_tokens=16)
    assert guided.token_ids.count(loved) == 16
    assert "banana" in guided.text


def test_exactly_one_forward_per_model_per_token(tiny_model: LocalModel, arm_a: str, arm_b: str) -> None:
    result = generate(tiny_model, PROMPT, strategy="genarm", reward=two_arms(arm_a, 0.3, arm_b, 0.2),
                      max_new_tokens=12)
    n = len(result.token_ids)
    assert n == 12
    passes = result.stats.forward_passes
    assert {k: passes[k] for k in ("policy", "arm:0", "arm:1")} == {"policy": n, "arm:0": n, "arm:1": n}
    # and the reported reward reads the finished text once per ARM (counted under the ARM's own name)
    assert {k: v for k, v in passes.items() if k not in ("policy", "arm:0", "arm:1")} == {
        f"arm:{arm_a}": 1, f"arm:{arm_b}": 1}
    assert result.stats.extra["genarm"]["alphas"] == {"arm:0": pytest.approx(0.3), "arm:1": pytest.approx(0.2)}


def test_swapped_weights_move_output_in_opposite_directions(
    tiny_model: LocalModel, arm_a: str, arm_b: str, tokens
) -> None:
    a, b = tokens
    toward_a = generate(tiny_model, PROMPT, strategy="genarm", reward=two_arms(arm_a, 1.0, arm_b, 0.2),
                        max_new_tokens=10)
    toward_b = generate(tiny_model, PROMPT, strategy="genarm", reward=two_arms(arm_a, 0.2, arm_b, 1.0),
                        max_new_tokens=10)
    assert toward_a.token_ids.count(a) > toward_a.token_ids.count(b)
    assert toward_b.token_ids.count(b) > toward_b.token_ids.count(a)


def test_sampling_follows_the_arm_and_is_seeded(tiny_model: LocalModel, arm_a: str, tokens) -> None:
    first = generate(tiny_model, PROMPT, strategy="genarm", reward=arm(arm_a, 0.5), temperature=1.0, seed=7,
                     max_new_tokens=10)
    again = generate(tiny_model, PROMPT, strategy="genarm", reward=arm(arm_a, 0.5), temperature=1.0, seed=7,
                     max_new_tokens=10)
    assert first.token_ids == again.token_ids
    assert first.token_ids.count(tokens[0]) >= 8


def test_arm_reward_scores_text_with_its_weight(arm_a: str) -> None:
    reward = ArmReward(arm_a, weight=2.0)
    half = ArmReward(arm_a, weight=1.0)
    loved, other = reward.score([" banana banana", " the cat"], prompt="hi")
    assert loved > other  # the ARM's log-likelihood prefers its token
    assert loved == pytest.approx(2.0 * half.score([" banana banana"], prompt="hi")[0], rel=1e-5)
    assert ArmReward(arm_a, weight=0.0).score(["x"]) == [0.0]


def test_arm_token_scorer_matches_text_scores(tiny_model: LocalModel, arm_a: str) -> None:
    reward = ArmReward(arm_a, weight=1.0)
    prompt_ids = tiny_model.render(PROMPT)
    scorer = reward.token_scorer(tiny_model, prompt_ids)
    assert scorer is not None
    arm_lm = load_model(arm_a)
    prefix = tiny_model.encode(" the big")
    candidates = tiny_model.encode(" banana") + tiny_model.encode(" dog")
    first = scorer.score_candidates(prefix[:1], candidates)
    got = scorer.score_candidates(prefix, candidates)  # incremental: feeds one more token
    from shared_core.rewards.arm import response_logprobs

    with torch.inference_mode():
        expected = response_logprobs(arm_lm.model, [prompt_ids] * 2, [prefix + [c] for c in candidates])
    assert got == pytest.approx(expected.tolist(), abs=1e-3)
    assert first != got


def test_prompted_arm_reads_the_instruction(tiny_model: LocalModel, arm_a: str) -> None:
    result = generate(tiny_model, PROMPT, strategy="genarm", max_new_tokens=3,
                      reward=arm(arm_a, 0.1, instruction="Prefer short answers."))
    arm_tokens = result.stats.extra["genarm"]["arm_prompt_tokens"]["arm:0"]
    expected = load_model(arm_a).render([{"role": "system", "content": "Prefer short answers."},
                                         {"role": "user", "content": PROMPT}])
    assert arm_tokens == len(expected) != result.stats.prompt_tokens
    assert instructed_prompt("Hi", "Be brief.", chat=True) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert instructed_prompt([{"role": "system", "content": "S."}, {"role": "user", "content": "Hi"}],
                             "Be brief.", chat=True)[0] == {"role": "system", "content": "S.\n\nBe brief."}
    assert instructed_prompt("Hi", "Be brief.", chat=False) == "Be brief.\n\nHi"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -0.5])
def test_bad_alpha_is_a_config_error(arm_a: str, weight: float) -> None:
    with pytest.raises(ConfigError) as err:
        validate_request(PROMPT, strategy="genarm", reward=arm(arm_a, weight))
    assert err.value.field == "reward.weight"
    with pytest.raises(ConfigError) as err:
        ArmReward(arm_a, weight=weight)
    assert err.value.field == "weight"


def test_missing_arm_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        build_reward(arm("/no/such/arm-folder"))
    assert err.value.field == "model" and "does not exist" in str(err.value)


def test_arm_with_another_tokenizer_fails_before_generation(
    tmp_path: Path, tiny_model: LocalModel, smollm2: LocalModel, save_tiny_llama
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.source)
    tokenizer.add_tokens(["<arm_only_token>"])
    save_tiny_llama(tmp_path, tokenizer)
    forwards: list[int] = []
    hook = tiny_model.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(ConfigError) as err:
            generate(tiny_model, PROMPT, strategy="genarm", reward=arm(str(tmp_path)), max_new_tokens=4)
    finally:
        hook.remove()
    assert err.value.field == "reward.model"
    assert "different tokenizer" in str(err.value)
    assert forwards == []  # no policy forward ran


def test_non_arm_reward_is_rejected(tiny_model: LocalModel) -> None:
    with pytest.raises(ConfigError) as err:
        generate(tiny_model, PROMPT, strategy="genarm", reward={"type": "keywords", "words": ["a"]},
                 max_new_tokens=4)
    assert err.value.field == "reward" and "arm" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_request(PROMPT, strategy="genarm")
    assert err.value.field == "reward"


def test_collect_arms_multiplies_nested_weights(arm_a: str, arm_b: str) -> None:
    reward = build_reward({"type": "weighted", "components": [
        {"weight": 2.0, "reward": arm(arm_a, 0.25)},
        {"weight": 1.0, "reward": two_arms(arm_a, 0.5, arm_b, 3.0)},
    ]})
    terms = collect_arms(reward)
    assert [t.alpha for t in terms] == [0.5, 0.5, 3.0]
    assert terms[2].field == "reward.components[1].reward.components[1].reward.model"
    assert [t.label for t in terms] == ["arm:0", "arm:1", "arm:2"]
    assert math.isclose(reward.score(["x"], prompt="p")[0],
                        sum(t.alpha * t.reward.log_likelihood(["x"], prompt="p")[0] for t in terms), rel_tol=1e-4)


def test_arm_spec_round_trips(arm_a: str) -> None:
    reward = build_reward(arm(arm_a, 0.7, instruction="Be kind."))
    assert isinstance(reward, ArmReward)
    assert build_reward(reward.spec.to_json()).spec == reward.spec


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.embedded
def test_prompted_arm_makes_the_embedded_model_concise(smollm2: LocalModel) -> None:
    prompt = "What is the opposite of hot?"
    base = generate(smollm2, prompt, max_new_tokens=40)
    spec = arm("smollm2", 1.0, instruction="Answer with one short sentence and nothing else.")
    zero = generate(smollm2, prompt, strategy="genarm", reward={**spec, "weight": 0.0}, max_new_tokens=40)
    guided = generate(smollm2, prompt, strategy="genarm", reward=spec, max_new_tokens=40)
    assert zero.token_ids == base.token_ids
    assert guided.token_ids != base.token_ids
    assert len(guided.token_ids) < len(base.token_ids)
    assert guided.finish_reason == "eos" and base.finish_reason == "length"
    assert guided.text.strip() == "The opposite of hot is cold."
    n = len(guided.token_ids)
    assert guided.stats.forward_passes == {"policy": n, "arm:0": n, "arm:smollm2": 1}  # 1: the reported reward
