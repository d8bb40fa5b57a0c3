"""Streaming with ``tool_choice="auto"``: text is sent while it cannot be a call, a call arrives as a tool-call delta.

The small models here rarely call tools on their own, so a scripted stream stands in for the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from shared_core.result import GenerationResult, GenerationStats
from shared_core.server.app import _choice_events
from shared_core.server.mapping import Prepared
from shared_core.tools import normalize_tools, resolve_tool_choice

TOOLS = normalize_tools([{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
DELTAS = ["Let me check. ", "<tool", "_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": \"Paris\"}}",
          "\n</tool_call>"]


class ScriptedStream:
    """Deltas as a stream gives them, then the result."""

    def __init__(self, deltas: list[str]) -> None:
        self.deltas = deltas
        self.result = GenerationResult("".join(deltas), [1] * len(deltas), "eos", None, GenerationStats(),
                                       strategy="greedy", model="scripted")

    async def iterate(self) -> AsyncIterator[str]:
        for delta in self.deltas:
            yield delta


class FakeRequest:
    """What ``deal_block`` reads from a request."""

    class params:  # noqa: N801 - stands in for a pydantic model instance
        @staticmethod
        def model_dump(mode: str = "json") -> dict[str, Any]:
            return {}

    class plan:  # noqa: N801
        policy = None
        chosen_by = "default"

    reward = None


def run(deltas: list[str]) -> list[dict[str, Any]]:
    prepared = Prepared(requests=[FakeRequest()], kind="chat", model_id="m", strategy="greedy",  # type: ignore[list-item]
                        policy=None, tools=TOOLS, tool_choice=resolve_tool_choice("auto", TOOLS))
    stream = ScriptedStream(deltas)

    async def collect() -> list[dict[str, Any]]:
        return [event async for event in _choice_events(prepared, 0, stream, stream.iterate(), [])]

    return asyncio.run(collect())


def test_auto_tool_call_is_held_back_from_text_and_sent_as_a_call() -> None:
    events = run(DELTAS)
    text = "".join(e["delta"].get("content") or "" for e in events if "delta" in e)
    assert text.strip() == "Let me check." and "<" not in text
    calls = [c for e in events for c in e["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"} and calls[0]["id"].startswith("call_")
    assert events[-1]["finish_reason"] == "tool_calls"


def test_plain_text_with_tools_on_streams_whole() -> None:
    events = run(["The weather ", "is fine ", "<3"])
    text = "".join(e["delta"].get("content") or "" for e in events if "delta" in e)
    assert text == "The weather is fine <3" and events[-1]["finish_reason"] == "stop"
