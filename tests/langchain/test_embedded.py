"""End-to-end checks on the embedded SmolLM2-135M-Instruct (marker ``embedded``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from langchain_deal import ChatDeAL

pytestmark = pytest.mark.embedded


class Place(BaseModel):
    city: str = Field(description="City name")
    country: str = Field(description="Country name")


class Trip(BaseModel):
    """Plan a trip."""

    destination: Place
    nights: int
    travellers: list[str]


def test_forced_tool_call_with_nested_arguments_on_the_embedded_model() -> None:
    llm = ChatDeAL(model="smollm2", max_tokens=16, tool_call_max_tokens=96)
    bound = llm.bind_tools([Trip], tool_choice="Trip")
    message = bound.invoke("Plan 3 nights in Lisbon, Portugal for Ana and Rui.")
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "Trip" and call["id"] and call["type"] == "tool_call"
    trip = Trip.model_validate(call["args"])  # valid for the nested schema, whatever the model chose
    assert trip.destination.city and trip.nights >= 0
    assert message.response_metadata["strategy"] == "tool_call"
    assert message.usage_metadata["output_tokens"] > 10
