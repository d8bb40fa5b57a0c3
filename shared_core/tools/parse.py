"""Parsing tool calls out of a model's answer, and how much of a partial answer is safe to stream.

``<tool_call>`` blocks (closed or cut off), or an answer that is nothing but a JSON call object, become
:class:`ToolCall` s (name, arguments dict, id); the rest is the plain text.

Example:
    >>> parsed = parse_tool_calls('Sure.<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>')
    >>> parsed.text, parsed.tool_calls[0].name, parsed.tool_calls[0].arguments
    ('Sure.', 'add', {'a': 2})
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_core.tools.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, new_call_id

__all__ = ["ParsedOutput", "ToolCall", "parse_tool_calls", "streamable_length"]


@dataclass
class ToolCall:
    """One parsed call: the tool's name, its arguments, and an id to match the tool's result."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=new_call_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass
class ParsedOutput:
    """A model's answer split into plain ``text`` and ``tool_calls``; ``errors`` lists call blocks that
    could not be read (their text is left out of ``text``)."""

    text: str
    tool_calls: list[ToolCall]
    errors: list[str] = field(default_factory=list)


_BLOCK_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.DOTALL)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _strip_fence(text: str) -> str:
    match = _FENCE_RE.match(text.strip())
    return match.group(1) if match else text.strip()


def _call_from_obj(obj: Any, names: set[str] | None) -> ToolCall | None:
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("function"), Mapping):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or (names is not None and name not in names):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, Mapping):
        return None
    return ToolCall(name=name, arguments=dict(arguments))


def _first_json(text: str) -> Any:
    text = _strip_fence(text)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON object found")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


def parse_tool_calls(text: str, tool_names: Sequence[str] | None = None) -> ParsedOutput:
    """Splits a model's output into text and tool calls.

    Reads ``<tool_call>`` blocks (a missing closing tag at the end is tolerated); without any, an answer
    that is only a JSON call object (or a list of them, optionally in a code fence) counts as calls. When
    ``tool_names`` is given, only calls to those tools are accepted.
    """
    names = set(tool_names) if tool_names is not None else None
    calls: list[ToolCall] = []
    errors: list[str] = []
    if TOOL_CALL_OPEN in text:
        for match in _BLOCK_RE.finditer(text):
            body = match.group(1)
            try:
                obj = _first_json(body)
            except ValueError as exc:
                errors.append(f"unreadable tool call {body.strip()[:80]!r}: {exc}")
                continue
            objs = obj if isinstance(obj, list) else [obj]
            for item in objs:
                call = _call_from_obj(item, names)
                if call is None:
                    errors.append(f"not a call to a known tool: {json.dumps(item, ensure_ascii=False)[:80]}")
                else:
                    calls.append(call)
        rest = _BLOCK_RE.sub("", text).strip()
        return ParsedOutput(rest, calls, errors)
    stripped = _strip_fence(text)
    if stripped.startswith(("{", "[")):
        try:
            obj = json.loads(stripped)
        except ValueError:
            return ParsedOutput(text, [], [])
        objs = obj if isinstance(obj, list) else [obj]
        parsed = [_call_from_obj(item, names) for item in objs]
        if objs and all(p is not None for p in parsed):
            if names is None and not all(isinstance(o, Mapping) and ("arguments" in o or "parameters" in o)
                                         for o in objs):
                return ParsedOutput(text, [], [])
            return ParsedOutput("", [p for p in parsed if p is not None], [])
    return ParsedOutput(text, [], [])


def streamable_length(text: str) -> int:
    """How much of a partial answer can be streamed as plain text while a tool call may still follow.

    Stops before ``<tool_call>`` (or a tail that could be its beginning), and shows nothing while the
    answer so far could be a bare JSON call (it starts with ``{``, ``[`` or a code fence).
    """
    stripped = text.lstrip()
    if stripped.startswith(("{", "[", "`")):
        return 0
    cut = text.find(TOOL_CALL_OPEN)
    if cut >= 0:
        return cut
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return len(text) - k
    return len(text)
