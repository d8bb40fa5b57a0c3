"""A LlamaIndex FunctionAgent on a local model: a tool call, its result, and an aligned final answer.

SmolLM2-135M rarely decides to call a tool by itself, so the agent forces its first step to call the
tool (``initial_tool_choice``); DeAL then decodes the call so its arguments are valid JSON for the
tool's schema. The final answer is decoded with the agent's policy (here the built-in ``"safe"``), and
``structured_predict`` shows forced calls as structured output. Offline, on the embedded model.

Run: ``python examples/llamaindex_agent.py``
"""

from __future__ import annotations

import asyncio

from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from llamaindex_deal import DeAL

FORECASTS = {"paris": "sunny, 24 degrees", "oslo": "light rain, 11 degrees"}


def get_weather(city: str) -> str:
    """Returns today's weather forecast for a city."""
    return f"The forecast for {city} is {FORECASTS.get(city.strip().lower(), 'not available')}."


class Trip(BaseModel):
    """A planned trip."""

    city: str
    days: int


async def main() -> None:
    llm = DeAL(model="smollm2", max_new_tokens=48, policy="safe")
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(get_weather)], llm=llm, initial_tool_choice="get_weather",
        system_prompt="You help travellers. Use the tool's result in your answer.",
    )
    handler = agent.run("What is the weather like in Paris today?")
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            print(f"[tool] {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}")
        elif isinstance(event, AgentStream) and event.delta:
            print(event.delta, end="", flush=True)
    result = await handler
    print(f"\n[final] {result.response.content}")
    print(f"[alignment] policy={result.raw['policy']} strategy={result.raw['strategy']} reward={result.raw['reward']}")

    trip = await llm.astructured_predict(Trip, PromptTemplate("Extract the trip: {text}"),
                                         text="We are going to Oslo for 3 days.")
    print(f"[structured] {trip!r}")


if __name__ == "__main__":
    asyncio.run(main())
