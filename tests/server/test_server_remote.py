"""``deal serve --base-url``: the server decodes on a remote vLLM engine through ``connect_model``.

Runs against the vLLM server named by ``DEAL_VLLM_URL`` (``http://127.0.0.1:PORT``, e.g. one started with
``.venv/bin/python scripts/vllm_server.py``); skipped without it, so a session never starts a second
vLLM next to the one tests/vllm starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

from shared_core.server import Limits, ServerSettings, load_served_model

pytestmark = pytest.mark.vllm
URL = os.environ.get("DEAL_VLLM_URL")


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    if not URL:
        pytest.skip("set DEAL_VLLM_URL to a running vLLM server serving smollm2")
    from conftest import live_server  # type: ignore[import-not-found]  # tests/server/conftest.py

    settings = ServerSettings(model="smollm2", base_url=URL.rstrip("/").removesuffix("/v1"),
                              limits=Limits(default_max_tokens=16))
    with live_server(settings, load_served_model(settings)) as url:
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
