"""The official ``openai`` client against a live ``deal serve`` on the tiny random model: sync, async, streaming."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HI = [{"role": "user", "content": "Say hi."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 5}},
                   "required": ["city", "days"]},
}}


@pytest.fixture(scope="module")
def client(tiny_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_the_model_and_one_alias_per_policy(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny"
    assert {"tiny:brief", "tiny:cooking", "tiny:safe", "tiny:concise", "tiny:strict"} <= set(ids)
    assert client.models.retrieve("tiny:brief").id == "tiny:brief"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_chat_sync_plain_is_greedy_and_reports_usage(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6)
    again = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6)
    assert out.choices[0].message.content == again.choices[0].message.content  # greedy: deterministic
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 6 and out.usage.prompt_tokens > 0
    deal = out.model_extra["deal"]
    assert deal["strategy"] == "greedy" and deal["policy"] is None and deal["forward_passes"]["policy"] == 6


def test_extra_body_deal_object_steers_and_reports_reward(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=5,
        extra_body={"deal": {"reward": {"type": "keywords", "words": ["hello"]}, "strategy": "args",
                             "params": {"top_k": 4}}})
    deal = out.model_extra["deal"]
    assert deal["strategy"] == "args" and deal["strategy_params"]["top_k"] == 4
    assert set(deal["reward"]) == {"total", "components"}


def test_model_alias_applies_the_operator_policy(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny:cooking", messages=HI, max_tokens=4)
    deal = out.model_extra["deal"]
    assert deal["policy"] == "cooking" and deal["strategy"] == "deal" and deal["reward"] is not None
    assert deal["strategy_params"]["lookahead"] == 2


def test_sampling_seed_n_and_stop(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model="tiny", messages=HI, max_tokens=8, temperature=1.0, seed=7, n=2)
    b = client.chat.completions.create(model="tiny", messages=HI, max_tokens=8, temperature=1.0, seed=7, n=2)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content  # seed + i per choice
    assert a.model_extra["deal"]["strategy"] == "sample"
    text = a.choices[0].message.content
    stop = text[2:5]
    cut = client.chat.completions.create(model="tiny", messages=HI, max_tokens=8, temperature=1.0, seed=7, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_temperature_a_strategy_cannot_use_is_reported_not_silently_dropped(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny:cooking", messages=HI, max_tokens=3, temperature=0.7)
    assert "temperature=0.7 not applied" in raw.headers["x-deal-warning"]
    assert "temperature=0.7 not applied" in raw.parse().model_extra["deal"]["warnings"][0]


def test_streaming_deltas_add_up_and_end_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="tiny", messages=HI, max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[-1].choices[0].finish_reason == "length"
    assert finals[-1].choices[0].model_extra["deal"]["strategy"] == "greedy"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 10


def test_async_client_runs_requests_concurrently(tiny_url: str) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=tiny_url + "/v1", api_key="x", max_retries=0, timeout=60)
        outs = await asyncio.gather(*(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=5) for i in range(3)))
        stream = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=4, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return [o.choices[0].message.content for o in outs] + ["".join(pieces)]

    results = asyncio.run(main())
    assert len(results) == 4 and all(isinstance(r, str) and r for r in results)


def test_forced_tool_call_is_valid_for_its_schema(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris for 2 days?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(args) == {"city", "days"}
    assert isinstance(args["city"], str) and len(args["city"]) <= 12 and 1 <= args["days"] <= 5
    assert out.model_extra["deal"]["strategy"] == "tool_call"


def test_streamed_tool_call_arrives_as_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="required",
        max_tokens=60, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    json.loads("".join(d.function.arguments for d in deltas))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_history_round_trip_is_accepted(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    out = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=5)
    assert out.choices[0].finish_reason in ("length", "stop", "tool_calls")


def test_response_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {
                                                   "type": "string", "enum": ["a", "b"]}, "maxItems": 2}},
              "required": ["name", "ok", "tags"]}
    out = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    value = json.loads(out.choices[0].message.content)
    assert set(value) == {"name", "ok", "tags"} and isinstance(value["ok"], bool)
    assert set(value["tags"]) <= {"a", "b"} and len(value["name"]) <= 10
    assert out.model_extra["deal"]["strategy"] == "json_schema"
    free = client.chat.completions.create(model="tiny", messages=HI, max_tokens=40,
                                          response_format={"type": "json_object"})
    assert isinstance(json.loads(free.choices[0].message.content), dict)


def test_unsupported_schema_keyword_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=HI, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}})
    assert info.value.body["param"] == "response_format.json_schema.schema.pattern"


def test_text_completions_sync_and_streaming(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt=["The sky is", "Water is"], max_tokens=4)
    assert [c.index for c in out.choices] == [0, 1] and all(c.text for c in out.choices)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The sky is", max_tokens=4, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_logprobs_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=HI, logprobs=True)
    assert info.value.body["param"] == "logprobs" and "log-prob" in info.value.body["message"]


def test_token_budget_errors_name_the_field_the_request_used(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a", "b"]}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=HI, max_completion_tokens=3, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert info.value.body["param"] == "max_completion_tokens" and "schema needs" in info.value.body["message"]


def test_alignment_a_forced_call_cannot_use_is_reported(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny:cooking", messages=HI, max_tokens=60, tools=[WEATHER], tool_choice="required", top_p=0.5)
    warning = raw.headers["x-deal-warning"]
    assert "the reward, top_p not applied: a forced tool call" in warning
    assert raw.parse().model_extra["deal"]["policy"] == "cooking"
