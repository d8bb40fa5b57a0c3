"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and the handlers that make them.

Mapping: :class:`~shared_core.errors.ConfigError` -> 400 with ``param`` = its field; request bodies that
do not fit the schema -> 422 naming the field; a full queue (any error with ``retry_after``) -> 429 with
``Retry-After``; :class:`~shared_core.errors.ModelLoadError`, a scheduler shutting down and a remote
engine that cannot be reached -> 503; a remote engine lacking a feature or refusing a request -> 400;
anything unexpected -> 500 with a generic message (the details go to the log, not to the client).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared_core.backends.remote import BackendError, BackendFeatureError, BackendRequestError
from shared_core.errors import ConfigError, DealError, ModelLoadError
from shared_core.scheduler import SchedulerClosed

__all__ = ["APIError", "QueueFull", "error_body", "install_error_handlers", "to_api_error"]

log = logging.getLogger("deal.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error response: HTTP status, message, the request field at fault and a short code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


class QueueFull(DealError):
    """The server's queue of waiting requests is full; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def to_api_error(exc: BaseException) -> APIError:
    """The API error for an exception raised while planning or decoding a request."""
    if isinstance(exc, APIError):
        return exc
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, DealError) and isinstance(retry_after, (int, float)):
        seconds = max(1, math.ceil(retry_after))
        return APIError(429, f"the server is busy: {exc}; retry after {seconds} s", code="queue_full",
                        headers={"Retry-After": str(seconds)})
    if isinstance(exc, ConfigError):
        return APIError(400, str(exc), param=exc.field, code="invalid_value")
    if isinstance(exc, ModelLoadError):
        return APIError(503, f"the model is not available: {exc}", code="model_unavailable")
    if isinstance(exc, SchedulerClosed):
        return APIError(503, f"the server is shutting down: {exc}", code="shutting_down")
    if isinstance(exc, BackendFeatureError):
        return APIError(400, f"the remote engine cannot serve this request: {exc}", param="deal.strategy",
                        code="backend_feature_missing")
    if isinstance(exc, BackendRequestError):
        return APIError(400, f"the remote engine refused the request: {exc}", code="backend_rejected")
    if isinstance(exc, BackendError):  # unreachable, timed out, or failing after retries
        return APIError(503, f"the remote engine is not available: {exc}", code="backend_unavailable")
    if isinstance(exc, DealError):
        return APIError(500, f"generation failed: {exc}", code="generation_failed")
    log.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error (see the server log)", code="internal_error")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    param = _loc(tuple(first.get("loc", ())))
    if first.get("type") == "extra_forbidden":
        message = (f"{param}: unknown field; deal serve accepts OpenAI's documented fields and a 'deal' object "
                   "(see docs/server.md)")
    elif first.get("type") in ("json_invalid",):
        message = f"the body is not valid JSON: {first.get('msg')}"
    else:
        message = f"{param}: {first.get('msg')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(error_body(422, message, param, first.get("type")), status_code=422)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    return JSONResponse(error_body(status, str(exc.detail)), status_code=status, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers so every error leaves the server in OpenAI's shape."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(DealError, _api_error)
    app.add_exception_handler(Exception, _api_error)
