"""Tool calling for local models: render tools into the prompt, parse calls out of the output, check schemas.

Framework-free (no LangChain or LlamaIndex imports); both adapters and the server build on it. Tools
are OpenAI-format dicts (``{"type": "function", "function": {"name", "description", "parameters"}}``).

* :mod:`~shared_core.tools.render`: tool dicts, ``tool_choice`` spellings, the prompt (chat template or
  the "Hermes" fallback);
* :mod:`~shared_core.tools.parse`: calls out of an answer; what is safe to stream;
* :mod:`~shared_core.tools.schema`: the schema subset a forced call supports.

A forced call is decoded by the ``tool_call`` strategy (:mod:`shared_core.decoding.tool_call`).
"""

from shared_core.tools.parse import ParsedOutput, ToolCall, parse_tool_calls, streamable_length
from shared_core.tools.render import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_SYSTEM_PROMPT,
    PreparedPrompt,
    ToolChoice,
    format_tool_call,
    new_call_id,
    normalize_tools,
    prepare_tool_prompt,
    resolve_tool_choice,
    template_supports_tools,
    tool_system_prompt,
)
from shared_core.tools.schema import check_schema, check_tool_schemas

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_SYSTEM_PROMPT",
    "ParsedOutput",
    "PreparedPrompt",
    "ToolCall",
    "ToolChoice",
    "check_schema",
    "check_tool_schemas",
    "format_tool_call",
    "new_call_id",
    "normalize_tools",
    "parse_tool_calls",
    "prepare_tool_prompt",
    "resolve_tool_choice",
    "streamable_length",
    "template_supports_tools",
    "tool_system_prompt",
]
