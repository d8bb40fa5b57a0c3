"""The JSON-schema subset a forced tool call is decoded to, checked before any model work.

The ``tool_call`` strategy writes JSON that is valid for a tool's parameter schema by walking the
schema. It understands:

* ``object`` with ``properties``, ``required`` and ``additionalProperties`` (no extra properties are
  ever written, which every value of ``additionalProperties`` allows); an object without
  ``properties`` is ``{}``;
* ``string`` with ``enum``, ``const``, ``minLength``, ``maxLength``;
* ``integer`` and ``number``, with ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``
  (a bounded number is written as a plain decimal, every digit chosen so the value can still land in
  bounds); ``boolean``, ``null``;
* ``array`` with ``items``, ``minItems``, ``maxItems``;
* ``enum`` / ``const`` of any JSON values, local ``$ref`` s into ``$defs`` / ``definitions``,
  ``allOf`` with one member, and ``anyOf`` / ``oneOf`` / a ``type`` list with one non-null branch
  (``Optional[X]``);
* annotations that constrain nothing: ``title``, ``description``, ``default``, ``examples`` and the like.

Everything else would be relaxed silently (a ``pattern`` or ``minimum`` the decoder cannot enforce, a
second ``anyOf`` branch it would never take), so it is a :class:`ConfigError` naming the keyword and
where it sits: ``tools[0].parameters.properties.age.minimum``. Tools that are only *offered* (the
model decides whether to call them, ``tool_choice="auto"``) are shown to the model in full and need
no check: only forced calls are decoded against the schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from shared_core.errors import ConfigError

__all__ = ["ANNOTATION_KEYWORDS", "SUPPORTED_KEYWORDS", "check_schema", "check_tool_schemas"]

#: Keywords that describe a value without constraining it.
ANNOTATION_KEYWORDS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "readOnly",
    "writeOnly", "deprecated", "nullable", "$defs", "definitions",
})

#: Keywords the decoder enforces (see the module docstring).
SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
    "minLength", "maxLength", "$ref", "allOf", "anyOf", "oneOf", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum",
})

_TYPES = frozenset({"object", "string", "integer", "number", "boolean", "null", "array"})
_MAX_DEPTH = 32


def _non_null(branches: Sequence[Any]) -> list[Any]:
    return [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null" and len(b) <= 2)]


def check_schema(schema: Any, where: str, *, depth: int = 0, root: Any = None) -> None:
    """Raises :class:`ConfigError` for the first keyword of ``schema`` the forced-call decoder would not enforce.

    ``root`` is the whole schema ``$ref`` s point into (``schema`` itself at the top).
    """
    root = schema if root is None else root
    if depth > _MAX_DEPTH:
        raise ConfigError(where, f"is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(schema, bool):
        return  # true: anything (decoded as a string); false is rejected where it matters
    if not isinstance(schema, Mapping):
        raise ConfigError(where, f"must be a JSON schema object, got {type(schema).__name__}")
    for key in schema:
        if key not in SUPPORTED_KEYWORDS and key not in ANNOTATION_KEYWORDS:
            raise ConfigError(f"{where}.{key}", (
                "is not supported for forced tool calls (the decoder could not enforce it); supported: "
                + ", ".join(sorted(SUPPORTED_KEYWORDS)) + ". Remove it from the tool's schema, or let the model "
                "choose whether to call the tool (tool_choice='auto')"))
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for one in kinds:
        if not isinstance(one, str) or one not in _TYPES:
            raise ConfigError(f"{where}.type", f"{one!r} is not a JSON schema type ({', '.join(sorted(_TYPES))})")
    if len([k for k in kinds if k != "null"]) > 1:
        raise ConfigError(f"{where}.type", f"a list of several non-null types {kinds} is not supported for forced "
                                           "tool calls; use one type (optionally with 'null')")
    ref = schema.get("$ref")
    if ref is not None:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ConfigError(f"{where}.$ref", f"only local references ('#/$defs/...') are supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, (Mapping, bool)):
            raise ConfigError(f"{where}.$ref", f"{ref!r} does not point to a schema inside the tool's parameters")
    enum = schema.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        raise ConfigError(f"{where}.enum", f"must be a non-empty list of values, got {enum!r}")
    all_of = schema.get("allOf")
    if all_of is not None:
        if not isinstance(all_of, list) or len(all_of) != 1:
            raise ConfigError(f"{where}.allOf", "only an allOf with exactly one member is supported for forced "
                                                "tool calls")
        check_schema(all_of[0], f"{where}.allOf[0]", depth=depth + 1, root=root)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if branches is None:
            continue
        if not isinstance(branches, list) or not branches:
            raise ConfigError(f"{where}.{key}", "must be a non-empty list of schemas")
        if len(_non_null(branches)) > 1:
            raise ConfigError(f"{where}.{key}", (
                f"has {len(_non_null(branches))} non-null branches; forced tool calls support one (Optional[X]). "
                "Split the tool, or let the model choose whether to call it (tool_choice='auto')"))
        for i, branch in enumerate(branches):
            check_schema(branch, f"{where}.{key}[{i}]", depth=depth + 1, root=root)
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, Mapping):
            raise ConfigError(f"{where}.properties", "must be an object of property schemas")
        for name, sub in properties.items():
            check_schema(sub, f"{where}.properties.{name}", depth=depth + 1, root=root)
    required = schema.get("required")
    if required is not None and (not isinstance(required, list) or not all(isinstance(r, str) for r in required)):
        raise ConfigError(f"{where}.required", "must be a list of property names")
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        check_schema(extra, f"{where}.additionalProperties", depth=depth + 1, root=root)
    items = schema.get("items")
    if items is not None:
        if not isinstance(items, (Mapping, bool)):
            raise ConfigError(f"{where}.items", "must be one schema (tuple-style item lists are not supported)")
        check_schema(items, f"{where}.items", depth=depth + 1, root=root)
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        value = schema.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{where}.{key}", f"must be a non-negative integer, got {value!r}")
    for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
        if schema.get(low) is not None and schema.get(high) is not None and schema[low] > schema[high]:
            raise ConfigError(f"{where}.{low}", f"{low} ({schema[low]}) is above {high} ({schema[high]}): no value fits")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        value = schema.get(key)
        flag = key.startswith("exclusive") and isinstance(value, bool)  # draft 4 flags
        if value is not None and not flag and (isinstance(value, bool) or not isinstance(value, (int, float))
                                              or not math.isfinite(value)):
            raise ConfigError(f"{where}.{key}", f"must be a finite number, got {value!r}")
    _check_range(schema, where)
    for key in ("$defs", "definitions"):
        defs = schema.get(key)
        if isinstance(defs, Mapping):
            for name, sub in defs.items():
                check_schema(sub, f"{where}.{key}.{name}", depth=depth + 1, root=root)


def _check_range(schema: Mapping[str, Any], where: str) -> None:
    """A number's bounds must leave at least one value (an integer, for ``"integer"``)."""
    low = high = None
    low_open = high_open = False
    if isinstance(schema.get("minimum"), (int, float)) and not isinstance(schema.get("minimum"), bool):
        low = schema["minimum"]
    if isinstance(schema.get("maximum"), (int, float)) and not isinstance(schema.get("maximum"), bool):
        high = schema["maximum"]
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_low, bool):
        low_open = ex_low and low is not None
    elif isinstance(ex_low, (int, float)) and (low is None or ex_low >= low):
        low, low_open = ex_low, True
    if isinstance(ex_high, bool):
        high_open = ex_high and high is not None
    elif isinstance(ex_high, (int, float)) and (high is None or ex_high <= high):
        high, high_open = ex_high, True
    if low is None or high is None:
        return
    if schema.get("type") == "integer":
        first = math.floor(low) + 1 if low_open else math.ceil(low)
        last = math.ceil(high) - 1 if high_open else math.floor(high)
        empty = first > last
    else:
        empty = low > high or (low == high and (low_open or high_open))
    if empty:
        raise ConfigError(f"{where}.minimum", f"the bounds leave no value (from {low} to {high})")


def check_tool_schemas(tools: Sequence[Mapping[str, Any]]) -> None:
    """Checks every (normalized, OpenAI-format) tool's parameter schema; see :func:`check_schema`."""
    for i, tool in enumerate(tools):
        function = tool.get("function", tool)
        check_schema(function.get("parameters") or {}, f"tools[{i}].parameters")
