"""Rendering tools for a local model: OpenAI-format tool dicts, the tool choice, and the prompt.

When the tokenizer's chat template reads a ``tools`` variable, the tools and the tool-call history go
through the template unchanged. Otherwise (SmolLM2's template has no tool support) the tools are
described in a system prompt (:data:`TOOL_SYSTEM_PROMPT`, the widely used "Hermes" format): the model is
asked to answer with ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; earlier calls are
written back in that form and tool results are sent as ``<tool_response>`` user turns, which every
template accepts.

Chat messages are plain dicts:

- ``{"role": "assistant", "content": str | None, "tool_calls": [{"id", "name", "arguments"}]}``
  (the OpenAI nested form ``{"id", "type": "function", "function": {"name", "arguments"}}`` is accepted too;
  ``arguments`` may be a dict or a JSON string);
- ``{"role": "tool", "content": str, "tool_call_id": str, "name": str}`` for a tool's result.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared_core.errors import ConfigError

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_SYSTEM_PROMPT",
    "PreparedPrompt",
    "ToolChoice",
    "format_tool_call",
    "new_call_id",
    "normalize_tools",
    "prepare_tool_prompt",
    "resolve_tool_choice",
    "template_supports_tools",
    "tool_system_prompt",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

TOOL_SYSTEM_PROMPT = """You are a function calling AI model. You may call one or more functions to help with the user's request. Here are the available functions, as JSON schemas:
<tools>
{tools}
</tools>
To call a function, answer with a JSON object holding its name and arguments inside <tool_call></tool_call> tags, like this:
<tool_call>
{{"name": "function_name", "arguments": {{"argument": "value"}}}}
</tool_call>
Results come back inside <tool_response></tool_response> tags. If no function is needed, answer normally."""
"""The fallback system prompt for chat templates without tool support; ``{tools}`` gets one JSON line per tool."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# --------------------------------------------------------------------------- tools and tool choice


def normalize_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Checks OpenAI-format tool dicts and fills defaults; raises ConfigError naming the bad tool.

    Accepts ``{"type": "function", "function": {...}}`` or the bare function dict ``{"name", "parameters"}``.
    ``parameters`` defaults to an empty object schema. A name given twice keeps its first definition.
    """
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ConfigError("tools", f"must be a list of tool dicts, got {type(tools).__name__}")
    normalized: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ConfigError(where, f"must be an OpenAI-format tool dict, got {type(tool).__name__}")
        function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(function, Mapping):
            raise ConfigError(where, f"only tools of type 'function' are supported, got type {tool.get('type')!r}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}.name", f"must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
        if name in seen:  # the same tool given twice (e.g. a pydantic model and its schema): keep the first
            continue
        seen.add(name)
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            raise ConfigError(f"{where}.parameters", "must be a JSON schema of type 'object'")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise ConfigError(f"{where}.description", f"must be a string, got {type(description).__name__}")
        normalized.append({"type": "function", "function": {
            "name": name, "description": description, "parameters": dict(parameters),
        }})
    return normalized


@dataclass(frozen=True)
class ToolChoice:
    """What the caller asked for: ``"auto"`` (the model decides), ``"none"`` (no tools), or ``"required"``
    (a call to one of ``names`` is forced)."""

    mode: Literal["auto", "none", "required"]
    names: tuple[str, ...] = ()

    @property
    def forced(self) -> bool:
        return self.mode == "required"


def resolve_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> ToolChoice:
    """Reads the ``tool_choice`` spellings of LangChain, LlamaIndex and OpenAI.

    ``None``/``"auto"`` -> auto; ``"none"`` -> none; ``"any"``/``"required"``/``True`` -> a forced call to
    any tool; a tool name, ``{"type": "function", "function": {"name": ...}}`` or ``{"name": ...}`` -> a
    forced call to that tool. Raises ConfigError for an unknown name or spelling.
    """
    names = tuple(t["function"]["name"] for t in normalize_tools(tools))
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return ToolChoice("auto" if names else "none", names)
    if tool_choice == "none":
        return ToolChoice("none")
    if not names:
        raise ConfigError("tool_choice", f"{tool_choice!r} needs at least one tool, but no tools were given")
    if tool_choice in ("any", "required") or tool_choice is True:
        return ToolChoice("required", names)
    name = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
    if isinstance(name, str):
        if name not in names:
            raise ConfigError("tool_choice", f"no tool named {name!r}; the tools are: {', '.join(names)}")
        return ToolChoice("required", (name,))
    raise ConfigError(
        "tool_choice", f"must be 'auto', 'none', 'any', 'required', a tool name or a tool dict, got {tool_choice!r}"
    )


# --------------------------------------------------------------------------- rendering


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads a ``tools`` variable (so tools can go through it)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    if not isinstance(template, str) or "tools" not in template:
        return False
    try:
        from jinja2 import Environment, meta

        return "tools" in meta.find_undeclared_variables(Environment().parse(template))
    except Exception:  # a template jinja2 cannot parse: tools in the text is the best evidence
        return True


def tool_system_prompt(tools: Sequence[Mapping[str, Any]], choice: ToolChoice | None = None) -> str:
    """The fallback system prompt describing ``tools`` (and, for a forced call, which tool to call)."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in normalize_tools(tools))
    prompt = TOOL_SYSTEM_PROMPT.format(tools=lines)
    if choice is not None and choice.forced:
        if len(choice.names) == 1:
            prompt += f"\nNow call the function {choice.names[0]!r}."
        else:
            prompt += "\nNow call one of the functions."
    return prompt


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The text form of one call in the fallback format: ``<tool_call>\\n{json}\\n</tool_call>``."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _call_parts(call: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any], str | None]:
    function = call.get("function") if isinstance(call.get("function"), Mapping) else call
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name", f"a tool call needs a name, got {name!r}")
    arguments = function.get("arguments", function.get("args", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"{where}.arguments", f"not valid JSON: {exc}") from exc
    if not isinstance(arguments, Mapping):
        raise ConfigError(f"{where}.arguments", f"must be a JSON object, got {type(arguments).__name__}")
    return name, dict(arguments), call.get("id")


def _plain_call(name: str, arguments: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    return f"{name}({args})"


@dataclass
class PreparedPrompt:
    """Messages ready for ``LocalModel.render`` / ``generate``, and the tools to pass as ``tools=``
    (``None`` when the tools were written into the system prompt instead)."""

    messages: list[dict[str, Any]]
    template_tools: list[dict[str, Any]] | None
    uses_template: bool


def prepare_tool_prompt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    tokenizer: Any,
    tool_choice: ToolChoice | None = None,
) -> PreparedPrompt:
    """Renders tools and tool-call history for ``tokenizer``'s chat template.

    With a tools-aware template the tools are returned for ``tools=`` and calls keep the nested OpenAI
    form templates expect. Otherwise the fallback system prompt is merged into the first system message,
    calls are written as ``<tool_call>`` text, and tool results become ``<tool_response>`` user turns.
    ``tool_choice="none"`` (or no tools) renders no tools; the history is then written in plain words
    ("I called add(a=1, b=2).", "The tool add answered: 3"), which small models turn into an answer
    instead of echoing a format they were not shown.
    """
    normalized = normalize_tools(tools)
    choice = tool_choice or resolve_tool_choice(None, normalized)
    show_tools = bool(normalized) and choice.mode != "none"
    native = template_supports_tools(tokenizer)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role == "assistant" and message.get("tool_calls"):
            calls = [_call_parts(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(message["tool_calls"])]
            content = message.get("content") or ""
            if native:
                out.append({"role": "assistant", "content": content, "tool_calls": [
                    {"id": cid or new_call_id(), "type": "function", "function": {"name": n, "arguments": a}}
                    for n, a, cid in calls
                ]})
            else:
                if show_tools:
                    text = "\n".join(format_tool_call(n, a) for n, a, _ in calls)
                else:  # no tool prompt to match: plain words read better to a small model
                    text = "\n".join(f"I called {_plain_call(n, a)}." for n, a, _ in calls)
                out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif role == "tool":
            content = message.get("content")
            content = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            if native:
                entry = {"role": "tool", "content": content}
                for key in ("tool_call_id", "name"):
                    if message.get(key):
                        entry[key] = message[key]
                out.append(entry)
            elif show_tools:
                body = json.dumps({"name": message.get("name") or "", "content": content}, ensure_ascii=False)
                block = f"<tool_response>\n{body}\n</tool_response>"
                if out and out[-1].get("_tool_response"):
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block, "_tool_response": True})
            else:
                name = message.get("name")
                block = f"The tool {name} answered: {content}" if name else f"The tool answered: {content}"
                if out and out[-1].get("_tool_response"):
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block, "_tool_response": True})
        else:
            out.append(dict(message))
    for entry in out:
        entry.pop("_tool_response", None)
    if not show_tools:
        return PreparedPrompt(out, None, native)
    if native:
        return PreparedPrompt(out, normalized, True)
    system = tool_system_prompt(normalized, choice)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{system}".strip()}
    else:
        out.insert(0, {"role": "system", "content": system})
    return PreparedPrompt(out, None, False)


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` plus 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]
