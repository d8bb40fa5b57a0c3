"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` lines, ending with ``data: [DONE]``."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DONE", "sse"]

DONE = "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    """One event carrying ``payload`` as compact JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
