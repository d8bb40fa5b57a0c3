"""Property-based fuzzing of everything a user can pass in: only ConfigError may come out, never a crash.

Reward specs (JSON-ish dicts built around the real spec types: wrong types, missing and extra fields,
NaN and infinities, nested weighted specs), strategy parameters for every registered strategy, and tool
schemas either validate or raise a :class:`ConfigError` naming the field, before any model work. The
examples are derandomized, so a run is repeatable and a failure names its input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_core.decoding import get_strategy, list_strategies
from shared_core.decoding.tool_call import forced_call_params
from shared_core.errors import ConfigError
from shared_core.policies import build_reward, check_reward
from shared_core.request import Request
from shared_core.specs import REWARD_TYPES, parse_policy, parse_reward_spec
from shared_core.tools import ToolChoice, check_tool_schemas, normalize_tools, resolve_tool_choice

FUZZ = settings(derandomize=True, max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Hub ids in fuzzed specs resolve against the local hub cache only (no network probe)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


# ---------------------------------------------------------------------------------------- values

NUMBERS = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e308, -1e-308]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12),
                    st.sampled_from(["", " ", "\x00", "3", "true", "auto", "logit", "{", "[]"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                       max_leaves=8)
WORDS = st.one_of(st.lists(st.sampled_from(["sun", "warm", "rinse", "the cat", "", " ", "!!", "3", "café"]),
                           max_size=4), JSONISH)
MODEL_NAMES = st.one_of(st.sampled_from(["smollm2", "gemma3-270m-missing", "/no/such/folder", "no/such-model",
                                         "org/name/extra", "model.gguf", "", " ", "~", ".", "\x00bad", "a" * 300]),
                        JSONISH)
SMALL_INTS = st.one_of(st.integers(-2, 600), JSONISH)
PLAUSIBLE = st.one_of(st.integers(0, 12), st.floats(0.0, 2.0), st.booleans(), st.none())

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "words": WORDS, "forbidden": WORDS, "forbidden_penalty": st.one_of(NUMBERS, JSONISH),
    "min_words": SMALL_INTS, "max_words": SMALL_INTS, "min_tokens": SMALL_INTS, "max_tokens": SMALL_INTS,
    "tokenizer": MODEL_NAMES, "model": MODEL_NAMES,
    "label": st.one_of(st.integers(-2, 4), st.sampled_from(["LABEL_0", "positive", "0", "9"]), JSONISH),
    "output": st.one_of(st.sampled_from(["logit", "probability", "prob"]), JSONISH),
    "include_prompt": st.one_of(st.booleans(), JSONISH), "max_length": SMALL_INTS, "batch_size": SMALL_INTS,
    "device": st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:7", "tpu", "meta"]), JSONISH),
    "dtype": st.one_of(st.sampled_from(["auto", "float32", "bfloat16", "float16", "int8"]), JSONISH),
    "exemplars": st.one_of(st.sampled_from(["/no/such/file.json", "", "."]), JSONISH),
    "weight": st.one_of(NUMBERS, JSONISH), "instruction": st.one_of(st.text(max_size=20), JSONISH),
    "trust_remote_code": st.booleans(), "extra_field": JSONISH,
}


#: A valid spec of every reward type (no model is loaded to build them), the seeds the fuzzer mutates.
VALID_SPECS: dict[str, dict[str, Any]] = {
    "keywords": {"type": "keywords", "words": ["sun", "warm"], "forbidden": ["cold"]},
    "length": {"type": "length", "max_words": 10},
    "classifier": {"type": "classifier", "model": "smollm2", "output": "probability"},
    "safety": {"type": "safety"},
    "arm": {"type": "arm", "model": "smollm2", "weight": 0.5},
    "weighted": {"type": "weighted", "components": [{"weight": 1.0, "reward": {"type": "length", "max_words": 3}}]},
}
assert set(VALID_SPECS) == set(REWARD_TYPES), "a new reward type needs a valid seed spec here"


@st.composite
def reward_specs(draw: st.DrawFn, depth: int = 0) -> Any:
    """A valid spec with a few mutations: fields set to wrong or extreme values, removed, or unknown ones added.

    Now and then a shapeless value or a random dict instead, so both near misses and garbage are covered.
    """
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(JSONISH)
    if shape == 1:
        return draw(st.dictionaries(st.sampled_from(["type", *sorted(FIELD_VALUES)]), SCALARS, max_size=4))
    kind = draw(st.sampled_from(sorted(VALID_SPECS)))
    spec = json.loads(json.dumps(VALID_SPECS[kind]))
    for name in draw(st.lists(st.sampled_from(["type", "components", *sorted(FIELD_VALUES)]), max_size=3,
                              unique=True)):
        if draw(st.integers(0, 4)) == 0:
            spec.pop(name, None)
        elif name == "type":
            spec[name] = draw(st.one_of(st.sampled_from([*REWARD_TYPES, "nope", "Keywords", ""]), SCALARS))
        elif name == "components":
            component = st.fixed_dictionaries(
                {"weight": st.one_of(st.floats(0, 2), NUMBERS, JSONISH),
                 "reward": reward_specs(depth + 1) if depth < 2 else JSONISH},
                optional={"extra": JSONISH})
            spec[name] = draw(st.one_of(st.lists(component, max_size=3), JSONISH))
        else:
            spec[name] = draw(FIELD_VALUES[name])
    return spec


def _only_config_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        assert exc.field and str(exc).startswith(f"{exc.field}: "), str(exc)
        return None


# ---------------------------------------------------------------------------------------- reward specs


@FUZZ
@given(reward_specs())
def test_reward_specs_parse_and_build_or_raise_config_errors(spec: Any) -> None:
    parsed = _only_config_errors(parse_reward_spec, spec)
    built = _only_config_errors(build_reward, spec) if isinstance(spec, dict) else None
    if isinstance(spec, dict):
        _only_config_errors(check_reward, spec)
        _only_config_errors(parse_policy, spec)
    if built is not None:
        assert parsed is not None  # whatever builds, parses
    if isinstance(spec, dict) and "trust_remote_code" in spec:
        assert parsed is None  # a spec can never ask to run model code


@FUZZ
@given(reward_specs())
def test_reward_specs_as_json_text_behave_like_dicts(spec: Any) -> None:
    text = json.dumps(spec, allow_nan=True)
    from_text = _only_config_errors(parse_reward_spec, text)
    from_dict = _only_config_errors(parse_reward_spec, spec)
    if isinstance(spec, dict) and _json_safe(spec):
        assert (from_text is None) == (from_dict is None)
        if from_text is not None:
            assert parse_reward_spec(from_text.to_json()) == from_text  # the JSON form reads back to the same spec


def _json_safe(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (no NaN, -0.0, or huge ints turned float)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_json_safe(v) for v in value.values())
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    return True


# ---------------------------------------------------------------------------------------- strategy parameters

#: Request.build keywords besides the strategy's own parameters: plausible values and junk.
REQUEST_KEYS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "max_new_tokens": (st.integers(1, 64), SMALL_INTS),
    "stop": (st.lists(st.text(min_size=1, max_size=4), max_size=3), JSONISH),
    "seed": (st.integers(0, 2**40), JSONISH),
    "repetition_penalty": (st.floats(0.5, 2.0), st.one_of(NUMBERS, JSONISH)),
    "penalize_layout": (st.booleans(), JSONISH),
    "urial": (st.sampled_from([False, True, "help", {"variant": "safe"}]), JSONISH),
    "reward": (st.sampled_from([None, {"type": "keywords", "words": ["sun"]}, "concise"]), reward_specs(depth=2)),
}


@st.composite
def strategy_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A strategy name (mostly a registered one) and parameters: mostly plausible values, some junk."""
    name = draw(st.sampled_from([*list_strategies(), "nope", "GREEDY"]))
    fields = list(get_strategy(name).Params.model_fields) if name in list_strategies() else []
    params: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(fields + ["bogus", "top_k", "temperature"]), max_size=4, unique=True)):
        junk = key == "bogus" or draw(st.integers(0, 2)) == 0
        params[key] = draw(st.one_of(NUMBERS, SCALARS, JSONISH) if junk else PLAUSIBLE)
    for key in draw(st.lists(st.sampled_from(sorted(REQUEST_KEYS)), max_size=3, unique=True)):
        plausible, junk = REQUEST_KEYS[key]
        params[key] = draw(junk if draw(st.integers(0, 2)) == 0 else plausible)
    if "reward" not in params and draw(st.integers(0, 3)):
        params["reward"] = {"type": "keywords", "words": ["sun"]}
    return name, params


@FUZZ
@given(strategy_calls())
def test_strategy_parameters_are_valid_or_config_errors(call: tuple[str, dict[str, Any]]) -> None:
    strategy, params = call
    request = _only_config_errors(Request.build, None, "hi", strategy=strategy, **params)
    if request is not None:
        assert request.strategy_name == strategy


@pytest.mark.parametrize("strategy", list_strategies())
@FUZZ
@given(data=st.data())
def test_every_registered_strategy_rejects_bad_values_of_its_own_parameters(strategy: str, data: st.DataObject) -> None:
    fields = list(get_strategy(strategy).Params.model_fields)
    params = {key: data.draw(st.one_of(NUMBERS, SCALARS, JSONISH), label=key)
              for key in data.draw(st.lists(st.sampled_from(fields or ["bogus"]), max_size=3, unique=True))}
    _only_config_errors(Request.build, None, "hi", strategy=strategy, reward={"type": "keywords", "words": ["a"]},
                        **params)


# ---------------------------------------------------------------------------------------- tool schemas

SCHEMA_KEYWORDS = ["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
                   "const", "minLength", "maxLength", "$ref", "allOf", "anyOf", "oneOf", "minimum", "maximum",
                   "exclusiveMinimum", "exclusiveMaximum", "description", "title", "default", "$defs", "pattern",
                   "format", "not", "if"]
TYPES = st.one_of(st.sampled_from(["object", "string", "integer", "number", "boolean", "null", "array", "date"]),
                  st.lists(st.sampled_from(["string", "null", "integer"]), max_size=3), SCALARS)


@st.composite
def schemas(draw: st.DrawFn, depth: int = 0) -> Any:
    if depth > 3 or draw(st.integers(0, 7)) == 0:
        return draw(st.one_of(st.booleans(), JSONISH))
    schema: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SCHEMA_KEYWORDS), max_size=4, unique=True)):
        if key == "type":
            schema[key] = draw(TYPES)
        elif key in ("properties", "$defs"):
            schema[key] = draw(st.one_of(st.dictionaries(st.text(max_size=5), schemas(depth + 1), max_size=3), JSONISH))
        elif key in ("items", "additionalProperties"):
            schema[key] = draw(st.one_of(schemas(depth + 1), JSONISH))
        elif key in ("allOf", "anyOf", "oneOf"):
            schema[key] = draw(st.one_of(st.lists(schemas(depth + 1), max_size=3), JSONISH))
        elif key == "required":
            schema[key] = draw(st.one_of(st.lists(st.text(max_size=5), max_size=3), JSONISH))
        elif key == "$ref":
            schema[key] = draw(st.one_of(st.sampled_from(["#/$defs/a", "#/definitions/b", "http://x", "#"]), JSONISH))
        else:
            schema[key] = draw(st.one_of(NUMBERS, SCALARS, JSONISH))
    return schema


@FUZZ
@given(schemas())
def test_tool_parameter_schemas_are_checked_or_config_errors(parameters: Any) -> None:
    tool = {"type": "function",
            "function": {"name": "get_weather", "description": "Weather.", "parameters": parameters}}
    _only_config_errors(check_tool_schemas, [tool])


@st.composite
def tool_lists(draw: st.DrawFn) -> Any:
    function = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["get_weather", "search", "a.b-c", "", "bad name", "x" * 70]), JSONISH)},
        optional={"description": st.one_of(st.text(max_size=10), JSONISH),
                  "parameters": st.one_of(schemas(), st.just({"type": "object"}))})
    tool = st.one_of(st.fixed_dictionaries({"type": st.one_of(st.just("function"), JSONISH), "function": function}),
                     function, JSONISH)
    return draw(st.one_of(st.lists(tool, max_size=3), JSONISH))


@FUZZ
@given(tool_lists(), st.one_of(st.sampled_from(["auto", "none", "any", "required", "get_weather", "nope"]),
                               st.booleans(), JSONISH))
def test_forced_tool_calls_are_prepared_or_config_errors(tools: Any, choice: Any) -> None:
    resolved = _only_config_errors(resolve_tool_choice, choice, tools)
    _only_config_errors(forced_call_params, tools, ToolChoice("required", ("get_weather", "search")))
    if resolved is not None and resolved.forced:
        params = _only_config_errors(forced_call_params, tools, resolved)
        if params is not None:
            assert [f["function"]["name"] for f in params["functions"]] == [
                t["function"]["name"] for t in normalize_tools(tools) if t["function"]["name"] in resolved.names]
            _only_config_errors(Request.build, None, "hi", strategy="tool_call", **params)


# Schemas the forced-call decoder cannot honour (found by the fuzzers above): each is a ConfigError before any
# model work.
UNENFORCEABLE = {
    "unhashable type": {"type": {"kind": "string"}},
    "unhashable type in a list": {"type": ["string", ["null"]]},
    "NaN bound": {"type": "number", "minimum": math.nan},
    "infinite bound": {"type": "number", "maximum": math.inf},
    "empty bounds": {"type": "integer", "minimum": 5, "maximum": 2},
    "enum that is not a list": {"enum": 5},
    "empty enum": {"enum": []},
    "minLength above maxLength": {"type": "string", "minLength": 5, "maxLength": 2},
    "minItems above maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1},
    "dangling $ref": {"$ref": "#/$defs/missing"},
}


@pytest.mark.parametrize("schema", list(UNENFORCEABLE.values()), ids=list(UNENFORCEABLE))
def test_schemas_the_decoder_cannot_honour_are_config_errors(schema: dict[str, Any]) -> None:
    parameters = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    with pytest.raises(ConfigError, match=r"tools\[0\]\.parameters\.properties\.x"):
        check_tool_schemas([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
