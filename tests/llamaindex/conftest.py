"""Fixtures for the LlamaIndex adapter tests: a DeAL on the tiny random model, test policies, tools."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from llama_index.core.tools import FunctionTool

from llamaindex_deal import DeAL
from shared_core.policies import register_policy


@dataclass(frozen=True)
class PolicyNames:
    """Two registered policies with different rewards: keyword coverage and a 3-word budget."""

    sun: str = "li-test-sun"
    short: str = "li-test-short"
    sun_spec: dict[str, Any] = field(default_factory=lambda: {"type": "keywords", "words": ["sun", "warm"]})
    short_spec: dict[str, Any] = field(default_factory=lambda: {"type": "length", "max_words": 3})


@pytest.fixture(scope="session")
def policies() -> PolicyNames:
    names = PolicyNames()
    register_policy(names.sun, names.sun_spec, overwrite=True)
    register_policy(names.short, names.short_spec, overwrite=True)
    return names


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir: str) -> Callable[..., DeAL]:
    """Builds a DeAL on the 2-layer random model (fast mechanics; its text is noise).

    Query engines size their prompts from ``metadata.context_window``; the tiny model's 512 positions
    leave LlamaIndex's prompt helper no room, so the tests announce 2048 (prompts stay far below 512).
    """

    def build(**kwargs: Any) -> DeAL:
        kwargs.setdefault("max_new_tokens", 8)
        kwargs.setdefault("context_window", 2048)
        return DeAL(model=tiny_model_dir, **kwargs)

    return build


@pytest.fixture()
def weather_tool() -> tuple[FunctionTool, list[str]]:
    """A tool and the list of cities it was called with."""
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Returns the current weather for a city."""
        calls.append(city)
        return f"It is sunny and 24 degrees in {city}."

    return FunctionTool.from_defaults(get_weather), calls
