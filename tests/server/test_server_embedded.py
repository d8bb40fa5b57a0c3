"""End-to-end on the embedded SmolLM2 through the openai client: a policy alias, a forced tool call, JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from shared_core.server import Limits, ServerSettings

pytestmark = [pytest.mark.embedded, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def client(smollm2: Any, serve: Any) -> Iterator[openai.OpenAI]:
    with serve(ServerSettings(model="smollm2", limits=Limits(default_max_tokens=48)), smollm2) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_inline_reward_through_extra_body_changes_the_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write one sentence about a dog playing in a park."}]
    reward = {"type": "keywords", "forbidden": ["park"]}
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=20)
    aligned = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=20, extra_body={
        "deal": {"reward": reward, "strategy": "args", "params": {"weight": 3.0}}})
    assert "park" in plain.choices[0].message.content.lower()
    assert "park" not in aligned.choices[0].message.content.lower()
    deal = aligned.model_extra["deal"]
    assert deal["strategy"] == "args" and deal["reward"]["total"] >= 0
    assert deal["forward_passes"]["policy"] >= aligned.usage.completion_tokens


def test_forced_tool_call_reads_the_argument_from_the_question(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    out = client.chat.completions.create(
        model="smollm2:concise", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool], tool_choice="required", max_tokens=40)
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    assert out.model_extra["deal"]["policy"] == "concise"
