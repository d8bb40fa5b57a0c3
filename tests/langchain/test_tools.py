"""shared_core.tools: tool rendering, parsing, and forced calls that are valid for the tool's schema."""

from __future__ import annotations

import copy
import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from shared_core import generate
from shared_core.decoding.tool_call import forced_call_params
from shared_core.errors import ConfigError
from shared_core.tools import (
    TOOL_CALL_OPEN,
    normalize_tools,
    parse_tool_calls,
    prepare_tool_prompt,
    resolve_tool_choice,
    streamable_length,
    template_supports_tools,
)


class Location(BaseModel):
    city: str
    country: str


class Forecast(BaseModel):
    """Weather forecast for a place."""

    location: Location
    days: int
    units: Literal["metric", "imperial"] = "metric"
    hourly: bool = False
    stops: list[Location] = Field(default_factory=list)
    threshold: float | None = None


def _tool(model: type[BaseModel], name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": model.__doc__ or "",
                                             "parameters": model.model_json_schema()}}


WEATHER = _tool(Forecast, "get_weather")
ADD = {"type": "function", "function": {"name": "add", "description": "Adds two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
NO_ARGS = {"type": "function", "function": {"name": "ping", "description": "Pings.", "parameters": {}}}


# --------------------------------------------------------------------------- tools and choice


def test_normalize_tools_fills_defaults_and_names_bad_tools() -> None:
    tools = normalize_tools([{"name": "ping"}, ADD])
    assert tools[0]["function"]["parameters"] == {"type": "object", "properties": {}}
    with pytest.raises(ConfigError, match=r"tools\[0\]\.name"):
        normalize_tools([{"type": "function", "function": {"name": "has space"}}])
    with pytest.raises(ConfigError, match=r"tools\[1\].*type 'function'"):
        normalize_tools([ADD, {"type": "retrieval"}])
    with pytest.raises(ConfigError, match=r"tools\[0\]\.parameters"):
        normalize_tools([{"name": "x", "parameters": {"type": "string"}}])
    with pytest.raises(ConfigError, match="list of tool dicts"):
        normalize_tools(ADD)  # type: ignore[arg-type]


@pytest.mark.parametrize(("choice", "mode", "names"), [
    (None, "auto", ("add", "ping")), ("auto", "auto", ("add", "ping")), ("none", "none", ()),
    ("any", "required", ("add", "ping")), ("required", "required", ("add", "ping")), (True, "required", ("add", "ping")),
    ("ping", "required", ("ping",)), ({"type": "function", "function": {"name": "add"}}, "required", ("add",)),
])
def test_resolve_tool_choice(choice: object, mode: str, names: tuple[str, ...]) -> None:
    resolved = resolve_tool_choice(choice, [ADD, NO_ARGS])
    assert (resolved.mode, resolved.names) == (mode, names)


def test_resolve_tool_choice_errors() -> None:
    with pytest.raises(ConfigError, match="no tool named 'nope'; the tools are: add"):
        resolve_tool_choice("nope", [ADD])
    with pytest.raises(ConfigError, match="needs at least one tool"):
        resolve_tool_choice("any", [])
    with pytest.raises(ConfigError, match="tool_choice"):
        resolve_tool_choice(3, [ADD])


# --------------------------------------------------------------------------- rendering


class _Tok:
    def __init__(self, template: str) -> None:
        self.chat_template = template


def test_template_support_detection(smollm2) -> None:
    assert not template_supports_tools(smollm2.tokenizer)  # SmolLM2's template ignores tools
    assert template_supports_tools(_Tok("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}"))
    assert not template_supports_tools(_Tok("{% set tools = 1 %}{{ messages }}"))  # set locally, not read


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1 + 2?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}}]},
    {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"},
]


def test_fallback_prompt_describes_tools_and_rewrites_history(smollm2) -> None:
    prepared = prepare_tool_prompt(HISTORY, [ADD], tokenizer=smollm2.tokenizer,
                                   tool_choice=resolve_tool_choice("add", [ADD]))
    assert prepared.template_tools is None and not prepared.uses_template
    system = prepared.messages[0]["content"]
    assert system.startswith("Be brief.") and '"name": "add"' in system and "Now call the function 'add'" in system
    assert prepared.messages[2] == {"role": "assistant", "content":
                                    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'}
    assert prepared.messages[3]["role"] == "user" and "<tool_response>" in prepared.messages[3]["content"]
    smollm2.render(prepared.messages)  # renders without error
    assert HISTORY[2]["content"] is None  # the caller's messages are not modified


def test_native_template_gets_tools_and_structured_calls() -> None:
    prepared = prepare_tool_prompt(HISTORY, [ADD], tokenizer=_Tok("{{ tools }}{{ messages }}"))
    assert prepared.template_tools == normalize_tools([ADD])
    call = prepared.messages[2]["tool_calls"][0]
    assert call == {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    assert prepared.messages[3] == {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"}


def test_tool_choice_none_renders_no_tools(smollm2) -> None:
    prepared = prepare_tool_prompt(HISTORY[:2], [ADD], tokenizer=smollm2.tokenizer,
                                   tool_choice=resolve_tool_choice("none", [ADD]))
    assert prepared.messages == HISTORY[:2]


# --------------------------------------------------------------------------- parsing


def test_parse_tagged_calls_keeps_text() -> None:
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n' \
           '<tool_call>{"name": "ping", "arguments": "{}"}'  # the second block is cut off, args as a string
    parsed = parse_tool_calls(text, ["add", "ping"])
    assert parsed.text == "Let me add."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("add", {"a": 1, "b": 2}), ("ping", {})]
    assert len({c.id for c in parsed.tool_calls}) == 2 and parsed.errors == []


def test_parse_bare_and_fenced_json_calls() -> None:
    assert parse_tool_calls('{"name": "add", "parameters": {"a": 1}}', ["add"]).tool_calls[0].arguments == {"a": 1}
    fenced = '```json\n[{"name": "ping", "arguments": {}}, {"name": "add", "arguments": {"a": 2}}]\n```'
    assert [c.name for c in parse_tool_calls(fenced, ["add", "ping"]).tool_calls] == ["ping", "add"]


def test_parse_leaves_ordinary_json_and_unknown_tools_alone() -> None:
    assert parse_tool_calls('{"setup": "a", "punchline": "b"}', ["add"]).tool_calls == []
    assert parse_tool_calls('{"name": "Bob", "age": 3}').tool_calls == []  # no arguments key, no tool list
    parsed = parse_tool_calls('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', ["add"])
    assert parsed.tool_calls == [] and "not a call to a known tool" in parsed.errors[0]
    parsed = parse_tool_calls("<tool_call>{oops</tool_call>", ["add"])
    assert parsed.tool_calls == [] and "unreadable" in parsed.errors[0]


def test_streamable_length_holds_back_possible_calls() -> None:
    assert streamable_length("Hello there") == len("Hello there")
    assert streamable_length("Sure <tool") == len("Sure ")
    assert streamable_length(f"Sure {TOOL_CALL_OPEN}{{") == len("Sure ")
    assert streamable_length('  {"name"') == 0


# --------------------------------------------------------------------------- forced calls


def _forced(lm, tools, choice, **kw):
    resolved = resolve_tool_choice(choice, tools)
    prepared = prepare_tool_prompt([{"role": "user", "content": "Weather in Paris, France for 3 days?"}], tools,
                                   tokenizer=lm.tokenizer, tool_choice=resolved)
    return generate(lm, prepared.messages, strategy="tool_call", max_new_tokens=kw.pop("max_new_tokens", 400),
                    **forced_call_params(tools, resolved, **kw))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_forced_call_is_valid_for_nested_schema_on_random_model(tiny_lc, seed: int) -> None:
    """A random model picks arbitrary tokens, so every branch of the schema walker gets exercised."""
    result = _forced(tiny_lc, [WEATHER, ADD], "get_weather", temperature=1.5, seed=seed, max_string_tokens=6)
    parsed = parse_tool_calls(result.text, ["get_weather", "add"])
    assert result.finish_reason == "eos", result.text
    assert len(parsed.tool_calls) == 1 and parsed.tool_calls[0].name == "get_weather"
    forecast = Forecast.model_validate(parsed.tool_calls[0].arguments)  # $defs / nested objects / arrays
    assert forecast.location.city and forecast.location.country


def test_forced_call_any_chooses_among_tools_and_handles_no_arguments(tiny_lc) -> None:
    names = set()
    for seed in range(4):
        result = _forced(tiny_lc, [ADD, NO_ARGS], "any", temperature=2.0, seed=seed, max_string_tokens=6)
        call = parse_tool_calls(result.text, ["add", "ping"]).tool_calls[0]
        names.add(call.name)
        if call.name == "ping":
            assert call.arguments == {}
        else:
            assert set(call.arguments) == {"a", "b"} and all(isinstance(v, int) for v in call.arguments.values())
    assert names <= {"add", "ping"}


def test_forced_text_costs_one_forward_per_stretch(tiny_lc) -> None:
    result = _forced(tiny_lc, [NO_ARGS], "ping")
    assert json.loads(result.text.split("\n")[1]) == {"name": "ping", "arguments": {}}
    # the whole call is forced: prefill plus at most one forward per forced stretch, far fewer than tokens
    assert result.stats.forward_passes["policy"] <= 3 < result.stats.new_tokens


def test_forced_call_respects_enum_const_and_limits(tiny_lc) -> None:
    schema = {"type": "object", "properties": {
        "mode": {"enum": ["fast", "slow", 3]}, "kind": {"const": "fixed"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 2, "maxItems": 2},
        "score": {"type": "number"}, "maybe": {"type": ["null", "boolean"]},
    }, "required": ["mode", "kind", "tags", "score", "maybe"]}
    tool = {"type": "function", "function": {"name": "cfg", "parameters": schema}}
    for seed in range(3):
        result = _forced(tiny_lc, [tool], "any", temperature=1.5, seed=seed, max_string_tokens=6)
        args = parse_tool_calls(result.text, ["cfg"]).tool_calls[0].arguments
        assert args["mode"] in ("fast", "slow", 3) and args["kind"] == "fixed"
        assert len(args["tags"]) == 2 and all(1 <= len(t) <= 4 for t in args["tags"])
        assert isinstance(args["score"], (int, float)) and isinstance(args["maybe"], bool)


def test_forced_call_params_validation_runs_before_model_work() -> None:
    with pytest.raises(ConfigError, match="params.functions"):
        generate("no-such-model", "hi", strategy="tool_call", functions=[])
    with pytest.raises(ConfigError, match="tool_choice"):
        forced_call_params([ADD], resolve_tool_choice("none", [ADD]))


def test_non_local_ref_is_a_clear_error(tiny_lc) -> None:
    bad = copy.deepcopy(ADD)
    bad["function"]["parameters"]["properties"]["a"] = {"$ref": "http://example.com/schema"}
    with pytest.raises(ConfigError, match=r"tools\[0\]\.parameters\.properties\.a\.\$ref: only local references"):
        _forced(tiny_lc, [bad], "add")


def test_history_without_tools_is_written_in_plain_words(smollm2) -> None:
    prepared = prepare_tool_prompt(HISTORY, None, tokenizer=smollm2.tokenizer)
    assert prepared.messages[2]["content"] == "I called add(a=1, b=2)."
    assert prepared.messages[3] == {"role": "user", "content": "The tool add answered: 3"}


@pytest.mark.parametrize("budget", [44, 64, 96])
def test_forced_call_fits_any_budget_that_holds_the_smallest_call(tiny_lc, budget: int) -> None:
    """The smallest call is planned first, so even a tight budget ends with complete JSON (at worst the
    closing tag is cut, which the parser tolerates); free values only spend what is left."""
    result = _forced(tiny_lc, [WEATHER], "get_weather", temperature=1.5, seed=budget, max_new_tokens=budget)
    assert result.stats.new_tokens <= budget
    if budget >= 64:
        assert result.finish_reason == "eos"
    Forecast.model_validate(parse_tool_calls(result.text, ["get_weather"]).tool_calls[0].arguments)


def test_forced_call_budget_too_small_is_a_config_error(tiny_lc) -> None:
    with pytest.raises(ConfigError, match="max_new_tokens: a forced tool call needs at least"):
        _forced(tiny_lc, [WEATHER], "get_weather", max_new_tokens=12)


# ---------------------------------------------------------------------------------------- schema subset


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"type": "string", "pattern": "^[a-z]+$"}, "tools[0].parameters.properties.x.pattern"),
        ({"type": "string", "format": "date-time"}, "tools[0].parameters.properties.x.format"),
        ({"type": "integer", "multipleOf": 5}, "tools[0].parameters.properties.x.multipleOf"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "tools[0].parameters.properties.x.anyOf"),
        ({"type": ["string", "integer"]}, "tools[0].parameters.properties.x.type"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True},
         "tools[0].parameters.properties.x.uniqueItems"),
        ({"type": "number", "minimum": "zero"}, "tools[0].parameters.properties.x.minimum"),
    ],
)
def test_forced_calls_reject_schema_keywords_the_decoder_cannot_enforce(schema: dict, field: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": schema}, "required": ["x"]}}}
    with pytest.raises(ConfigError) as info:
        forced_call_params([tool], resolve_tool_choice("any", [tool]))
    assert info.value.field == field
    assert any(reason in str(info.value) for reason in ("not supported for forced tool calls", "must be a finite number",
                                                         "forced tool calls support one"))


def test_bind_tools_checks_the_schema_only_when_a_call_is_forced() -> None:
    from langchain_deal import ChatDeAL

    class Appointment(BaseModel):
        """Book an appointment."""

        when: str = Field(json_schema_extra={"format": "date-time"})

    llm = ChatDeAL(model="smollm2")
    llm.bind_tools([Appointment])  # offered only: the model sees the whole schema, nothing is enforced
    with pytest.raises(ConfigError, match=r"properties\.when\.format: is not supported for forced tool calls"):
        llm.bind_tools([Appointment], tool_choice="Appointment")
    with pytest.raises(ConfigError, match="format"):
        llm.with_structured_output(Appointment)


def test_optional_fields_and_numeric_bounds_are_supported(tiny_lc) -> None:
    class Order(BaseModel):
        """Order some items."""

        quantity: int = Field(gt=-3, lt=4)
        price: float = Field(ge=1.5, le=2.5)
        note: str | None = None

    from langchain_core.utils.function_calling import convert_to_openai_tool

    tool = convert_to_openai_tool(Order)
    params = forced_call_params([tool], resolve_tool_choice("any", [tool]))
    for seed in range(4):
        result = generate(tiny_lc, "Order now.", strategy="tool_call", seed=seed, max_new_tokens=120,
                          **{**params, "temperature": 1.0})
        call = parse_tool_calls(result.text, ["Order"]).tool_calls[0]
        order = Order.model_validate(call.arguments)  # the bounds hold whatever the random model picks
        assert -3 < order.quantity < 4 and 1.5 <= order.price <= 2.5
