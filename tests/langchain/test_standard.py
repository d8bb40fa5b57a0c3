"""LangChain's public standard test suites for ChatDeAL.

``ChatModelUnitTests`` needs no model work. ``ChatModelIntegrationTests`` runs on the embedded
SmolLM2-135M-Instruct (marker ``embedded``; select or skip it with ``-m embedded`` / ``-m "not embedded"``).
A small ``max_tokens`` keeps it to a few minutes on two CPU cores. Each xfail names something a 135M
model cannot do, not something the adapter lacks.
"""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_deal import ChatDeAL


class _ChatDeALFeatures:
    """What both standard suites are told about ChatDeAL."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatDeAL

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


class TestChatDeALUnit(_ChatDeALFeatures, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2", "temperature": 0}


@pytest.mark.embedded
class TestChatDeALIntegration(_ChatDeALFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2", "max_tokens": 12, "tool_call_max_tokens": 64}

    @property
    def standard_chat_model_params(self) -> dict:
        params = super().standard_chat_model_params
        params["max_tokens"] = 12  # the suite's default of 100 tokens would take minutes on CPU
        return params

    @property
    def returns_usage_metadata(self) -> bool:
        return True
