"""DeAL as a LlamaIndex LLM: metadata, reports, per-call policies, streaming, async, bad input."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from llamaindex_deal import DeAL
from llamaindex_deal._utils import to_engine_messages
from shared_core import models
from shared_core.errors import ConfigError
from shared_core.policies import build_reward

if TYPE_CHECKING:
    from conftest import PolicyNames

MISSING_MODEL = "/nonexistent/deal-test-model"
USER = [ChatMessage(role=MessageRole.USER, content="Where does basil grow best?")]


def _score(spec: dict, text: str, prompt: str) -> float:
    return build_reward(spec).score([text], prompt=prompt)[0]


def test_metadata_describes_the_model(tiny_model_dir: str) -> None:
    meta = DeAL(model=tiny_model_dir, max_new_tokens=12).metadata
    assert meta.context_window == 512  # the tiny model's max_position_embeddings
    assert meta.num_output == 12
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == tiny_model_dir


def test_complete_reports_reward_strategy_and_stats(policies: PolicyNames, tiny_llm: Callable[..., DeAL]) -> None:
    response = tiny_llm(policy=policies.sun).complete("Where does basil grow best?")
    report = response.additional_kwargs
    # a keyword reward steers by default, with the strategy that moves it (lookahead search)
    assert report["policy"] == policies.sun and report["strategy"] == "deal" and report["chosen_by"] == "reward"
    assert report["reward"]["total"] == pytest.approx(
        _score(policies.sun_spec, response.text, "Where does basil grow best?"))
    new = report["stats"]["new_tokens"]
    assert 0 < new <= 8 and report["stats"]["forward_passes"]["policy"] > new  # the lookahead's rollouts
    assert response.raw["text"] == response.text
    assert response.raw["usage"]["completion_tokens"] == new


def test_per_call_policy_overrides_the_instance_default(policies: PolicyNames, tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(policy=policies.sun)
    default = llm.chat(USER)
    per_call = llm.chat(USER, policy=policies.short)
    inline = llm.chat(USER, reward={"type": "keywords", "words": ["basil"]})
    assert default.additional_kwargs["policy"] == policies.sun
    assert default.additional_kwargs["reward"]["components"].keys() == {"keywords"}
    assert per_call.additional_kwargs["policy"] == policies.short
    assert per_call.additional_kwargs["reward"]["total"] == pytest.approx(
        _score(policies.short_spec, per_call.message.content or "", USER[0].content or ""))
    assert per_call.additional_kwargs["reward"]["components"].keys() == {"length"}
    assert inline.additional_kwargs["reward"]["total"] == pytest.approx(  # the call's reward replaced the policy's
        _score({"type": "keywords", "words": ["basil"]}, inline.message.content or "", USER[0].content or ""))
    assert llm.policy == policies.sun  # the instance is unchanged


def test_policy_dicts_can_pick_a_strategy_and_its_params(policies: PolicyNames, tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm()
    policy = {"reward": policies.sun_spec, "strategy": "sample", "params": {"temperature": 1.0}}
    first = llm.complete("hello", policy=policy, seed=3)
    again = llm.complete("hello", policy=policy, seed=3)
    greedy = llm.complete("hello")
    assert first.additional_kwargs["strategy"] == "sample"
    assert first.text == again.text != greedy.text


def test_a_reward_steers_decoding_unless_its_weight_is_zero(tiny_llm: Callable[..., DeAL]) -> None:
    """A reward steers by default (a Python function is a whole-text judge: best-of-n); ARGS with weight 0 is greedy."""

    def letters(texts: list[str]) -> list[float]:
        return [float(sum(c.isalpha() for c in t)) for t in texts]

    llm = tiny_llm(max_new_tokens=6, reward=letters)
    greedy = llm.complete("Tell me about basil.", strategy="greedy")
    steered = llm.complete("Tell me about basil.", seed=0)
    args = llm.complete("Tell me about basil.", strategy="args")
    unweighted = llm.complete("Tell me about basil.", strategy="args", weight=0.0)
    assert steered.additional_kwargs["strategy"] == "best_of_n"
    assert steered.additional_kwargs["reward"]["total"] > greedy.additional_kwargs["reward"]["total"]
    assert args.additional_kwargs["reward"]["total"] > greedy.additional_kwargs["reward"]["total"]
    assert unweighted.text == greedy.text != args.text


def test_with_policy_copies_the_llm_for_one_engine(policies: PolicyNames, tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(policy=policies.sun, max_new_tokens=5)
    short = llm.with_policy(policies.short)
    assert (short.policy, short.max_new_tokens, llm.policy) == (policies.short, 5, policies.sun)
    assert short.complete("hi").additional_kwargs["policy"] == policies.short
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        llm.with_policy("nope")


def test_streaming_text_equals_non_streaming_text(policies: PolicyNames, tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=12, policy=policies.sun)
    full = llm.complete("Tell me about basil.")
    chunks = list(llm.stream_complete("Tell me about basil."))
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].text == full.text
    assert chunks[-1].additional_kwargs["reward"] == full.additional_kwargs["reward"]
    assert all(c.additional_kwargs == {} for c in chunks[:-1])

    chat = llm.chat(USER)
    chat_chunks = list(llm.stream_chat(USER))
    assert "".join(c.delta or "" for c in chat_chunks) == chat_chunks[-1].message.content == chat.message.content
    assert chat_chunks[-1].raw["finish_reason"] == chat.raw["finish_reason"]


async def test_async_streaming_equals_sync(tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=10)
    sync = llm.chat(USER).message.content
    assert (await llm.achat(USER)).message.content == sync
    deltas = [c.delta async for c in await llm.astream_chat(USER)]
    assert "".join(d or "" for d in deltas) == sync
    assert (await llm.acomplete("hi")).text == llm.complete("hi").text
    assert "".join([c.delta or "" async for c in await llm.astream_complete("hi")]) == llm.complete("hi").text


async def test_async_calls_do_not_block_the_event_loop(tiny_llm: Callable[..., DeAL]) -> None:
    """A slow reward runs in the worker thread: a concurrent coroutine keeps ticking meanwhile."""

    def slow_reward(texts: list[str]) -> list[float]:
        time.sleep(0.15)
        return [0.0] * len(texts)

    llm = tiny_llm(max_new_tokens=3, reward=slow_reward)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        for call in (lambda: llm.acomplete("hi"), lambda: llm.achat(USER)):
            before = ticks
            await call()
            assert ticks - before >= 10
        before = ticks
        async for _ in await llm.astream_chat(USER):
            pass
        assert ticks - before >= 10
    finally:
        task.cancel()


def test_tool_results_and_roles_convert_to_engine_messages() -> None:
    messages = [
        ChatMessage(role=MessageRole.DEVELOPER, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Weather in Paris?"),
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[
            ToolCallBlock(tool_call_id="c1", tool_name="get_weather", tool_kwargs='{"city": "Paris"}')]),
        ChatMessage(role=MessageRole.TOOL, blocks=[TextBlock(text="Sunny.")],
                    additional_kwargs={"tool_call_id": "c1"}),
    ]
    converted = to_engine_messages(messages)
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "tool"]
    assert converted[2]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert converted[3] == {"role": "tool", "content": "Sunny.", "tool_call_id": "c1", "name": "get_weather"}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"policy": "nope"}, "policy", "unknown policy 'nope'; registered policies: "),
        ({"reward": {"type": "bogus"}}, "reward.type", "unknown reward type 'bogus'; valid types: keywords"),
        ({"reward": '{"type": "length", "max_words": -1}'}, "reward.max_words", "greater than or equal to 0"),
        ({"strategy": "nope"}, "strategy", "unknown strategy 'nope'; registered strategies: "),
        ({"max_new_tokens": 0}, "max_new_tokens", "must be a positive integer"),
        ({"strategy_params": {"temprature": 1.0}}, "params.temprature", "not a parameter of strategy 'greedy'"),
        ({"n": 3}, "n", r"not a field of DeAL; a strategy's own parameters go in strategy_params"),
    ],
)
def test_bad_settings_fail_at_construction_before_loading(kwargs: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        DeAL(model=MISSING_MODEL, **kwargs)
    assert info.value.field == field


async def test_bad_per_call_input_surfaces_through_llamaindex_calls(tiny_model_dir: str, tmp_path: Path) -> None:
    folder = tmp_path / "fresh-model"
    shutil.copytree(tiny_model_dir, folder)  # a model no other test has loaded
    llm = DeAL(model=str(folder))
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'; registered policies: "):
        llm.complete("hi", policy="nope")
    with pytest.raises(ConfigError, match="reward.type: unknown reward type 'bogus'"):
        llm.chat(USER, reward={"type": "bogus"})
    with pytest.raises(ConfigError, match="params.temprature: not a parameter of strategy 'greedy'"):
        llm.stream_complete("hi", temprature=0.5)
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'"):
        await llm.achat(USER, policy="nope")
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'"):
        await llm.astream_chat(USER, policy="nope")
    with pytest.raises(ConfigError, match="max_new_tokens: must be a positive integer"):
        await llm.acomplete("hi", max_new_tokens=-1)
    loaded = [key for key in models._CACHE if key[0] == "causal_lm" and key[1] == str(folder.resolve())]
    assert loaded == []  # every error came before the weights were loaded
    assert llm.complete("hi", max_new_tokens=2).additional_kwargs["stats"]["new_tokens"] == 2
    assert [key for key in models._CACHE if key[0] == "causal_lm" and key[1] == str(folder.resolve())]
