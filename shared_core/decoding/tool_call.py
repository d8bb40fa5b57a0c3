"""The ``tool_call`` strategy: decode a forced tool call that is valid JSON for the tool's schema.

The JSON skeleton (braces, keys, commas) is written by the decoder, and the model only picks among
allowed tokens for the values (a tool name among the allowed ones, string contents without quotes or
control characters, digits for numbers, ``true``/``false``, enum members): each choice runs the
request's logits processors and then an :class:`~shared_core.processors.AllowedTokensProcessor` mask.
Each forced stretch of text costs one forward pass, each model-chosen token one, on the job's KV
cache. The token budget is planned: the smallest valid call is reserved first and free values (longer
strings, more digits, optional properties, extra array items) only spend what is left, so a call is
never cut off mid-JSON (a very tight budget may cut the closing tag, which ``parse_tool_calls`` accepts).

The schema subset it supports is checked before decoding (:func:`shared_core.tools.check_tool_schemas`);
anything else is a ConfigError naming the keyword.

Why not a general grammar library: in a trial here, lm-format-enforcer's pure-Python allowed-token
computation over the 49k-token vocabulary dominated decoding time on CPU and let the model pad the JSON
with whitespace, and xgrammar pulls in triton; walking the schema needs neither, and the model is only
asked where it has a real choice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.errors import ConfigError
from shared_core.models import cached
from shared_core.processors.guidance import AllowedTokensProcessor
from shared_core.processors.sampling import SamplingParams, choose_tokens
from shared_core.tools.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolChoice, normalize_tools
from shared_core.tools.schema import check_tool_schemas

__all__ = ["SchemaWalker", "ToolCallParams", "ToolCallStrategy", "forced_call_params"]


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
    check_tool_schemas(functions)
    return {"functions": functions, **overrides}


_INT_FULL = re.compile(r"-?(?:0|[1-9]\d*)")
_INT_PREFIX = re.compile(r"-?(?:0|[1-9]\d*)?")
_NUM_FULL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUM_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*|\.\d+[eE][+-]?\d*|[eE][+-]?\d*)?)?")
_NUMERIC_CHARS = re.compile(r"[0-9eE.+\-]+")
_MAX_NUMBER_CHARS = 20
_MAX_DEPTH = 12
_BOUNDED_NUM_FULL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")
_BOUNDED_NUM_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*)?)?")


@dataclass(frozen=True)
class _Bounds:
    """A number's ``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``, as exact fractions."""

    lo: Fraction | None
    lo_open: bool
    hi: Fraction | None
    hi_open: bool

    @classmethod
    def of(cls, schema: Mapping[str, Any]) -> _Bounds | None:
        lo = hi = None
        lo_open = hi_open = False
        if isinstance(schema.get("minimum"), (int, float)):
            lo = Fraction(str(schema["minimum"]))
        if isinstance(schema.get("maximum"), (int, float)):
            hi = Fraction(str(schema["maximum"]))
        ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(ex_lo, bool):  # draft 4: a flag on minimum
            lo_open = ex_lo and lo is not None
        elif isinstance(ex_lo, (int, float)) and (lo is None or Fraction(str(ex_lo)) >= lo):
            lo, lo_open = Fraction(str(ex_lo)), True
        if isinstance(ex_hi, bool):
            hi_open = ex_hi and hi is not None
        elif isinstance(ex_hi, (int, float)) and (hi is None or Fraction(str(ex_hi)) <= hi):
            hi, hi_open = Fraction(str(ex_hi)), True
        return None if lo is None and hi is None else cls(lo, lo_open, hi, hi_open)

    def allows(self, low: Fraction | None, low_open: bool, high: Fraction | None, high_open: bool, *,
               integer: bool) -> bool:
        """Whether some value between ``low`` and ``high`` (``None``: unbounded; integers only when
        ``integer``) is within the bounds."""
        if integer:
            lows = [v for v in (_int_above(low, low_open), _int_above(self.lo, self.lo_open)) if v is not None]
            highs = [v for v in (_int_below(high, high_open), _int_below(self.hi, self.hi_open)) if v is not None]
            return not lows or not highs or max(lows) <= min(highs)
        lo, lo_open = _tighter((low, low_open), (self.lo, self.lo_open), upper=False)
        hi, hi_open = _tighter((high, high_open), (self.hi, self.hi_open), upper=True)
        if lo is None or hi is None:
            return True
        return lo < hi or (lo == hi and not lo_open and not hi_open)

    def contains(self, value: Fraction, *, integer: bool) -> bool:
        return self.allows(value, False, value, False, integer=integer)

    def viable(self, text: str, *, integer: bool) -> bool:
        """Whether the number prefix ``text`` (no exponent) can still be completed to an allowed value."""
        negative = text.startswith("-")
        body = text[1:] if negative else text
        if not body:
            return self.allows(None, False, Fraction(0) if negative else None, False, integer=integer)
        spans: list[tuple[Fraction, Fraction]] = []  # magnitudes [a, b) the completions can reach
        if "." in body:
            whole, fraction = body.split(".", 1)
            base = Fraction(f"{whole}.{fraction}") if fraction else Fraction(whole)
            spans.append((base, base + Fraction(1, 10 ** len(fraction))))
        elif body == "0":
            spans.append((Fraction(0), Fraction(0) if integer else Fraction(1)))
        else:
            value = int(body)
            for extra in range(_MAX_NUMBER_CHARS - len(text) + 1):
                scale = 10 ** extra
                spans.append((Fraction(value * scale), Fraction((value + 1) * scale)))
        for a, b in spans:
            closed_end = a == b  # "0" as an integer: exactly 0
            if negative and self.allows(-b, not closed_end, -a, False, integer=integer):
                return True
            if not negative and self.allows(a, False, b, not closed_end, integer=integer):
                return True
        return False


def _int_above(value: Fraction | None, strict: bool) -> int | None:
    """The smallest integer ``>= value`` (``> value`` when strict)."""
    if value is None:
        return None
    return math.floor(value) + 1 if strict else math.ceil(value)


def _int_below(value: Fraction | None, strict: bool) -> int | None:
    """The largest integer ``<= value`` (``< value`` when strict)."""
    if value is None:
        return None
    return math.ceil(value) - 1 if strict else math.floor(value)


def _tighter(a: tuple[Fraction | None, bool], b: tuple[Fraction | None, bool], *,
             upper: bool) -> tuple[Fraction | None, bool]:
    """The tighter of two lower (or upper) ends ``(value, open)``; ``None`` values are unbounded."""
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    if a[0] == b[0]:
        return a[0], a[1] or b[1]
    pick_a = a[0] < b[0] if upper else a[0] > b[0]
    return a if pick_a else b


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
    return cached(("tool_call_vocab", lm.source, str(lm.device), len(lm.tokenizer)), lambda: _build_vocab(lm), model=False)


class SchemaWalker:
    """Decodes one JSON value for a schema: forced text is batched into one forward, choices are masked."""

    def __init__(self, job: DecodeJob, params: ToolCallParams) -> None:
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
        scores = self.job.process_one(self.job.committed, self.logits.float())
        scores = AllowedTokensProcessor(allowed).one(self.job.committed, scores)
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
            bounds = _Bounds.of(schema)
            if bounds is None or bounds.contains(Fraction(0), integer=True):
                return 0
            edge = bounds.lo if bounds.lo is not None else bounds.hi
            assert edge is not None
            return int(edge) + (1 if bounds.lo is not None else -1)
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
            yield from self.number(schema, integer=True)
        elif kind == "number":
            yield from self.number(schema, integer=False)
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

    def number(self, schema: Mapping[str, Any], *, integer: bool) -> Iterator[Sequence[int]]:
        bounds = _Bounds.of(schema)
        if bounds is None:
            full, prefix = (_INT_FULL, _INT_PREFIX) if integer else (_NUM_FULL, _NUM_PREFIX)
        else:  # bounded: plain decimals (no exponent), each prefix still able to reach an allowed value
            full, prefix = (_INT_FULL, _INT_PREFIX) if integer else (_BOUNDED_NUM_FULL, _BOUNDED_NUM_PREFIX)

        def allowed_end(candidate: str) -> bool:
            return bool(full.fullmatch(candidate)) and (
                bounds is None or bounds.contains(Fraction(candidate), integer=integer))

        text = ""
        while len(text) < _MAX_NUMBER_CHARS and (not text or self.budget > 0):
            ids = [i for i, t in self.vocab.numeric if len(text + t) <= _MAX_NUMBER_CHARS
                   and prefix.fullmatch(text + t) and (bounds is None or bounds.viable(text + t, integer=integer))]
            if not ids and not allowed_end(text):
                break
            allowed = self._mask(ids)
            if allowed_end(text):
                allowed = allowed | self.vocab.number_end
            token = yield from self.pick(allowed)
            if token < 0 or bool(self.vocab.number_end[token]):
                break
            yield from self.commit(token)
            if text:
                self.budget -= 1
            text += self.lm.decode([token])
        if not allowed_end(text):  # the budget ran out mid-number: close it validly
            self.force(self._completion(text, allowed_end))

    @staticmethod
    def _completion(text: str, allowed_end: Any) -> str:
        """The shortest text that makes ``text`` an allowed number (a few characters at most)."""
        frontier = [""]
        for _ in range(4):
            for tail in frontier:
                if allowed_end(text + tail):
                    return tail
            frontier = [tail + c for tail in frontier for c in "0123456789."]
        raise ConfigError("schema", f"cannot complete the number {text!r} within its bounds")

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
        walker = SchemaWalker(job, job.params)
        yield from walker.tool_call(job.params.functions)
        if job.model.eos_token_ids:
            yield (min(job.model.eos_token_ids),)
