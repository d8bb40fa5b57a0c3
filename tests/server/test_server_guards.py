"""Who may ask for what, and how much: API keys, limits, the alignment rules, errors in OpenAI's shape, 429."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

KEY = "test-key-123"
HI = [{"role": "user", "content": "Say hi."}]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chat(url: str, body: dict[str, Any], key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": HI, **body}, headers=headers,
                      timeout=60, **kw)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdC1rZXktMTIz", f"Token {KEY}", f"Bearer {KEY}x"])
def test_missing_or_wrong_key_is_401(guarded_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.post(guarded_url + "/v1/chat/completions", json={"model": "tiny", "messages": HI},
                          headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert error_of(response)["type"] == "authentication_error"
    assert httpx.get(guarded_url + "/v1/models", headers=headers).status_code == 401
    assert httpx.get(guarded_url + "/metrics", headers=headers).status_code == 401


def test_every_configured_key_works_and_health_needs_none(guarded_url: str) -> None:
    assert chat(guarded_url, {"max_tokens": 2}).status_code == 200
    assert chat(guarded_url, {"max_tokens": 2}, key="second-key").status_code == 200
    health = httpx.get(guarded_url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_key_comparison_is_constant_time() -> None:
    import inspect

    from shared_core.server import security

    assert "hmac.compare_digest" in inspect.getsource(security.check_api_key)


def test_body_over_the_limit_is_413(guarded_url: str) -> None:
    big = [{"role": "user", "content": "x" * 3000}]
    response = chat(guarded_url, {"messages": big})
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: the server counts as it reads
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    response = httpx.post(guarded_url + "/v1/chat/completions", content=chunks(),
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 601}, "max_tokens"),
    ({"max_completion_tokens": 700}, "max_completion_tokens"),
    ({"n": 3}, "n"),
    ({"messages": [{"role": "user", "content": "word " * 120}]}, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"deal": {"strategy": "nope"}}, "deal.strategy"),
    ({"deal": {"policy": "nope"}}, "deal.policy"),
    ({"deal": {"strategy": "best_of_n", "reward": {"type": "length", "max_words": 3}, "params": {"n": 100}}},
     "deal.params.n"),
    ({"deal": {"strategy": "greedy", "params": {"bogus": 1}}}, "deal.params.bogus"),
    ({"deal": {"reward": {"type": "keywords", "words": "not-a-list"}}}, "deal.reward.words"),
    ({"deal": {"reward": {"type": "safety"}}}, "deal.reward"),
    ({"deal": {"reward": {"type": "weighted", "components": [{"weight": 1, "reward": {"type": "safety"}}]}}},
     "deal.reward"),
    ({"deal": {"policy": {"reward": {"type": "classifier", "model": "x"}}}}, "deal.policy.reward"),
    ({"deal": {"reward": {"type": "classifier", "model": "/tmp", "trust_remote_code": True}}},
     "deal.reward.trust_remote_code"),
    ({"deal": {"strategy": "transfer_q", "reward": {"type": "length", "max_words": 3},
               "params": {"baseline": "/tmp"}}}, "deal.params.baseline"),
    ({"deal": {"policy": {"strategy": "nope"}}}, "deal.policy.strategy"),
    ({"temperature": 1e-300}, "temperature"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].name"),
])
def test_bad_requests_are_400_naming_the_field(guarded_url: str, body: dict[str, Any], param: str) -> None:
    response = chat(guarded_url, body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split(".")[-1].split("[")[0] in error["message"]


def test_inline_model_free_rewards_are_allowed(guarded_url: str) -> None:
    body = {"max_tokens": 3, "deal": {"reward": {"type": "weighted", "components": [
        {"weight": 1.0, "reward": {"type": "length", "max_words": 3}},
        {"weight": 0.5, "reward": {"type": "keywords", "words": ["hi"]}}]}}}
    response = chat(guarded_url, body)
    assert response.status_code == 200 and response.json()["deal"]["reward"]["components"]


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"foo": 1}, "foo", 422),
    ({"deal": {"policy": "x", "rewards": 1}}, "deal.rewards", 422),
    ({"temperature": 5}, "temperature", 422),
    ({"seed": 2**70}, "seed", 422),
    ({"messages": []}, "messages", 422),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", 422),
])
def test_schema_violations_are_422_naming_the_field(guarded_url: str, body: dict[str, Any], param: str,
                                                    status: int) -> None:
    response = chat(guarded_url, body)
    assert response.status_code == status and error_of(response)["param"] == param


def test_unknown_model_is_404_and_unknown_route_is_openai_shaped(guarded_url: str) -> None:
    response = chat(guarded_url, {"model": "gpt-4o"})
    assert response.status_code == 404 and error_of(response)["param"] == "model"
    assert error_of(httpx.get(guarded_url + "/v2/nothing"))["type"] == "not_found_error"


def test_a_full_queue_is_429_with_retry_after(guarded_url: str) -> None:
    """One request decodes, one waits (the guarded server's limits); a third gets 429 at once."""
    slow = {"model": "tiny", "messages": HI, "max_tokens": 600, "stream": True,
            "deal": {"strategy": "deal", "reward": {"type": "keywords", "words": ["x"]},
                     "params": {"top_k": 8, "lookahead": 4}}}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=guarded_url, headers=headers, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", json=slow) as running:
                assert running.status_code == 200
                waiting = asyncio.create_task(client.post("/v1/chat/completions", json={**slow, "stream": False}))
                for _ in range(200):
                    if (await client.get("/health")).json()["queue_depth"] == 1:
                        break
                    await asyncio.sleep(0.02)
                third = await client.post("/v1/chat/completions", json={**slow, "stream": False})
                waiting.cancel()
                try:
                    await waiting
                except asyncio.CancelledError:
                    pass
            return third

    third = asyncio.run(main())
    assert third.status_code == 429, third.text
    assert int(third.headers["retry-after"]) >= 1 and error_of(third)["type"] == "rate_limit_error"
    deadline = time.monotonic() + 5  # both abandoned requests leave the scheduler
    while time.monotonic() < deadline:
        stats = httpx.get(guarded_url + "/health").json()
        if stats["queue_depth"] == 0 and stats["running"] == 0:
            break
        time.sleep(0.05)
    assert stats["queue_depth"] == 0 and stats["running"] == 0


def test_metrics_are_prometheus_text_per_strategy(guarded_url: str) -> None:
    chat(guarded_url, {"max_tokens": 2})
    text = httpx.get(guarded_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for needle in ('deal_requests_total{endpoint="chat",status="200",strategy="greedy"}',
                   'deal_tokens_total{kind="completion",strategy="greedy"}',
                   'deal_request_seconds_bucket{le="0.05",strategy="greedy"}',
                   "deal_queue_depth{strategy=", "deal_scheduler_queue_depth ",
                   'deal_requests_total{endpoint="chat",status="401",strategy="none"}'):
        assert needle in text, needle


def test_prompt_over_the_context_window_is_400_naming_messages(tiny_url: str) -> None:
    """The tiny model reads 512 tokens; the check runs before any decoding."""
    response = chat(tiny_url, {"messages": [{"role": "user", "content": "word " * 700}]}, key=None)
    assert response.status_code == 400 and error_of(response)["param"] == "messages"
    assert "context window" in error_of(response)["message"]
    streamed = chat(tiny_url, {"messages": [{"role": "user", "content": "word " * 700}], "stream": True}, key=None)
    assert streamed.status_code == 400 and error_of(streamed)["param"] == "messages"


def test_remote_engine_and_shutdown_errors_map_to_statuses() -> None:
    from shared_core.backends.remote import BackendConnectionError, BackendFeatureError, BackendRequestError
    from shared_core.errors import ModelLoadError
    from shared_core.scheduler import SchedulerClosed
    from shared_core.server.errors import to_api_error

    cases = [(BackendConnectionError("refused"), 503, None), (BackendFeatureError("no logprobs"), 400, "deal.strategy"),
             (BackendRequestError("bad model"), 400, None), (SchedulerClosed("closed"), 503, None),
             (ModelLoadError("missing"), 503, None), (RuntimeError("secret detail"), 500, None)]
    for exc, status, param in cases:
        err = to_api_error(exc)
        assert (err.status, err.param) == (status, param), exc
    assert "secret detail" not in to_api_error(RuntimeError("secret detail")).message  # no internals leak
