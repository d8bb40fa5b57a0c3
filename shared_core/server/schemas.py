"""Request bodies of the OpenAI-compatible endpoints (pydantic; they also make the OpenAPI schema).

Unknown top-level fields are refused (422 naming the field) rather than ignored: a field this server
does not know might be one that changes the output elsewhere (vLLM's ``top_k``, ``min_p`` ...). OpenAI's
documented fields are accepted; those that would change the output but are not supported here
(``logit_bias``, penalties, ``logprobs`` ...) are refused with 400 when set to anything but their
neutral value (see :mod:`shared_core.server.mapping`). Fields inside messages that earlier responses
carry back (``refusal``, ``annotations`` ...) are ignored: they do not change what is generated.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "DealOptions",
    "FunctionDef",
    "JsonSchemaFormat",
    "ResponseFormat",
    "StreamOptions",
    "Tool",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DealOptions(_Strict):
    """Alignment for one request (OpenAI clients send it through ``extra_body={"deal": {...}}``).

    ``policy``: a policy name (built in or the operator's) or an inline policy; ``strategy``: a strategy
    name; ``reward``: a policy name or an inline reward spec (model-free types only, unless the server
    allows more); ``params``: the strategy's parameters.
    """

    policy: Union[str, dict[str, Any], None] = None
    strategy: Union[str, None] = None
    reward: Union[str, dict[str, Any], None] = None
    params: Union[dict[str, Any], None] = None


class StreamOptions(_Strict):
    include_usage: Union[bool, None] = None
    include_obfuscation: Union[bool, None] = None


class FunctionDef(_Strict):
    name: str
    description: Union[str, None] = None
    parameters: Union[dict[str, Any], None] = None
    strict: Union[bool, None] = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "response"
    description: Union[str, None] = None
    schema_: Union[dict[str, Any], None] = Field(None, alias="schema")
    strict: Union[bool, None] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Union[JsonSchemaFormat, None] = None


class ChatMessage(BaseModel):
    """One chat message; text content only (a string or ``[{"type": "text", "text": ...}]``)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Union[str, None] = None
    tool_calls: Union[list[dict[str, Any]], None] = None
    tool_call_id: Union[str, None] = None


class _Common(_Strict):
    model: str
    max_tokens: Union[int, None] = Field(None, ge=1)
    temperature: Union[float, None] = Field(None, ge=0, le=2)
    top_p: Union[float, None] = Field(None, ge=0, le=1)
    n: Union[int, None] = Field(None, ge=1)
    stream: Union[bool, None] = None
    stream_options: Union[StreamOptions, None] = None
    stop: Union[str, list[str], None] = None
    seed: Union[int, None] = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: Union[float, None] = Field(None, ge=-2, le=2)
    frequency_penalty: Union[float, None] = Field(None, ge=-2, le=2)
    logit_bias: Union[dict[str, float], None] = None
    user: Union[str, None] = None
    deal: Union[DealOptions, None] = None


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Union[int, None] = Field(None, ge=1)
    logprobs: Union[bool, None] = None
    top_logprobs: Union[int, None] = Field(None, ge=0, le=20)
    tools: Union[list[Tool], None] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Union[bool, None] = None
    response_format: Union[ResponseFormat, None] = None
    metadata: Union[dict[str, str], None] = None
    store: Union[bool, None] = None
    service_tier: Union[str, None] = None
    prompt_cache_key: Union[str, None] = None
    safety_identifier: Union[str, None] = None
    modalities: Union[list[str], None] = None
    reasoning_effort: Union[str, None] = None


class CompletionRequest(_Common):
    """POST /v1/completions (text in, text out; no chat template)."""

    prompt: Union[str, list[str]]
    logprobs: Union[int, None] = Field(None, ge=0, le=5)
    echo: Union[bool, None] = None
    suffix: Union[str, None] = None
    best_of: Union[int, None] = Field(None, ge=1)
