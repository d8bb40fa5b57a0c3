"""The decoding engine: greedy parity with transformers, sampling, stop strings, streaming, batches, errors."""

from __future__ import annotations

import pytest
import torch

from shared_core import ConfigError, generate, list_strategies, stream
from shared_core.decoding.stopping import StopState
from shared_core.models import LocalModel

PROMPT = "Give me two tips for staying safe online."


@pytest.fixture(scope="module")
def greedy_60(smollm2: LocalModel):
    return generate(smollm2, PROMPT, max_new_tokens=60)


def test_greedy_matches_transformers_generate(smollm2: LocalModel, greedy_60) -> None:
    ids = torch.tensor([smollm2.render(PROMPT)])
    expected = smollm2.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False)
    assert greedy_60.token_ids == expected[0, ids.shape[1]:].tolist()
    assert greedy_60.stats.new_tokens == len(greedy_60.token_ids)
    assert greedy_60.stats.prompt_tokens == ids.shape[1]
    assert greedy_60.stats.forward_passes == {"policy": len(greedy_60.token_ids)}
    assert "password" in greedy_60.text.lower()


def test_greedy_matches_transformers_on_a_random_model(tiny_model: LocalModel) -> None:
    ids = torch.tensor([tiny_model.render("hello there")])
    expected = tiny_model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                         do_sample=False, eos_token_id=None)
    result = generate(tiny_model, "hello there", max_new_tokens=30)
    assert result.token_ids == expected[0, ids.shape[1]:].tolist()[: len(result.token_ids)]


def test_finish_reasons(smollm2: LocalModel, greedy_60) -> None:
    assert greedy_60.finish_reason == "eos"
    assert "<|im_end|>" not in greedy_60.text
    short = generate(smollm2, PROMPT, max_new_tokens=5)
    assert short.finish_reason == "length"
    assert short.token_ids == greedy_60.token_ids[:5]


def test_multi_token_stop_string_stops_and_is_not_returned(smollm2: LocalModel, greedy_60) -> None:
    stop = "devices updated"
    assert len(smollm2.encode(stop)) > 1 and stop in greedy_60.text
    result = generate(smollm2, PROMPT, max_new_tokens=60, stop=[stop])
    assert result.finish_reason == "stop"
    assert stop not in result.text
    assert result.text == greedy_60.text[: greedy_60.text.index(stop)]


def test_streaming_equals_non_streaming(smollm2: LocalModel, greedy_60) -> None:
    parts = stream(smollm2, PROMPT, max_new_tokens=60)
    deltas = list(parts)
    assert len(deltas) > 10
    assert "".join(deltas) == greedy_60.text == parts.result.text
    stopped = stream(smollm2, PROMPT, max_new_tokens=60, stop="devices updated")
    assert "".join(stopped) == stopped.result.text == generate(smollm2, PROMPT, max_new_tokens=60, stop="devices updated").text


def test_stream_holds_back_a_possible_stop_prefix() -> None:
    vocab = {1: "ab", 2: "c", 3: "E", 4: "N", 5: "D", 6: "x"}
    state = StopState(lambda ids: "".join(vocab[i] for i in ids), frozenset({0}), ("END",), 50)
    shown = []
    for token in [1, 3, 2, 3, 4]:
        state.push(token)
        shown.append(state.pop_delta())
    assert shown == ["ab", "", "Ec", "", ""]  # "E" waits until "c" proves it is no stop
    state.push(5)
    assert state.finish_reason == "stop"
    assert state.pop_delta() == "" and state.text == "abEc"


def test_sampling_with_a_seed_is_reproducible(tiny_model: LocalModel) -> None:
    first = generate(tiny_model, "hello", strategy="sample", seed=7, max_new_tokens=20, temperature=1.0)
    again = generate(tiny_model, "hello", strategy="sample", seed=7, max_new_tokens=20, temperature=1.0)
    other = generate(tiny_model, "hello", strategy="sample", seed=8, max_new_tokens=20, temperature=1.0)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_sampling_at_temperature_zero_is_greedy(tiny_model: LocalModel) -> None:
    sampled = generate(tiny_model, "hello", strategy="sample", seed=1, max_new_tokens=15, temperature=0.0)
    assert sampled.token_ids == generate(tiny_model, "hello", max_new_tokens=15).token_ids


def test_top_k_one_sampling_is_greedy(tiny_model: LocalModel) -> None:
    sampled = generate(tiny_model, "hello", strategy="sample", seed=3, max_new_tokens=15, top_k=1)
    assert sampled.token_ids == generate(tiny_model, "hello", max_new_tokens=15).token_ids


def test_batch_equals_one_by_one(smollm2: LocalModel) -> None:
    prompts = [PROMPT, "What is the capital of France?", "Write a haiku about the sea."]
    batch = generate(smollm2, prompts, max_new_tokens=24)
    assert isinstance(batch, list) and len(batch) == 3
    for prompt, result in zip(prompts, batch):
        single = generate(smollm2, prompt, max_new_tokens=24)
        assert result.token_ids == single.token_ids
        assert result.text == single.text and result.finish_reason == single.finish_reason
    assert batch[1].finish_reason == "eos" and "Paris" in batch[1].text


def test_chat_messages_and_raw_prompts(smollm2: LocalModel) -> None:
    messages = [{"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in generate(smollm2, messages, max_new_tokens=8).text
    raw = generate(smollm2, "The capital of France is", chat=False, max_new_tokens=4)
    assert raw.stats.prompt_tokens == len(smollm2.encode("The capital of France is", add_special_tokens=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens: must be a positive integer, got 0"),
        ({"max_new_tokens": -3}, "max_new_tokens: must be a positive integer"),
        ({"prompt": ""}, "prompt: must be a non-empty string"),
        ({"prompt": "   "}, "prompt: must be a non-empty string"),
        ({"prompt": []}, "prompt: must be a non-empty string, a list of chat messages"),
        ({"prompt": [{"role": "wizard", "content": "x"}]}, r"prompt\[0\].role: .wizard. is not one of"),
        ({"strategy": "telepathy"}, "unknown strategy 'telepathy'; registered strategies: .*greedy.*sample"),
        ({"strategy": "greedy", "temperature": 0.5}, "params.temperature: not a parameter of strategy 'greedy'"),
        ({"strategy": "sample", "temperature": -1.0}, "params.temperature"),
        ({"strategy": "sample", "top_p": 0.0}, "params.top_p"),
        ({"stop": [""]}, r"stop\[0\]: stop strings must be non-empty strings"),
        ({"seed": "abc"}, "seed: must be an integer"),
    ],
)
def test_bad_input_is_rejected_before_model_work(kwargs: dict, message: str) -> None:
    prompt = kwargs.pop("prompt", "hello")
    # the model name would fail to load: reaching it would raise ModelLoadError instead
    with pytest.raises(ConfigError, match=message):
        generate("no-such-model-is-loaded-first", prompt, **kwargs)


def test_registry_lists_builtin_strategies() -> None:
    assert {"greedy", "sample"} <= set(list_strategies())


def test_prompt_longer_than_context_window(tiny_model: LocalModel) -> None:
    with pytest.raises(ConfigError, match="prompt: is .* tokens but the model's context window is 512 tokens"):
        generate(tiny_model, "word " * 600, chat=False, max_new_tokens=2)


def test_policy_supplies_the_reward_and_its_reward_picks_the_strategy(tiny_model: LocalModel) -> None:
    result = generate(tiny_model, "hello", policy="concise", max_new_tokens=4)
    assert result.reward is not None and set(result.reward.components) == {"length"}
    assert result.strategy == "deal"  # a length budget is a target: lookahead search moves it
    assert result.stats.extra["planned"] == "reward"
    scored = generate(tiny_model, "hello", policy="concise", strategy="greedy", max_new_tokens=4)
    assert scored.strategy == "greedy" and scored.reward is not None  # greedy only scores the reward


def test_unknown_policy_lists_registered_ones() -> None:
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'; registered policies: .*concise"):
        generate("no-such-model-is-loaded-first", "hello", policy="nope")


def test_failing_reward_surfaces_with_context(tiny_model: LocalModel) -> None:
    from shared_core import RewardError

    def broken(texts: list[str]) -> list[float]:
        raise ZeroDivisionError("boom")

    with pytest.raises(RewardError, match="boom") as info:
        generate(tiny_model, "hello", reward=broken, max_new_tokens=3)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "broken" in str(info.value)


def test_repetition_penalty_breaks_loops_and_is_off_at_one(tiny_model: LocalModel) -> None:
    plain = generate(tiny_model, "hello", max_new_tokens=30)
    assert len(set(plain.token_ids)) < 30  # the random model repeats itself
    assert generate(tiny_model, "hello", max_new_tokens=30, repetition_penalty=1.0).token_ids == plain.token_ids
    penalized = generate(tiny_model, "hello", max_new_tokens=30, repetition_penalty=100.0)
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))


def test_repetition_penalty_leaves_newlines_and_fences_alone(tiny_model: LocalModel) -> None:
    from shared_core.decoding.engine import processors_for
    from shared_core.processors import RepetitionPenaltyProcessor
    from shared_core.request import Request

    layout = tiny_model.layout_token_ids
    newline, fence, word = (tiny_model.encode(text) for text in ("\n", "```", " the"))
    assert len(newline) == len(fence) == len(word) == 1
    assert newline[0] in layout and fence[0] in layout and word[0] not in layout
    logits = torch.full((1, tiny_model.vocab_size), 2.0)
    penalized = RepetitionPenaltyProcessor(2.0, layout)([newline + fence + word], logits)[0]
    assert penalized[newline[0]] == penalized[fence[0]] == 2.0 and penalized[word[0]] == 1.0
    (processor,) = processors_for(Request.build(None, "hi", repetition_penalty=1.2), tiny_model)
    assert processor.exempt == layout
    (processor,) = processors_for(Request.build(None, "hi", repetition_penalty=1.2, penalize_layout=True), tiny_model)
    assert processor.exempt == frozenset()
    assert processors_for(Request.build(None, "hi"), tiny_model) == []  # no penalty: no processor at all
    everything = generate(tiny_model, "hello", max_new_tokens=30, repetition_penalty=100.0, penalize_layout=True)
    assert len(set(everything.token_ids)) == len(everything.token_ids)  # nothing may repeat at all


def test_repetition_penalty_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="repetition_penalty"):
        generate("no-such-model-is-loaded-first", "hello", repetition_penalty=0.0)
