"""Fixtures for the LangChain adapter tests: a tiny random model with room for tool prompts."""

from __future__ import annotations

import pytest

from shared_core.models import LocalModel, load_model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every LangChain test module decodes with one torch thread (see ``one_torch_thread``)."""


@pytest.fixture(scope="session")
def tiny_lc_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel, save_tiny_llama) -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer and a 2048-token window, saved as safetensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-lc-llama"), smollm2.tokenizer, max_position_embeddings=2048)


@pytest.fixture(scope="session")
def tiny_lc(tiny_lc_dir: str) -> LocalModel:
    return load_model(tiny_lc_dir)


# Standard-suite tests that ask more of a 135M model than it can do. Each reason is about the model, not
# the adapter: the same adapter paths pass with forced tool calls (test_tool_calling, test_tool_choice).
EMBEDDED_MODEL_LIMITS = {
    "test_agent_loop": (
        "with tool_choice='auto' SmolLM2-135M answers the weather question in prose instead of choosing to "
        "emit a <tool_call> for the tool described in its system prompt; a 135M model does not reliably "
        "decide on its own to call a tool (forced calls, tool_choice='any', pass in test_tool_calling)"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "TestChatDeALIntegration" in item.nodeid:
            reason = EMBEDDED_MODEL_LIMITS.get(getattr(item, "originalname", item.name))
            if reason:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
