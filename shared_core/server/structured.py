"""The ``json_schema`` strategy: an answer that is valid JSON for a schema (OpenAI's ``response_format``).

The server attaches it to a request with :func:`with_json_schema`; it is not in the strategy registry
(so ``deal.strategy`` cannot name it, and the process-wide list of strategies stays the library's). It reuses the schema walker of the forced tool-call decoder (:mod:`shared_core.decoding.tool_call`): the
decoder writes the JSON skeleton and the model only chooses where it has a real choice. Without a
schema (``response_format: {"type": "json_object"}``) the answer is a flat JSON object with
model-chosen keys and string values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.base import DecodeJob, Strategy, validate_params
from shared_core.decoding.tool_call import SchemaWalker, ToolCallParams
from shared_core.errors import ConfigError
from shared_core.request import Request
from shared_core.tools import check_schema

__all__ = ["JSON_OBJECT_SCHEMA", "JsonSchemaParams", "JsonSchemaStrategy", "check_response_schema", "with_json_schema"]

#: The schema ``json_object`` decodes to: an object whose keys and values the model picks.
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}


class JsonSchemaParams(BaseModel):
    """Parameters of the ``json_schema`` strategy: the schema and the walker's limits."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] = Field(description="the JSON schema the answer must satisfy")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy choice among allowed tokens")
    max_string_tokens: int = Field(48, gt=0)
    max_array_items: int = Field(8, gt=0)
    max_free_keys: int = Field(6, gt=0, description="the most keys of an object without listed properties")
    reserve_tokens: int = Field(4, ge=0)


def check_response_schema(schema: Any, field: str = "response_format.json_schema.schema") -> dict[str, Any]:
    """The schema if the constrained decoder supports it; ConfigError naming ``field`` otherwise."""
    if not isinstance(schema, Mapping):
        raise ConfigError(field, f"must be a JSON schema object, got {type(schema).__name__}")
    if schema is JSON_OBJECT_SCHEMA:
        return dict(schema)
    check_schema(dict(schema), field)
    return dict(schema)


class _BareValueWalker(SchemaWalker):
    """The tool-call walker, writing one bare JSON value; objects without properties get free keys."""

    def __init__(self, job: DecodeJob, params: JsonSchemaParams) -> None:
        self.free_keys = params.max_free_keys
        self.schema = params.json_schema
        wrapped = ToolCallParams(
            functions=[{"name": "response", "parameters": {"type": "object", "properties": {}}}],
            temperature=params.temperature, max_string_tokens=params.max_string_tokens,
            max_array_items=params.max_array_items, reserve_tokens=params.reserve_tokens, open_text="", close_text="",
        )
        try:
            super().__init__(job, wrapped)
        except ConfigError as exc:
            raise ConfigError(exc.field, str(exc).split(": ", 1)[-1].replace(
                "a forced tool call needs", "a JSON answer for this schema needs")) from None

    def _call_cost(self, tool: Mapping[str, Any]) -> int:
        """Tokens of the smallest valid answer (the bare value: no tool-call wrapper around it)."""
        self.root = self.schema
        return self._tokens(json.dumps(self.smallest(self.schema), ensure_ascii=False))

    def object(self, schema: Mapping[str, Any], depth: int) -> Iterator[Sequence[int]]:
        extra = schema.get("additionalProperties")
        if schema.get("properties") or extra is False or extra is None:
            yield from super().object(schema, depth)
            return
        values = extra if isinstance(extra, Mapping) else {"type": "string"}
        self.force("{")
        for count in range(self.free_keys):
            # the smallest next pair is paid from the free budget before it is started, so "}" always fits
            if not self.spend(self._cost(', "k": ' if count else '"k": ', values, depth + 1)):
                break
            if count and (yield from self.choose([", ", "}"])) == 1:
                return
            yield from self.string({"maxLength": 40})
            self.force(": ")
            yield from self.value(values, depth + 1)
        self.force("}")

    def document(self, schema: Mapping[str, Any]) -> Iterator[Sequence[int]]:
        self.root = schema
        needed = self._tokens(json.dumps(self.smallest(schema), ensure_ascii=False)) + 1  # and EOS
        if self.job.remaining < needed:
            raise ConfigError("max_new_tokens", f"the smallest answer for this schema needs about {needed} tokens, "
                                                f"but only {self.job.remaining} are allowed; raise the token budget")
        self.budget = max(0, self.job.remaining - needed - self.params.reserve_tokens)
        yield from self.value(schema, 0)
        yield from self.flush()


class JsonSchemaStrategy(Strategy):
    """Decodes one JSON value that satisfies ``json_schema`` (the supported subset of JSON schema)."""

    name = "json_schema"
    Params = JsonSchemaParams
    description = "an answer decoded to be valid JSON for a schema (response_format)"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        walker = _BareValueWalker(job, job.params)
        yield from walker.document(job.params.json_schema)
        if job.model.eos_token_ids:
            yield (min(job.model.eos_token_ids),)


def with_json_schema(request: Request, params: Mapping[str, Any]) -> Request:
    """``request`` (built and checked as a greedy one) decoding with the ``json_schema`` strategy and ``params``."""
    checked = validate_params(JsonSchemaStrategy, dict(params))
    plan = dataclasses.replace(request.plan, strategy=JsonSchemaStrategy.name, params=dict(params))
    return dataclasses.replace(request, strategy=JsonSchemaStrategy, params=checked, plan=plan)
