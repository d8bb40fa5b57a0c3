"""Fuzzing the OpenAPI schema with schemathesis: no generated request may get a 5xx.

Requests are generated from the live server's ``/openapi.json`` (bounded examples per operation) and
sent to it; the server runs the tiny model with a small default token budget so examples stay cheap.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_EXAMPLES = 20
DECODED_FIELDS = {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream"}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_server_error(fuzz_url: str, mode: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(fuzz_url + "/openapi.json")
    failures: list[str] = []
    statuses: list[tuple[str, int]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
    for operation in operations:
        @given(case=operation.as_strategy(GenerationMode(mode)))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # past the 404 for unknown models, into planning and decoding
                if mode == "positive" and len(statuses) % 2:  # every other example: only the fields decoding reads, so some get decoded
                    for key in set(case.body) - DECODED_FIELDS:
                        del case.body[key]
                    if isinstance(case.body.get("messages"), list):  # fuzzed texts, as user turns
                        case.body["messages"] = [
                            {"role": "user", "content": m["content"] if isinstance(m.get("content"), str) else "x"}
                            for m in case.body["messages"] if isinstance(m, dict)] or [{"role": "user", "content": "x"}]
            response = case.call(base_url=fuzz_url, timeout=30)
            statuses.append((operation.path, response.status_code))
            if response.status_code >= 500:
                failures.append(f"{operation.method.upper()} {operation.path} -> {response.status_code}: "
                                f"{response.text[:300]} for {case.body!r}"[:800])
            elif response.status_code >= 400:  # every refusal in OpenAI's error shape
                error = response.json()["error"]
                if set(error) != {"message", "type", "param", "code"}:
                    failures.append(f"{operation.path} -> {response.status_code} not in OpenAI's shape: {error}")

        try:
            check()
        except Unsatisfiable:  # nothing to get wrong (an operation without parameters or body)
            assert mode == "negative" and operation.method.upper() == "GET", operation.path
    assert not failures, "\n".join(failures[:5])
    if mode == "positive":
        assert ("/v1/chat/completions", 200) in statuses  # some examples were decoded, not only refused
