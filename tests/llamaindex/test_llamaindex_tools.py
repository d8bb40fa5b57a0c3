"""DeAL function calling: forced calls, tool results in history, FunctionAgent, structured output."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from llamaindex_deal import DeAL
from shared_core.errors import ConfigError


class Person(BaseModel):
    name: str
    age: int


def _calls(response) -> list[ToolCallBlock]:  # noqa: ANN001
    return [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]


def test_tool_required_forces_a_valid_call(tiny_llm: Callable[..., DeAL],
                                           weather_tool: tuple[FunctionTool, list[str]]) -> None:
    """Even a random model answers with a schema-valid call when a call is required."""
    tool, _ = weather_tool
    llm = tiny_llm(max_new_tokens=40)
    response = llm.chat_with_tools([tool], user_msg="Weather in Paris?", tool_required=True)
    (block,) = _calls(response)
    assert block.tool_name == "get_weather" and set(block.tool_kwargs) == {"city"}
    assert isinstance(block.tool_kwargs["city"], str)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs, selection.tool_id) == (
        "get_weather", block.tool_kwargs, block.tool_call_id)
    assert response.additional_kwargs["strategy"] == "tool_call"

    free = llm.chat_with_tools([tool], user_msg="Weather in Paris?")  # auto: the random model writes noise
    assert llm.get_tool_calls_from_response(free, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(free)


def test_streamed_forced_call_matches_the_non_streamed_one(tiny_llm: Callable[..., DeAL],
                                                           weather_tool: tuple[FunctionTool, list[str]]) -> None:
    tool, _ = weather_tool
    llm = tiny_llm(max_new_tokens=40)
    chunks = list(llm.stream_chat_with_tools([tool], user_msg="Weather in Paris?", tool_choice="get_weather"))
    full = llm.chat_with_tools([tool], user_msg="Weather in Paris?", tool_choice="get_weather")
    assert "".join(c.delta or "" for c in chunks) == ""  # no call syntax leaks into the text
    assert [(b.tool_name, b.tool_kwargs) for b in _calls(chunks[-1])] == [
        (b.tool_name, b.tool_kwargs) for b in _calls(full)]


def test_tool_results_in_history_reach_the_prompt(tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=2)
    history = [ChatMessage(role=MessageRole.USER, content="Weather in Paris?")]
    with_result = history + [
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[
            ToolCallBlock(tool_call_id="c1", tool_name="get_weather", tool_kwargs={"city": "Paris"})]),
        ChatMessage(role=MessageRole.TOOL, blocks=[TextBlock(text="Sunny, 24 degrees.")],
                    additional_kwargs={"tool_call_id": "c1"}),
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    short = llm.chat(history, tools=tools).raw["stats"]["prompt_tokens"]
    longer = llm.chat(with_result, tools=tools).raw["stats"]["prompt_tokens"]
    result_tokens = len(llm._lm().encode('{"name": "get_weather", "content": "Sunny, 24 degrees."}'))
    assert longer - short > result_tokens  # the call and its result are both rendered
    # a later turn without tools (an agent's final answer, say) still sees the call and its result
    no_tools = llm.chat(with_result).raw["stats"]["prompt_tokens"] - llm.chat(history).raw["stats"]["prompt_tokens"]
    assert no_tools > result_tokens


async def test_function_agent_runs_the_tool_and_finishes(tiny_llm: Callable[..., DeAL],
                                                         weather_tool: tuple[FunctionTool, list[str]]) -> None:
    tool, calls = weather_tool
    llm = tiny_llm(max_new_tokens=30)
    agent = FunctionAgent(tools=[tool], llm=llm, initial_tool_choice="get_weather")
    result = await agent.run("What is the weather in Paris?")
    assert len(calls) == 1  # the forced first call ran the tool
    assert result.tool_calls[0].tool_name == "get_weather"
    assert result.tool_calls[0].tool_output.content.startswith("It is sunny")
    assert isinstance(str(result.response.content), str)


async def test_function_agent_on_the_embedded_model(weather_tool: tuple[FunctionTool, list[str]]) -> None:
    """SmolLM2 fills the forced call's argument from the question and then answers."""
    tool, calls = weather_tool
    llm = DeAL(model="smollm2", max_new_tokens=24, policy="concise")
    agent = FunctionAgent(tools=[tool], llm=llm, initial_tool_choice="get_weather", streaming=False)
    result = await (agent.run("What is the weather in Paris?"))
    assert calls and "paris" in calls[0].lower()
    assert result.response.content  # the agent finished with a final answer
    assert result.raw["policy"] == "concise" and result.raw["reward"] is not None


def test_structured_predict_returns_a_valid_object(tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=40)
    person = llm.structured_predict(Person, PromptTemplate("Extract the person: {text}"), text="Alice is 30.")
    assert isinstance(person, Person)
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'"):
        llm.structured_predict(Person, PromptTemplate("Extract: {text}"), text="x", llm_kwargs={"policy": "nope"})


def test_bad_tool_choice_is_a_clear_error(tiny_llm: Callable[..., DeAL],
                                          weather_tool: tuple[FunctionTool, list[str]]) -> None:
    tool, _ = weather_tool
    with pytest.raises(ConfigError, match="tool_choice: no tool named 'search'; the tools are: get_weather"):
        tiny_llm().chat_with_tools([tool], user_msg="hi", tool_choice="search")
