"""``deal serve --base-url``: the server decodes on a remote vLLM engine through ``connect_model``.

Runs against the session's real vLLM server (the ``vllm_server`` fixture in tests/conftest.py, shared
with tests/vllm, so a session starts one at most).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from shared_core.server import Limits, ServerSettings, load_served_model

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def client(vllm_server: str, serve: Any) -> Iterator[openai.OpenAI]:
    settings = ServerSettings(model="smollm2", base_url=vllm_server, limits=Limits(default_max_tokens=16))
    with serve(settings, load_served_model(settings)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_plain_and_guided_requests_decode_remotely(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12)
    assert plain.choices[0].message.content and plain.model_extra["deal"]["strategy"] == "greedy"
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=12, stream=True,
        extra_body={"deal": {"strategy": "best_of_n", "reward": {"type": "keywords", "words": ["hello"]},
                             "params": {"n": 2}}}))
    last = chunks[-1].choices[0]
    assert last.finish_reason and last.model_extra["deal"]["strategy"] == "best_of_n"
    assert last.model_extra["deal"]["reward"] is not None
