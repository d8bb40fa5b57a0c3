"""Who may call the server and how big a request may be.

API keys are read from ``Authorization: Bearer KEY`` and compared with every configured key in constant
time (:func:`hmac.compare_digest`); a missing or wrong key is 401. Bodies larger than the limit are
refused with 413 before the app reads them (a ``Content-Length`` over the limit, or a chunked body
that grows past it).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

from shared_core.server.errors import APIError, error_body

__all__ = ["BodyLimitMiddleware", "check_api_key"]


def check_api_key(authorization: str | None, keys: Sequence[str]) -> None:
    """Raises a 401 :class:`APIError` unless ``authorization`` is ``Bearer K`` for one of ``keys`` (none: open)."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    if not ok:
        message = ("missing API key: send 'Authorization: Bearer YOUR_KEY'" if not given
                   else "invalid API key")
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class BodyLimitMiddleware:
    """ASGI middleware: 413 for request bodies over ``max_bytes``; the body is buffered and replayed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send: Any) -> None:
        body = json.dumps(error_body(413, f"the request body is larger than this server's limit of "
                                          f"{self.max_bytes} bytes", None, "body_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
