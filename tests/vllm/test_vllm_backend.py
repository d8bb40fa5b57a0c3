"""deal's strategies on a real vLLM server (the ``vllm_server`` fixture), compared with the same strategies run locally.

The server serves the embedded SmolLM2 model (fp32), so its greedy tokens can be compared with local
greedy decoding token for token, and DeAL's goals (every keyword present) with local DeAL's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared_core import ConfigError, LocalModel, RemoteModel, connect_model, generate, load_model, stream

pytestmark = pytest.mark.vllm

PROMPTS = [
    "What is the capital of France?",
    "Give me two tips for staying safe online.",
    "Write a haiku about the sea.",
    "Explain what a prime number is in one sentence.",
    "Name three colours of the rainbow.",
]

KEYWORD_TASKS = [
    ["dog", "frisbee", "catch", "park"],
    ["ski", "mountain", "snow"],
    ["cook", "kitchen", "pasta"],
]


def keyword_prompt(words: list[str]) -> str:
    return "Write one sentence using all of these words: " + ", ".join(words) + "."


@pytest.fixture(scope="module")
def remote(vllm_server: str) -> Iterator[RemoteModel]:
    handle = connect_model(vllm_server, model="smollm2")
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def local() -> LocalModel:
    return load_model("smollm2")


def test_connect_reads_the_served_model(remote: RemoteModel, local: LocalModel) -> None:
    assert remote.name == "smollm2" and remote.context_window == 2048
    assert remote.eos_token_ids == local.eos_token_ids
    assert remote.render(PROMPTS[0]) == local.render(PROMPTS[0])


def test_remote_greedy_equals_local_greedy(remote: RemoteModel, local: LocalModel) -> None:
    same = 0
    for prompt in PROMPTS:
        got = generate(remote, prompt, max_new_tokens=24)
        want = generate(local, prompt, max_new_tokens=24)
        same += got.token_ids == want.token_ids
        assert got.stats.extra["requests"] == 1
    assert same >= 4, f"remote greedy matched local greedy on {same} of {len(PROMPTS)} prompts"


def test_streaming_from_vllm(remote: RemoteModel) -> None:
    deltas = stream(remote, PROMPTS[0], max_new_tokens=16)
    pieces = list(deltas)
    assert len(pieces) > 1 and "".join(pieces) == deltas.result.text
    assert "Paris" in deltas.result.text


def test_eos_and_stop_strings_end_remote_generation(remote: RemoteModel, local: LocalModel) -> None:
    got = generate(remote, PROMPTS[0], max_new_tokens=64)
    want = generate(local, PROMPTS[0], max_new_tokens=64)
    assert got.finish_reason == want.finish_reason == "eos" and got.text == want.text
    cut = generate(remote, PROMPTS[0], max_new_tokens=32, stop="Paris")
    assert cut.finish_reason == "stop" and "Paris" not in cut.text


def test_deal_keyword_goals_on_vllm_match_local(remote: RemoteModel, local: LocalModel) -> None:
    local_goals, remote_goals = [], []
    for words in KEYWORD_TASKS:
        reward = {"type": "keywords", "words": words}
        want = generate(local, keyword_prompt(words), strategy="deal", reward=reward, max_new_tokens=48)
        got = generate(remote, keyword_prompt(words), strategy="deal", reward=reward, max_new_tokens=48)
        local_goals.append(want.reward is not None and want.reward.total >= 1.0)
        remote_goals.append(got.reward is not None and got.reward.total >= 1.0)
        extra = got.stats.extra
        assert extra["requests"] <= extra["searches"] + 1 + extra["repairs"]  # one request per search
    missed = [w for w, lg, rg in zip(KEYWORD_TASKS, local_goals, remote_goals) if lg and not rg]
    assert not missed, f"local deal met every keyword on {missed}, deal on vLLM did not"
    assert any(remote_goals)


def test_best_of_n_on_vllm_moves_the_reward(remote: RemoteModel) -> None:
    words = ["frisbee", "park"]
    reward = {"type": "keywords", "words": words}
    prompt = "Write one sentence about a dog."
    base = generate(remote, prompt, reward=reward, strategy="greedy", max_new_tokens=40)
    best = generate(remote, prompt, reward=reward, strategy="best_of_n", n=8, seed=0, max_new_tokens=40)
    assert best.stats.extra["requests"] == 1 and best.stats.extra["samples"] == 8
    assert best.reward is not None and base.reward is not None and best.reward.total >= base.reward.total
    assert best.reward.total == max(best.stats.extra["sample_scores"])


def test_args_on_vllm_moves_the_reward_against_weight_zero(remote: RemoteModel, local: LocalModel) -> None:
    prompt = "Write one sentence about a dog playing in a park."
    forbidden = {"type": "keywords", "forbidden": ["park"]}
    greedy = generate(remote, prompt, strategy="greedy", reward=forbidden, max_new_tokens=40)
    plain = generate(remote, prompt, strategy="args", reward=forbidden, weight=0.0, max_new_tokens=40)
    guided = generate(remote, prompt, strategy="args", reward=forbidden, weight=3.0, max_new_tokens=40)
    assert plain.token_ids == greedy.token_ids and plain.reward is not None and plain.reward.total == -1.0
    assert guided.reward is not None and guided.reward.total == 0.0 and "park" not in guided.text.lower()
    assert guided.stats.extra["requests"] == guided.stats.new_tokens  # one top-k request per token
    local_guided = generate(local, prompt, strategy="args", reward=forbidden, weight=3.0, max_new_tokens=40)
    assert local_guided.reward is not None and local_guided.reward.total == guided.reward.total


def test_urial_on_vllm(remote: RemoteModel) -> None:
    result = generate(remote, "What is the capital of France?", urial=True, max_new_tokens=48)
    assert result.text.strip() and "# Query" not in result.text
    assert result.stats.extra["urial_preamble_tokens"] > 100


def test_genarm_on_vllm_is_a_config_error(remote: RemoteModel) -> None:
    with pytest.raises(ConfigError) as err:
        generate(remote, "hi", strategy="genarm", reward={"type": "arm", "model": "smollm2"})
    assert err.value.field == "strategy" and "'logits'" in str(err.value) and "genarm" in str(err.value)


def test_prompt_logprobs_from_vllm_match_local(remote: RemoteModel, local: LocalModel) -> None:
    import torch

    ids = local.render(PROMPTS[1])
    got = remote.prompt_logprobs(ids)
    with torch.no_grad():
        logits = local.model(input_ids=torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert got[0] is None
    assert torch.allclose(torch.tensor(got[1:]), want, atol=1e-2)


def test_cards_and_speculative_rejection_on_vllm(remote: RemoteModel) -> None:
    words = KEYWORD_TASKS[0]
    reward = {"type": "keywords", "words": words}
    cards = generate(remote, keyword_prompt(words), strategy="cards", reward=reward, seed=0, max_new_tokens=48)
    assert cards.reward is not None and cards.reward.total == 1.0
    assert cards.stats.extra["requests"] == cards.stats.extra["tries"]  # one request per try of a segment
    rejection = generate(remote, keyword_prompt(words), strategy="speculative_rejection", reward=reward, n=8, seed=0,
                         max_new_tokens=48)
    extra = rejection.stats.extra
    assert rejection.reward is not None and rejection.reward.total == extra["chosen_score"]
    assert extra["requests"] <= 1 + len(extra["checks"])
