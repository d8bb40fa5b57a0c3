"""The vLLM test server itself, spoken to with plain HTTP (no deal client): what the remote backend relies on.

It lists the embedded model as ``smollm2``; a completion accepts a prompt of token ids and returns
per-token top log-probabilities; greedy decoding there picks the top token at every step and matches
the prompt given as text.
"""

from __future__ import annotations

import math

import httpx
import pytest
from transformers import AutoTokenizer

from shared_core.models import resolve_model_source

PROMPT = "The capital of France is"
MAX_TOKENS = 8
TOP = 5


@pytest.fixture(scope="module")
def client(vllm_v1: str) -> httpx.Client:
    with httpx.Client(base_url=vllm_v1, timeout=120.0) as session:
        yield session


@pytest.fixture(scope="module")
def prompt_ids() -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("smollm2"))
    return tokenizer.encode(PROMPT, add_special_tokens=False)


def complete(client: httpx.Client, prompt: str | list[int], **extra: object) -> dict:
    response = client.post("/completions", json={
        "model": "smollm2", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, **extra,
    })
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_smollm2(client: httpx.Client) -> None:
    response = client.get("/models")
    assert response.status_code == 200, response.text
    assert "smollm2" in [entry["id"] for entry in response.json()["data"]]


def test_token_id_prompt_with_logprobs(client: httpx.Client, prompt_ids: list[int]) -> None:
    body = complete(client, prompt_ids, logprobs=TOP)
    choice = body["choices"][0]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert body["usage"]["completion_tokens"] == len(choice["logprobs"]["tokens"]) > 0
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(logprobs["tokens"])
    for token, chosen, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert TOP <= len(top) <= TOP + 1  # the sampled token is added when it is not among the top
        assert all(value <= 0.0 and math.isfinite(value) for value in top.values())
        # greedy: the chosen token is the most likely one
        assert token in top and math.isclose(chosen, max(top.values()), abs_tol=1e-4)
    assert choice["text"] == "".join(logprobs["tokens"])


def test_token_ids_and_text_prompt_agree(client: httpx.Client, prompt_ids: list[int]) -> None:
    by_ids = complete(client, prompt_ids)["choices"][0]["text"]
    by_text = complete(client, PROMPT)["choices"][0]["text"]
    assert by_ids == by_text and by_ids.strip()
