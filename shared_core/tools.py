"""Tool calling for local models: render tools into the prompt, parse calls out of the output, force a call.

Framework-free (no LangChain or LlamaIndex imports); both adapters build on it. Tools are OpenAI-format
dicts (``{"type": "function", "function": {"name", "description", "parameters"}}``) and chat messages are
plain dicts:

- ``{"role": "assistant", "content": str | None, "tool_calls": [{"id", "name", "arguments"}]}``
  (the OpenAI nested form ``{"id", "type": "function", "function": {"name", "arguments"}}`` is accepted too;
  ``arguments`` may be a dict or a JSON string);
- ``{"role": "tool", "content": str, "tool_call_id": str, "name": str}`` for a tool's result.

Three jobs:

1. **Rendering** (:func:`prepare_tool_prompt`). When the tokenizer's chat template reads a ``tools``
   variable, the tools and the tool-call history go through the template unchanged. Otherwise (SmolLM2's
   template has no tool support) the tools are described in a system prompt (:data:`TOOL_SYSTEM_PROMPT`,
   the widely used "Hermes" format): the model is asked to answer with
   ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; earlier calls are written back in that
   form and tool results are sent as ``<tool_response>`` user turns, which every template accepts.
2. **Parsing** (:func:`parse_tool_calls`). ``<tool_call>`` blocks (closed or cut off), or an answer that
   is nothing but a JSON call object, become :class:`ToolCall` s (name, arguments dict, id); the rest is
   the plain text. :func:`streamable_length` tells a streaming adapter how much text is safe to show
   before a call might start.
3. **Forcing a call** (:class:`ToolCallStrategy`, registered as the ``"tool_call"`` decoding strategy).
   The output is decoded so that it is a valid call for one of the given tools: the JSON skeleton
   (braces, keys, commas) is written by the decoder, and the model only picks among allowed tokens for
   the values (a tool name among the allowed ones, string contents without quotes or control characters,
   digits for numbers, ``true``/``false``, enum members). Each forced stretch of text costs one forward
   pass, each model-chosen token one, on the job's KV cache. The token budget is planned: the smallest
   valid call is reserved first and free values (longer strings, more digits, optional properties, extra
   array items) only spend what is left, so a call is never cut off mid-JSON (a very tight budget may cut
   the closing tag, which :func:`parse_tool_calls` accepts).

Why not a general grammar library: in a trial here, lm-format-enforcer's pure-Python allowed-token
computation over the 49k-token vocabulary dominated decoding time on CPU and let the model pad the JSON
with whitespace, and xgrammar pulls in triton; walking the schema needs neither, and the model is only
asked where it has a real choice.

Supported JSON schema subset for forced calls: ``object`` (``properties``, ``required``; optional
properties are chosen by the model, properties without a schema become strings; an object without
``properties`` is ``{}``), ``string`` (``enum``, ``const``, ``maxLength``; other formats and patterns are
not enforced), ``integer``, ``number``, ``boolean``, ``null``, ``array`` (``items``, ``minItems``,
``maxItems``; at least one item unless ``maxItems`` is 0), ``enum``/``const`` of any JSON values, local
``$ref`` s, ``allOf`` with one member, and ``anyOf``/``oneOf``/type lists, where the first non-null
branch is used. A value with no type is decoded as a string.

Example:
    >>> tools = [{"type": "function", "function": {"name": "add", "description": "Adds.",
    ...           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
    >>> parsed = parse_tool_calls('Sure.<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>')
    >>> parsed.text, parsed.tool_calls[0].name, parsed.tool_calls[0].arguments
    ('Sure.', 'add', {'a': 2})
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.errors import ConfigError

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_SYSTEM_PROMPT",
    "ParsedOutput",
    "PreparedPrompt",
    "ToolCall",
    "ToolCallParams",
    "ToolCallStrategy",
    "ToolChoice",
    "format_tool_call",
    "forced_call_params",
    "new_call_id",
    "normalize_tools",
    "parse_tool_calls",
    "prepare_tool_prompt",
    "resolve_tool_choice",
    "streamable_length",
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


# --------------------------------------------------------------------------- parsing


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` plus 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


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


# --------------------------------------------------------------------------- forced calls


class ToolCallParams(BaseModel):
    """Parameters of the ``"tool_call"`` strategy.

    ``functions`` are the tools a call may name (OpenAI format, or bare ``{"name", "parameters"}``);
    the call is written as ``open_text + {"name": ..., "arguments": {...}} + close_text``.
    """

    model_config = ConfigDict(extra="forbid")

    functions: list[dict[str, Any]] = Field(min_length=1, description="the tools the forced call may name")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy choice among allowed tokens")
    max_string_tokens: int = Field(48, gt=0, description="the most tokens one string value may take")
    max_array_items: int = Field(8, gt=0, description="the most items an array without maxItems gets")
    reserve_tokens: int = Field(4, ge=0, description="tokens kept back when budgeting free values (estimates of"
                                " forced text may be off by a few)")
    open_text: str = TOOL_CALL_OPEN + "\n"
    close_text: str = "\n" + TOOL_CALL_CLOSE


def forced_call_params(tools: Sequence[Mapping[str, Any]], choice: ToolChoice, **overrides: Any) -> dict[str, Any]:
    """Strategy params for a forced call among ``choice.names`` (pass to ``generate(strategy="tool_call")``)."""
    allowed = set(choice.names)
    functions = [t for t in normalize_tools(tools) if t["function"]["name"] in allowed]
    if not functions:
        raise ConfigError("tool_choice", "a forced call needs at least one of the given tools")
    return {"functions": functions, **overrides}


_INT_FULL = re.compile(r"-?(?:0|[1-9]\d*)")
_INT_PREFIX = re.compile(r"-?(?:0|[1-9]\d*)?")
_NUM_FULL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUM_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*|\.\d+[eE][+-]?\d*|[eE][+-]?\d*)?)?")
_NUMERIC_CHARS = re.compile(r"[0-9eE.+\-]+")
_MAX_NUMBER_CHARS = 20
_MAX_DEPTH = 12


@dataclass
class _Vocab:
    """Per-tokenizer token classes the schema walker masks logits with (built once per model)."""

    string_body: Any  # bool tensor (vocab,): tokens allowed inside a JSON string
    quote_start: Any  # bool tensor (vocab,): tokens that start with '"' (end a string)
    number_end: Any  # bool tensor (vocab,): tokens that start with , } ] or whitespace (end a number)
    numeric: list[tuple[int, str]]  # tokens made only of number characters
    lengths: Any  # long tensor (vocab,): characters in each token's text

    def __post_init__(self) -> None:
        self.string_any = self.string_body | self.quote_start  # body tokens or the closing quote


def _build_vocab(lm: Any) -> _Vocab:
    import torch

    tokenizer = lm.tokenizer
    size = lm.vocab_size
    n = min(len(tokenizer), size)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    body = torch.zeros(size, dtype=torch.bool)
    quote = torch.zeros(size, dtype=torch.bool)
    number_end = torch.zeros(size, dtype=torch.bool)
    numeric: list[tuple[int, str]] = []
    lengths = torch.zeros(size, dtype=torch.long)
    for i, text in enumerate(texts):
        lengths[i] = len(text)
        if i in special or not text:
            continue
        if text[0] == '"':
            quote[i] = True
        elif '"' not in text and "\\" not in text and all(ord(c) >= 0x20 and c != "\x7f" for c in text):
            body[i] = True
        if text[0] in ",}] \n\t":
            number_end[i] = True
        if _NUMERIC_CHARS.fullmatch(text):
            numeric.append((i, text))
    return _Vocab(body.to(lm.device), quote.to(lm.device), number_end.to(lm.device), numeric, lengths.to(lm.device))


def _vocab_for(lm: Any) -> _Vocab:
    from shared_core.models import cached

    return cached(("tool_call_vocab", lm.source, str(lm.device), len(lm.tokenizer)), lambda: _build_vocab(lm))


class _Walker:
    """Decodes one JSON value for a schema: forced text is batched into one forward, choices are masked."""

    def __init__(self, job: Any, params: ToolCallParams) -> None:
        self.job = job
        self.params = params
        self.lm = job.model
        self.vocab = _vocab_for(self.lm)
        self.pending = ""
        self.root: Mapping[str, Any] = {}
        self.budget = 0  # tokens free values may still add beyond the smallest valid call
        needed = max(self._call_cost(t) for t in normalize_tools(params.functions))
        if needed > job.max_new_tokens:
            raise ConfigError(
                "max_new_tokens",
                f"a forced tool call needs at least {needed} tokens here, "
                f"but only {job.max_new_tokens} are allowed; raise the token budget",
            )
        self.runner = job.runner()
        self.logits, self.cache = job.prefill()

    # -- model interaction ------------------------------------------------------------------------

    def force(self, text: str) -> None:
        """Queues text the decoder writes itself (sent to the model at the next choice)."""
        self.pending += text

    def _feed(self, ids: Sequence[int]) -> None:
        import torch

        tensor = torch.tensor([list(ids)], dtype=torch.long, device=self.runner.device)
        self.logits = self.runner.step(self.cache, tensor)[0]

    def flush(self) -> Iterator[Sequence[int]]:
        if self.pending:
            ids = self.lm.encode(self.pending)
            self.pending = ""
            if ids:
                yield tuple(ids)
                self._feed(ids)

    def pick(self, allowed: Any) -> Iterator[Sequence[int]]:
        """Flushes forced text, then returns the model's choice among ``allowed`` (a bool mask), or -1 when
        nothing is allowed; the token is not committed."""
        yield from self.flush()
        import torch

        from shared_core.decoding.sampling import SamplingParams, choose_tokens

        scores = torch.where(allowed, self.logits.float(), float("-inf"))
        if self.params.temperature == 0.0:
            token = int(scores.argmax())
        else:
            sampling = SamplingParams(temperature=self.params.temperature)
            token = int(choose_tokens(scores.unsqueeze(0), sampling, self.job.generator)[0])
        return token if bool(allowed[token]) else -1

    def commit(self, token: int) -> Iterator[Sequence[int]]:
        yield (token,)
        self._feed([token])

    def _mask(self, ids: Sequence[int]) -> Any:
        import torch

        mask = torch.zeros(self.logits.shape[-1], dtype=torch.bool, device=self.logits.device)
        mask[list(ids)] = True
        return mask

    def choose(self, options: Sequence[str]) -> Iterator[Sequence[int]]:
        """Lets the model pick one of ``options`` token by token (a trie over their tokenizations)."""
        if len(options) == 1:
            self.force(options[0])
            return 0
        seqs = [self.lm.encode(o) for o in options]
        alive = list(range(len(options)))
        pos = 0
        while True:
            done = [i for i in alive if len(seqs[i]) <= pos]
            if done:
                return done[0]
            if len(alive) == 1:
                rest = seqs[alive[0]][pos:]
                yield from self.flush()
                yield tuple(rest)
                self._feed(rest)
                return alive[0]
            nexts = {seqs[i][pos] for i in alive}
            token = next(iter(nexts)) if len(nexts) == 1 else (yield from self.pick(self._mask(sorted(nexts))))
            if len(nexts) == 1:
                yield from self.flush()
            yield from self.commit(token)
            alive = [i for i in alive if seqs[i][pos] == token]
            pos += 1

    # -- budget -----------------------------------------------------------------------------------

    def _tokens(self, text: str) -> int:
        return len(self.lm.encode(text)) if text else 0

    def smallest(self, schema: Any, depth: int = 0) -> Any:
        """The longest-to-write of the smallest values the walker may produce for ``schema``.

        Used to budget tokens: required properties, the minimum number of array items, one-character
        strings, one-digit numbers, ``false`` for booleans, the longest enum member.
        """
        schema = self.resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return max(schema["enum"], key=lambda v: len(json.dumps(v, ensure_ascii=False)))
        kind = schema.get("type") or ("object" if "properties" in schema else "string")
        if kind == "object":
            properties = schema.get("properties") or {}
            return {k: self.smallest(v, depth + 1) for k, v in properties.items()
                    if k in set(schema.get("required") or [])}
        if kind == "array":
            n = 0 if schema.get("maxItems") == 0 else max(int(schema.get("minItems", 1) or 0), 1)
            return [self.smallest(schema.get("items", {}), depth + 1) for _ in range(n)]
        if kind in ("integer", "number"):
            return 0
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        if schema.get("maxLength") == 0:
            return ""
        return "x" * max(1, int(schema.get("minLength", 1) or 0))

    def _cost(self, text: str, schema: Any, depth: int = 0) -> int:
        return self._tokens(text + json.dumps(self.smallest(schema, depth), ensure_ascii=False))

    def _call_cost(self, tool: Mapping[str, Any]) -> int:
        """Tokens of the smallest valid call to ``tool`` up to its JSON's last brace (the closing tag may
        be cut by the budget: the parser reads an unclosed ``<tool_call>`` block)."""
        self.root = tool["function"]["parameters"]
        body = json.dumps({"name": tool["function"]["name"], "arguments": self.smallest(self.root)},
                          ensure_ascii=False)
        return self._tokens(self.params.open_text + body)

    def spend(self, tokens: int) -> bool:
        """Takes ``tokens`` from the free budget; False (and nothing taken) when there are not enough."""
        if tokens > self.budget:
            return False
        self.budget -= tokens
        return True

    # -- schema -----------------------------------------------------------------------------------

    def resolve(self, schema: Any, depth: int) -> Mapping[str, Any]:
        if depth > _MAX_DEPTH:
            raise ConfigError("schema", f"nested deeper than {_MAX_DEPTH} levels (a recursive $ref?)")
        if not isinstance(schema, Mapping):
            return {}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target: Any = self.root
            if not ref.startswith("#/"):
                raise ConfigError("schema.$ref", f"only local references are supported, got {ref!r}")
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, Mapping) else None
            if target is None:
                raise ConfigError("schema.$ref", f"{ref!r} does not point into the schema")
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.resolve(merged, depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            return self.resolve({**all_of[0], **{k: v for k, v in schema.items() if k != "allOf"}}, depth + 1)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                chosen = next((b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")),
                              branches[0])
                rest = {k: v for k, v in schema.items() if k != key}
                return self.resolve({**rest, **chosen}, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"] or ["null"]
            return {**schema, "type": non_null[0]}
        return schema

    def value(self, schema: Any, depth: int = 0) -> Iterator[Sequence[int]]:
        schema = self.resolve(schema, depth)
        if "const" in schema:
            self.force(json.dumps(schema["const"], ensure_ascii=False))
            return
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            yield from self.choose([json.dumps(v, ensure_ascii=False) for v in schema["enum"]])
            return
        kind = schema.get("type")
        if kind is None and "properties" in schema:
            kind = "object"
        if kind == "object":
            yield from self.object(schema, depth)
        elif kind == "array":
            yield from self.array(schema, depth)
        elif kind == "integer":
            yield from self.number(integer=True)
        elif kind == "number":
            yield from self.number(integer=False)
        elif kind == "boolean":
            yield from self.choose(["true", "false"])
        elif kind == "null":
            self.force("null")
        else:
            yield from self.string(schema)

    def object(self, schema: Mapping[str, Any], depth: int) -> Iterator[Sequence[int]]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        keys = list(properties)
        self.force("{")
        first = True
        i = 0
        while i < len(keys):
            j = next((k for k in range(i, len(keys)) if keys[k] in required), None)
            candidates = keys[i: len(keys) if j is None else j + 1]
            sep = "" if first else ", "
            costs = {k: 0 if k in required else self._cost(f'{sep}"{k}": ', properties[k], depth + 1)
                     for k in candidates}
            candidates = [k for k in candidates if k in required or costs[k] <= self.budget]
            options = [f"{sep}{json.dumps(k, ensure_ascii=False)}" for k in candidates]
            if j is None:
                options.append("}")
            picked = yield from self.choose(options)
            if j is None and picked == len(options) - 1:
                return
            key = candidates[picked]
            self.spend(costs[key])
            self.force(": ")
            yield from self.value(properties[key], depth + 1)
            first = False
            i = keys.index(key) + 1
        self.force("}")

    def array(self, schema: Mapping[str, Any], depth: int) -> Iterator[Sequence[int]]:
        items = schema.get("items", {})
        min_items = int(schema.get("minItems", 1) or 0)
        max_items = int(schema.get("maxItems", self.params.max_array_items))
        self.force("[")
        count = 0
        while count < max_items:
            if count >= max(min_items, 1):
                if not self.spend(self._cost(", ", items, depth + 1)):
                    break
                if (yield from self.choose([", ", "]"])) == 1:
                    self.budget += self._cost(", ", items, depth + 1)
                    return
            elif count:
                self.force(", ")
            yield from self.value(items, depth + 1)
            count += 1
        self.force("]")

    def string(self, schema: Mapping[str, Any]) -> Iterator[Sequence[int]]:
        max_chars = schema.get("maxLength")
        min_chars = max(1, int(schema.get("minLength", 1) or 0)) if max_chars != 0 else 0
        self.force('"')
        text = ""
        tokens = 0
        while tokens < self.params.max_string_tokens and (tokens == 0 or self.budget > 0):
            if max_chars is not None and len(text) >= max_chars:
                break
            if max_chars is None:
                body, allowed = self.vocab.string_body, self.vocab.string_any
            else:
                body = self.vocab.string_body & (self.vocab.lengths <= max_chars - len(text))
                allowed = body | self.vocab.quote_start
            if len(text) < min_chars:
                allowed = body
            token = yield from self.pick(allowed)
            if token < 0 or bool(self.vocab.quote_start[token]):
                break
            piece = self.lm.decode([token])
            yield from self.commit(token)
            if tokens:
                self.budget -= 1  # the first token is part of the smallest call
            text += piece
            tokens += 1
        self.force('"')

    def number(self, *, integer: bool) -> Iterator[Sequence[int]]:
        full, prefix = (_INT_FULL, _INT_PREFIX) if integer else (_NUM_FULL, _NUM_PREFIX)
        text = ""
        while len(text) < _MAX_NUMBER_CHARS and (not text or self.budget > 0):
            ids = [i for i, t in self.vocab.numeric if len(text + t) <= _MAX_NUMBER_CHARS
                   and prefix.fullmatch(text + t)]
            if not ids:
                break
            allowed = self._mask(ids)
            if full.fullmatch(text):
                allowed = allowed | self.vocab.number_end
            token = yield from self.pick(allowed)
            if token < 0 or bool(self.vocab.number_end[token]):
                break
            yield from self.commit(token)
            if text:
                self.budget -= 1
            text += self.lm.decode([token])
        if not full.fullmatch(text):  # budget ran out mid-number: close it validly
            completion = "0" if not text or text.endswith(("-", ".", "e", "E", "+")) else ""
            if text.endswith("-") and not text[:-1]:
                completion = "0"
            self.force(completion)

    def tool_call(self, functions: Sequence[Mapping[str, Any]]) -> Iterator[Sequence[int]]:
        tools = normalize_tools(functions)
        self.force(self.params.open_text + '{"name": ')
        names = [t["function"]["name"] for t in tools]
        picked = yield from self.choose([json.dumps(n, ensure_ascii=False) for n in names])
        self.root = tools[picked]["function"]["parameters"]
        rest = self._tokens(', "arguments": ' + json.dumps(self.smallest(self.root), ensure_ascii=False) + "}")
        rest += self._tokens(self.params.close_text) + 1  # the closing tag and EOS, when the budget allows
        self.budget = self.job.remaining - self._tokens(self.pending) - rest - self.params.reserve_tokens
        self.force(', "arguments": ')
        yield from self.value(self.root, 0)
        self.force("}" + self.params.close_text)
        yield from self.flush()


@register_strategy
class ToolCallStrategy(Strategy):
    """Decodes a call to one of ``functions`` that is valid JSON for that tool's parameter schema.

    Example:
        >>> params = forced_call_params(tools, resolve_tool_choice("any", tools))      # doctest: +SKIP
        >>> generate("smollm2", messages, strategy="tool_call", **params).text       # doctest: +SKIP
    """

    name = "tool_call"
    Params = ToolCallParams
    description = "a forced tool call, decoded to fit the tool's JSON schema"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        walker = _Walker(job, job.params)
        yield from walker.tool_call(job.params.functions)
        if job.model.eos_token_ids:
            yield (min(job.model.eos_token_ids),)
