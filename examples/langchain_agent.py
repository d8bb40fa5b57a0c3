"""An agent with two tools on the embedded model, built with LangChain's ``create_agent``.

SmolLM2-135M is small, so the agent forces a tool call on its first step (``tool_choice="any"``), which
ChatDeAL decodes so that the arguments are valid JSON for the tool's schema (nested objects included);
after the tool answers, the model replies in plain text.

Run: ``python examples/langchain_agent.py [--max-tokens 48]``
"""

from __future__ import annotations

import argparse

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_deal import ChatDeAL


class Place(BaseModel):
    city: str = Field(description="City name")
    country: str = Field(description="Country name")


@tool
def get_weather(place: Place, days: int = 1) -> str:
    """Weather forecast for a place over the next days."""
    return f"Sunny in {place.city}, {place.country} for the next {days} day(s), 24 C."


@tool
def convert_temperature(celsius: float) -> str:
    """Converts a temperature from Celsius to Fahrenheit."""
    return f"{celsius * 9 / 5 + 32:.1f} F"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from langchain.agents import create_agent
    from langchain.agents.middleware import AgentMiddleware

    llm = ChatDeAL(model="smollm2", max_tokens=args.max_tokens)

    class FirstStepCallsATool(AgentMiddleware):
        """Forces a tool call while no tool has answered yet; then lets the model answer freely."""

        def wrap_model_call(self, request, handler):  # type: ignore[no-untyped-def]
            if not any(isinstance(m, ToolMessage) for m in request.messages):
                request = request.override(tool_choice="any")
            else:
                request = request.override(tools=[])
            return handler(request)

    agent = create_agent(llm, tools=[get_weather, convert_temperature], middleware=[FirstStepCallsATool()])
    result = agent.invoke({"messages": [HumanMessage("What's the weather in Paris, France for the next 3 days?")]})
    for message in result["messages"]:
        if isinstance(message, AIMessage) and message.tool_calls:
            print("tool call:", message.tool_calls[0]["name"], message.tool_calls[0]["args"])
        elif isinstance(message, ToolMessage):
            print("tool result:", message.content)
        elif isinstance(message, AIMessage):
            print("answer:", message.content)


if __name__ == "__main__":
    main()
