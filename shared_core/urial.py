"""URIAL: in-context alignment for base models and API-only models, as plain text.

URIAL ("The Unlocking Spell on Base LLMs", Lin et al.) aligns a model without touching its weights or
logits: the prompt holds a short instruction preamble and K=3 restyled query/answer examples, then the
user's query. Every turn uses the same layout, and each answer is fenced with triple backticks::

    # Instruction

    <format note>

    <preamble>

    # Query:
    ```<example query>```

    # Answer:
    ```
    <example answer>
    ```

    # Query:
    ```<the user's query>```

    # Answer:
    ```

The model continues after the last ``# Answer:`` fence; generation stops at the next ``# Query:``
(:data:`URIAL_STOP_STRINGS`) and :func:`parse_urial_answer` turns the continuation into a clean answer.

The prompt splits into a fixed *prefix* (instruction, preamble and examples, ending with a blank line)
and a per-call *suffix* (earlier conversation turns and the query, starting with ``# Query:``). Decoding
engines keep the prefix's KV cache once per model and reuse it, so ``prefix + suffix`` is exactly the
full prompt (:class:`UrialPrompt`). For chat APIs, :func:`urial_chat_messages` renders the same content
as a system message plus alternating user/assistant messages.

Two built-in variants, both K=3: ``"safe"`` (two helpful examples and one kind refusal of a harmful
request with a safe alternative) and ``"help"`` (three helpful examples). Users can pass their own
examples and preamble. This module is pure text: no model or tensor library is imported.

Example:
    >>> from shared_core.urial import build_urial_prompt, parse_urial_answer
    >>> prompt = build_urial_prompt("How do I boil an egg?")
    >>> prompt.endswith("# Answer:\\n```\\n")
    True
    >>> parse_urial_answer("Put it in boiling water for 8 minutes.\\n```\\n\\n# Query:")
    'Put it in boiling water for 8 minutes.'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, Union

from shared_core.errors import ConfigError

__all__ = [
    "ANSWER_END",
    "URIAL_STOP_STRINGS",
    "find_answer_end",
    "VARIANTS",
    "FORMAT_NOTE",
    "ExampleLike",
    "Message",
    "UrialExample",
    "UrialPrompt",
    "UrialVariant",
    "build_urial_prompt",
    "check_fits",
    "default_examples",
    "default_preamble",
    "parse_urial_answer",
    "preamble_text",
    "query_suffix",
    "urial_chat_messages",
    "urial_prompt",
]

UrialVariant = Literal["safe", "help"]
VARIANTS: tuple[str, ...] = ("safe", "help")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

FENCE = "```"
QUERY_HEADER = "# Query:"
ANSWER_HEADER = "# Answer:"

#: How an answer ends in the format: its closing fence, a blank line, the next query's header.
ANSWER_END = f"\n{FENCE}\n\n{QUERY_HEADER}"

#: Stop strings for a generator continuing a URIAL prompt. They are matched at the start of a line
#: (``"\n# Query:"``, not ``"# Query"``), so a code comment such as ``# Query the table`` inside an
#: answer does not end generation. The first one ends the text *before* the closing fence in the usual
#: case (an engine keeps the text before the earliest match and, when streaming, holds back text that
#: may start a stop string), so neither the final nor the streamed text shows the fence.
#: ``"\n# Answer:"`` catches a model that skips the next query header.
URIAL_STOP_STRINGS: tuple[str, ...] = (
    ANSWER_END,
    f"\n{QUERY_HEADER}",
    f"\n{ANSWER_HEADER}",
)

#: The template's own description of the layout; it precedes the (replaceable) preamble.
FORMAT_NOTE = (
    "Below are conversations between a user and an AI assistant (you). Each user query comes after "
    '"# Query:" and each of your answers after "# Answer:"; both are wrapped in triple backticks (```).'
)

# A turn header at the start of a line: "# Query:", "# Answer:", or the header without its colon.
_HEADER_LINE = re.compile(r"#[ \t]*(?:Query|Answer)[ \t]*(?::|$)")
_ANSWER_HEADER_LINE = re.compile(r"#[ \t]*Answer[ \t]*(?::|$)")

# Messages are plain dicts: {"role": "system" | "user" | "assistant", "content": str}.
Message = Mapping[str, Any]


@dataclass(frozen=True)
class UrialExample:
    """One in-context example: a query and the restyled answer the model should imitate.

    Both texts are stored with newlines normalised to ``\\n`` and surrounding whitespace removed, so
    prompts tokenize the same way whatever the source of the text.

    Raises:
        ConfigError: a field is not a non-empty string, or contains a ``# Query:`` / ``# Answer:``
            line (those lines separate URIAL turns, so the model would read the example as two turns).
    """

    query: str
    answer: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "query", _check_example_text(self.query, "query"))
        object.__setattr__(self, "answer", _check_example_text(self.answer, "answer"))


# What users may pass as an example: an UrialExample, {"query": ..., "answer": ...}, or (query, answer).
ExampleLike = Union[UrialExample, Mapping[str, Any], tuple[str, str]]


@dataclass(frozen=True)
class UrialPrompt:
    """A URIAL text prompt split where a decoding engine can cache it.

    Attributes:
        prefix: the instruction, preamble (plus any system message) and the K examples. It ends with a
            blank line (``"\\n\\n"``) and is the same for every query, so its KV cache can be reused.
        suffix: earlier conversation turns and the query. It starts with ``"# Query:"`` and ends with
            ``"# Answer:\\n```\\n"``, where the model continues.
    """

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        """The full prompt: ``prefix + suffix``."""
        return self.prefix + self.suffix


@dataclass(frozen=True)
class _Conversation:
    """A validated conversation: system text, earlier (user, assistant) turns, and the final query."""

    system: str | None
    turns: tuple[tuple[str, str], ...]
    query: str


# --------------------------------------------------------------------------------------------------
# Defaults


@lru_cache(maxsize=1)
def _default_data() -> dict[str, Any]:
    path = resources.files("shared_core").joinpath("data/urial_examples.json")
    return json.loads(path.read_text(encoding="utf-8"))


def default_preamble() -> str:
    """The built-in preamble: how the assistant should answer (helpful, honest, structured, safe)."""
    return _clean(_default_data()["preamble"])


def default_examples(variant: UrialVariant = "safe") -> tuple[UrialExample, ...]:
    """The built-in K=3 examples of ``variant`` (``"safe"`` includes one refusal, ``"help"`` none)."""
    _check_variant(variant)
    return _cached_default_examples(variant)


@lru_cache(maxsize=len(VARIANTS))
def _cached_default_examples(variant: str) -> tuple[UrialExample, ...]:
    data = _default_data()
    return _coerce_examples([data["examples"][key] for key in data["variants"][variant]])


# --------------------------------------------------------------------------------------------------
# Text prompt


def urial_prompt(
    query: str | Sequence[Message],
    *,
    variant: UrialVariant = "safe",
    examples: Sequence[ExampleLike] | None = None,
    preamble: str | None = None,
) -> UrialPrompt:
    """Builds the URIAL text prompt for a query or a conversation, split into prefix and suffix.

    Args:
        query: the user's query, or a conversation as ``{"role", "content"}`` dicts. In a
            conversation the last message must come from the user and is the query; earlier
            user/assistant turns become extra Query/Answer pairs after the examples; system messages
            are appended to the preamble (so they are part of the prefix).
        variant: which built-in examples to use, ``"safe"`` or ``"help"``; ignored when ``examples``
            is given.
        examples: your own examples (:class:`UrialExample`, ``{"query", "answer"}`` dicts or
            ``(query, answer)`` tuples), at least one.
        preamble: your own preamble, replacing the built-in one. The layout description
            (:data:`FORMAT_NOTE`) is always added before it.

    Returns:
        The prompt; ``.text`` ends with ``"# Answer:\\n```\\n"``, ready for the model to continue.

    Raises:
        ConfigError: an invalid variant, example, preamble, query or message, naming the field.
    """
    conversation = _conversation(query)
    resolved_preamble = _resolve_preamble(preamble, conversation.system)
    return UrialPrompt(
        prefix=_render_prefix(resolved_preamble, _resolve_examples(variant, examples)),
        suffix=_render_suffix(conversation),
    )


def build_urial_prompt(
    query: str | Sequence[Message],
    *,
    variant: UrialVariant = "safe",
    examples: Sequence[ExampleLike] | None = None,
    preamble: str | None = None,
) -> str:
    """The full URIAL text prompt, ending with ``"# Answer:\\n```\\n"``; see :func:`urial_prompt`.

    Example:
        >>> text = build_urial_prompt("Name a prime number.", examples=[("2 + 2?", "4.")])
        >>> text.endswith("# Query:\\n```Name a prime number.```\\n\\n# Answer:\\n```\\n")
        True
    """
    return urial_prompt(query, variant=variant, examples=examples, preamble=preamble).text


def preamble_text(
    *,
    variant: UrialVariant = "safe",
    examples: Sequence[ExampleLike] | None = None,
    preamble: str | None = None,
) -> str:
    """The fixed part of the prompt: instruction, preamble and examples, ending with ``"\\n\\n"``.

    ``build_urial_prompt(q, **kw) == preamble_text(**kw) + query_suffix(q)`` for any query or
    conversation without system messages (with one, use :func:`urial_prompt`, whose ``prefix``
    includes it).
    """
    return _render_prefix(_resolve_preamble(preamble, None), _resolve_examples(variant, examples))


def query_suffix(query: str | Sequence[Message]) -> str:
    """The per-call part of the prompt: earlier turns and the query, from ``"# Query:"`` to the open fence.

    Raises:
        ConfigError: the query or a message is invalid, or the conversation has a system message (it
            changes the prefix; use :func:`urial_prompt` to get both parts).
    """
    conversation = _conversation(query)
    if conversation.system is not None:
        index = next(i for i, m in enumerate(query) if isinstance(m, Mapping) and m.get("role") == "system")
        raise ConfigError(
            f"messages[{index}].role",
            "a system message extends the preamble, so it belongs to the prefix, not the suffix; "
            "use urial_prompt(messages, ...) to get both parts",
        )
    return _render_suffix(conversation)


def _render_prefix(preamble: str, examples: Sequence[UrialExample]) -> str:
    head = f"# Instruction\n\n{FORMAT_NOTE}\n\n{preamble}\n\n"
    return head + "".join(_render_pair(example.query, example.answer) for example in examples)


def _render_suffix(conversation: _Conversation) -> str:
    turns = "".join(_render_pair(user, assistant) for user, assistant in conversation.turns)
    return f"{turns}{QUERY_HEADER}\n{FENCE}{conversation.query}{FENCE}\n\n{ANSWER_HEADER}\n{FENCE}\n"


def _render_pair(query: str, answer: str) -> str:
    return f"{QUERY_HEADER}\n{FENCE}{query}{FENCE}\n\n{ANSWER_HEADER}\n{FENCE}\n{answer}\n{FENCE}\n\n"


# --------------------------------------------------------------------------------------------------
# Chat rendering


def urial_chat_messages(
    query: str | Sequence[Message],
    *,
    variant: UrialVariant = "safe",
    examples: Sequence[ExampleLike] | None = None,
    preamble: str | None = None,
) -> list[dict[str, str]]:
    """URIAL as chat messages, for chat APIs that take no raw text prompt.

    Returns one system message holding the preamble (plus any system message of the conversation),
    then each example as a user message and an assistant message (answers without fences), then the
    conversation's earlier turns and the final user query. Arguments are as in :func:`urial_prompt`.

    Example:
        >>> msgs = urial_chat_messages("Hi!", examples=[("Hello?", "Hello! How can I help?")])
        >>> [m["role"] for m in msgs]
        ['system', 'user', 'assistant', 'user']
    """
    conversation = _conversation(query)
    messages = [{"role": "system", "content": _resolve_preamble(preamble, conversation.system)}]
    pairs = [(e.query, e.answer) for e in _resolve_examples(variant, examples)] + list(conversation.turns)
    for user, assistant in pairs:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": conversation.query})
    return messages


# --------------------------------------------------------------------------------------------------
# Parsing


def parse_urial_answer(text: str) -> str:
    """Turns a model's continuation of a URIAL prompt into the clean answer.

    The continuation starts right after the prompt's opening fence (``# Answer:`` then a line
    holding three backticks). The rules, applied in order:

    1. Newlines are normalised to ``\\n`` (Windows and old-Mac output).
    2. A leading ``# Answer:`` header line is dropped (the caller passed the header too).
    3. Everything from the first line that starts with a turn header (``# Query:`` or ``# Answer:``,
       colon optional) is cut: that is the next turn. This matches :data:`URIAL_STOP_STRINGS` and
       applies inside code blocks too, exactly as generation would have stopped there. If no header
       line is found, a trailing, unterminated partial header (``#``, ``# Que`` ...) or a partial fence
       (one or two backticks) is cut: output truncated by the token budget.
    4. Fence lines are lines that, stripped, start with three backticks: *bare* (only the backticks)
       or *labelled* (a language tag such as ``python``). Inner code blocks come in pairs: a labelled
       or bare fence opens one, the next bare fence closes it.
    5. Echoed opening fence: if the first non-blank line is a bare fence and, leaving aside a final
       closing fence, the fence lines are odd in number, that first fence cannot pair with anything,
       so it repeats the prompt's opening fence and is dropped. (An answer that itself begins with an
       unlabelled code block has an even number, and keeps it.)
    6. The answer ends at the first bare fence that is not inside an inner code block and is
       followed only by whitespace: the outer closing fence. A bare fence followed by more text opens
       an inner block instead; if the text was then cut at a header line (rule 3) while that block is
       still open, that fence was in fact the closing fence and the answer ends there.
    7. Surrounding whitespace is stripped. Output cut by the token budget (no closing fence) keeps
       everything, including an unfinished inner code block.

    Args:
        text: the generated continuation, with or without the matched stop string.

    Returns:
        The answer text, with inner code blocks intact.

    Raises:
        ConfigError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise ConfigError("text", f"must be a string, got {type(text).__name__}")
    lines = _normalize_newlines(text).split("\n")

    first = _first_nonblank(lines)
    if first is not None and _ANSWER_HEADER_LINE.match(lines[first]):
        lines = lines[first + 1 :]

    cut_at_header = False
    for index, line in enumerate(lines):
        if _HEADER_LINE.match(line):
            lines, cut_at_header = lines[:index], True
            break
    else:
        if lines and _is_partial_tail(lines[-1]):
            lines = lines[:-1]

    first = _first_nonblank(lines)
    if first is not None and _fence_kind(lines[first]) == "bare":
        last = max(i for i, line in enumerate(lines) if line.strip())
        fence_count = sum(1 for line in lines if _fence_kind(line) is not None)
        closing = 1 if last != first and _fence_kind(lines[last]) == "bare" else 0
        if (fence_count - closing) % 2 == 1:
            lines = lines[first + 1 :]

    end = len(lines)
    open_kind: str | None = None  # None, "bare" or "labelled": the inner block we are in
    opener = 0
    for index, line in enumerate(lines):
        kind = _fence_kind(line)
        if kind is None:
            continue
        if open_kind is not None:
            if kind == "bare":
                open_kind = None  # closes the inner block; a labelled fence inside one is content
        elif kind == "labelled":
            open_kind, opener = "labelled", index
        elif all(not rest.strip() for rest in lines[index + 1 :]):
            end = index  # the outer closing fence
            break
        else:
            open_kind, opener = "bare", index
    else:
        if open_kind == "bare" and cut_at_header:
            end = opener
    return "\n".join(lines[:end]).strip()


def find_answer_end(text: str) -> int:
    """Where the answer ends in a continuation still being generated, or -1 while it is open.

    The answer has ended once a bare fence line that is not inside a labelled code block is followed
    by a blank line: the format closes each answer with a fence and a blank line before the next
    ``# Query:``, and small base models often close the fence and then drift on without the header.
    Returns the index of the newline before that fence (the text before it is the answer).
    """
    inside_labelled = False
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            return -1
        kind = _fence_kind(text[start:end])
        if kind == "labelled":
            inside_labelled = True
        elif kind == "bare":
            if inside_labelled:
                inside_labelled = False
            elif start > 0 and text.startswith("\n", end + 1):
                return start - 1
        start = end + 1


def _fence_kind(line: str) -> Literal["bare", "labelled"] | None:
    """``"bare"`` for a line of just three backticks, ``"labelled"`` for one with a language tag."""
    stripped = line.strip()
    if not stripped.startswith(FENCE):
        return None
    rest = stripped[len(FENCE) :].strip()
    if not rest:
        return "bare"
    if "`" in rest:
        return None  # inline code such as ```x``` on one line, or a longer fence
    return "labelled"


def _is_partial_tail(line: str) -> bool:
    """Whether an unterminated last line is the start of a turn header or of a fence."""
    if line in ("`", "``"):
        return True
    return bool(line) and (QUERY_HEADER.startswith(line) or ANSWER_HEADER.startswith(line))


def _first_nonblank(lines: Sequence[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if line.strip()), None)


# --------------------------------------------------------------------------------------------------
# Context window


def check_fits(prompt_tokens: int, context_window: int, *, reserve_tokens: int = 0) -> None:
    """Checks that the URIAL preamble (or whole prompt), plus ``reserve_tokens``, fits the context window.

    Args:
        prompt_tokens: token count of the preamble (:func:`preamble_text`) or of the full prompt.
        context_window: the model's maximum sequence length in tokens.
        reserve_tokens: tokens that must stay free, such as the query and the answer's budget.

    Raises:
        ConfigError: on field ``"preamble"`` when ``prompt_tokens + reserve_tokens`` exceeds
            ``context_window``, naming both lengths; or on the argument that is not a valid count.
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("reserve_tokens", reserve_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
    if isinstance(context_window, bool) or not isinstance(context_window, int) or context_window < 1:
        raise ConfigError("context_window", f"must be a positive integer, got {context_window!r}")
    if prompt_tokens > context_window:
        raise ConfigError(
            "preamble",
            f"urial preamble is {prompt_tokens} tokens but the model's context window is "
            f"{context_window} tokens; use a shorter preamble or fewer examples",
        )
    if prompt_tokens + reserve_tokens > context_window:
        raise ConfigError(
            "preamble",
            f"urial preamble is {prompt_tokens} tokens and {reserve_tokens} more are needed for the "
            f"query and the answer, but the model's context window is {context_window} tokens; use a "
            "shorter preamble, fewer examples or a smaller token budget",
        )


# --------------------------------------------------------------------------------------------------
# Validation


def _check_variant(variant: object) -> None:
    if variant not in VARIANTS:
        valid = ", ".join(repr(v) for v in VARIANTS)
        raise ConfigError("variant", f"unknown URIAL variant {variant!r}; valid variants are {valid}")


def _resolve_examples(variant: object, examples: object) -> tuple[UrialExample, ...]:
    _check_variant(variant)
    if examples is None:
        return _cached_default_examples(variant)  # type: ignore[arg-type]
    return _coerce_examples(examples)


def _coerce_examples(examples: object) -> tuple[UrialExample, ...]:
    if isinstance(examples, (str, bytes, Mapping, UrialExample)) or not isinstance(examples, Sequence):
        raise ConfigError(
            "examples",
            "expected a list of examples (UrialExample, {'query', 'answer'} dicts or (query, answer) "
            f"tuples), got {type(examples).__name__}",
        )
    if len(examples) == 0:
        raise ConfigError("examples", "needs at least one example; pass None to use the built-in ones")
    return tuple(_coerce_example(item, f"examples[{i}]") for i, item in enumerate(examples))


def _coerce_example(item: object, field: str) -> UrialExample:
    if isinstance(item, UrialExample):
        return item
    if isinstance(item, Mapping):
        for key in ("query", "answer"):
            if key not in item:
                found = ", ".join(repr(k) for k in item) or "none"
                raise ConfigError(
                    f"{field}.{key}", f"missing; each example needs 'query' and 'answer' keys (found {found})"
                )
        query, answer = item["query"], item["answer"]
    elif isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ConfigError(field, f"expected a (query, answer) pair, got {len(item)} items")
        query, answer = item
    else:
        raise ConfigError(
            field,
            "expected an UrialExample, a {'query', 'answer'} dict or a (query, answer) tuple, "
            f"got {type(item).__name__}",
        )
    return UrialExample(
        _check_example_text(query, f"{field}.query"), _check_example_text(answer, f"{field}.answer")
    )


def _check_example_text(value: object, field: str) -> str:
    text = _check_text(value, field)
    for line in text.split("\n"):
        if _HEADER_LINE.match(line):
            raise ConfigError(
                field,
                f"must not contain the line {line!r}; '# Query:' and '# Answer:' lines separate URIAL turns",
            )
    return text


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = repr(value) if isinstance(value, str) or value is None else type(value).__name__
        raise ConfigError(field, f"must be a non-empty string, got {got}")
    return _clean(value)


def _resolve_preamble(preamble: object, system: str | None) -> str:
    text = default_preamble() if preamble is None else _check_text(preamble, "preamble")
    return text if system is None else f"{text}\n\n{system}"


def _conversation(query: object) -> _Conversation:
    """Validates a query string or a message list and groups it into turns."""
    if isinstance(query, str):
        return _Conversation(system=None, turns=(), query=_check_text(query, "query"))
    if isinstance(query, (bytes, Mapping)) or not isinstance(query, Sequence):
        raise ConfigError(
            "query",
            f"expected a string or a list of {{'role', 'content'}} messages, got {type(query).__name__}",
        )
    if len(query) == 0:
        raise ConfigError("messages", "needs at least one message; the last one must be from the user")

    system_parts: list[str] = []
    blocks: list[list[str]] = []  # consecutive messages of one role, merged: [role, text, ...]
    for i, message in enumerate(query):
        if not isinstance(message, Mapping):
            raise ConfigError(
                f"messages[{i}]", f"expected a dict with 'role' and 'content', got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ROLES:
            valid = ", ".join(repr(r) for r in ROLES)
            raise ConfigError(f"messages[{i}].role", f"unknown role {role!r}; valid roles are {valid}")
        content = _check_text(message.get("content"), f"messages[{i}].content")
        if role == "system":
            system_parts.append(content)
        elif blocks and blocks[-1][0] == role:
            blocks[-1].append(content)
        elif role == "assistant" and not blocks:
            raise ConfigError(
                f"messages[{i}].role",
                "an assistant message must follow a user message (URIAL pairs each answer with a query)",
            )
        else:
            blocks.append([role, content])

    last_role = query[-1]["role"]
    if last_role != "user":
        raise ConfigError(
            f"messages[{len(query) - 1}].role",
            f"the last message must be from the user (it is the query to answer), got {last_role!r}",
        )
    texts = ["\n\n".join(block[1:]) for block in blocks]  # alternating user, assistant, ..., user
    turns = tuple((texts[k], texts[k + 1]) for k in range(0, len(texts) - 1, 2))
    return _Conversation(system="\n\n".join(system_parts) or None, turns=turns, query=texts[-1])


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean(text: str) -> str:
    return _normalize_newlines(text).strip()
