"""The FastAPI app of ``deal serve``: OpenAI-compatible endpoints over deal's aligned decoding.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (and
``/v1/models/{id}``), ``GET /health`` (no key needed), ``GET /metrics`` (Prometheus text). Requests are
planned and checked on the event loop (no model work), then handed to the scheduler; a client that
disconnects has its decoding cancelled before the next forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shared_core.errors import ConfigError
from shared_core.models import load_model
from shared_core.result import GenerationResult
from shared_core.server.errors import APIError, install_error_handlers, to_api_error
from shared_core.server.mapping import (
    Prepared,
    chat_choice,
    created,
    deal_block,
    finish_reason,
    new_id,
    parse_output,
    prepare_chat,
    prepare_completion,
    public_error,
    tool_call_dicts,
    usage,
)
from shared_core.server.metrics import CONTENT_TYPE, ServerMetrics
from shared_core.server.runner import make_scheduler
from shared_core.server.schemas import ChatCompletionRequest, CompletionRequest
from shared_core.server.security import BodyLimitMiddleware, check_api_key
from shared_core.server.settings import ServerSettings
from shared_core.server.sse import DONE, sse
from shared_core.tools import streamable_length

__all__ = ["create_app", "load_served_model"]


def load_served_model(settings: ServerSettings) -> Any:
    """The model the server decodes with: a local model, or a remote one with ``base_url``."""
    if settings.base_url:
        from shared_core.backends.remote import connect_model

        return connect_model(settings.base_url, model=settings.model, api_key=settings.remote_api_key)
    return load_model(settings.model, device=settings.device)


class _Served:
    """What the handlers share: settings, the model, the scheduler and the metrics."""

    def __init__(self, settings: ServerSettings, model: Any) -> None:
        self.settings = settings
        self.model = model
        limits = settings.limits
        self.scheduler = make_scheduler(model, max_batch=limits.max_running, max_queue=limits.max_queue)
        self.metrics = ServerMetrics(self.scheduler.stats)

    def submit(self, prepared: Prepared) -> list[Any]:
        """Hands every choice's request to the scheduler; all or none (a full queue cancels the ones taken)."""
        streams: list[Any] = []
        try:
            for request in prepared.requests:
                streams.append(self.scheduler.submit(request))
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(http: Request, streams: Sequence[Any]) -> AsyncIterator[list[bool]]:
    """Cancels ``streams`` as soon as the client's ASGI ``http.disconnect`` arrives; yields ``[disconnected]``."""
    flag = [False]

    async def watch() -> None:
        while True:
            message = await http.receive()
            if message["type"] == "http.disconnect":
                flag[0] = True
                for s in streams:
                    s.cancel()
                return

    task = asyncio.create_task(watch())
    try:
        yield flag
    finally:
        task.cancel()


def _api_error(prepared: Prepared, exc: BaseException) -> APIError:
    """The API error for a failure while queueing or decoding; a chat request's prompt is its ``messages``."""
    if isinstance(exc, ConfigError):
        exc = public_error(exc, token_field=prepared.token_field,
                           prompt_field="messages" if prepared.kind == "chat" else "prompt")
    return to_api_error(exc)


def create_app(settings: ServerSettings, model: Any = None) -> FastAPI:
    """The app; loads the model now unless one is given (a :class:`~shared_core.LocalModel` or a remote model)."""
    served = _Served(settings, model if model is not None else load_served_model(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        served.scheduler.shutdown()

    app = FastAPI(title="deal serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible endpoints with reward-guided decoding (the `deal` request field).")
    app.state.served = served
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    metrics = served.metrics

    def authorize(http: Request, authorization: str | None = Header(None)) -> None:
        try:
            check_api_key(authorization, settings.api_keys)
        except APIError as exc:
            path = http.url.path
            endpoint = "chat" if path.endswith("/chat/completions") else path.rstrip("/").rsplit("/", 1)[-1]
            count(endpoint if endpoint in ("completions", "models", "metrics") else "chat" if endpoint == "chat"
                  else "other", "none", exc.status)
            raise

    def count(endpoint: str, strategy: str, status: Any) -> None:
        metrics.requests.labels(endpoint, strategy, str(status)).inc()

    async def run(endpoint: str, http: Request, prepared: Prepared, stream: bool, include_usage: bool) -> Response:
        started = time.perf_counter()
        strategy = prepared.strategy
        headers = {"X-Deal-Warning": "; ".join(prepared.warnings)} if prepared.warnings else {}
        try:
            streams = served.submit(prepared)
        except Exception as exc:
            err = _api_error(prepared, exc)
            count(endpoint, strategy, err.status)
            raise err from None
        metrics.queue_depth.labels(strategy).inc(len(streams))
        if stream:
            return await _streaming(endpoint, http, prepared, streams, include_usage, started, headers)
        waiting = [True] * len(streams)

        async def one(i: int) -> GenerationResult:
            it = streams[i].__aiter__()
            try:
                async for _ in it:
                    if waiting[i]:
                        waiting[i] = False
                        metrics.queue_depth.labels(strategy).dec()
                        metrics.running.labels(strategy).inc()
                return streams[i].result
            finally:
                if waiting[i]:
                    waiting[i] = False
                    metrics.queue_depth.labels(strategy).dec()
                else:
                    metrics.running.labels(strategy).dec()

        async with _cancel_on_disconnect(http, streams) as gone:
            try:
                results = list(await asyncio.gather(*(one(i) for i in range(len(streams)))))
            except Exception as exc:
                for s in streams:
                    s.cancel()
                err = _api_error(prepared, exc)
                count(endpoint, strategy, err.status)
                raise err from None
        for r in results:
            metrics.record_result(strategy, r)
        metrics.latency.labels(strategy).observe(time.perf_counter() - started)
        count(endpoint, strategy, "cancelled" if gone[0] else 200)
        body = _chat_body(prepared, results) if prepared.kind == "chat" else _text_body(prepared, results)
        return JSONResponse(body, headers=headers)

    async def _streaming(endpoint: str, http: Request, prepared: Prepared, streams: list[Any], include_usage: bool,
                         started: float, headers: dict[str, str]) -> Response:
        strategy = prepared.strategy
        first_iter = streams[0].__aiter__()
        first: list[str] = []
        ended = False
        async with _cancel_on_disconnect(http, streams):
            try:  # the first event before the response starts: errors before any output are proper HTTP errors
                first.append(await first_iter.__anext__())
            except StopAsyncIteration:
                ended = True
            except Exception as exc:
                for s in streams:
                    s.cancel()
                metrics.queue_depth.labels(strategy).dec(len(streams))
                err = _api_error(prepared, exc)
                count(endpoint, strategy, err.status)
                raise err from None
        metrics.queue_depth.labels(strategy).dec(len(streams))
        metrics.running.labels(strategy).inc(len(streams))

        async def events() -> AsyncIterator[str]:
            status: Any = 200
            results: list[GenerationResult] = []
            rid = new_id("chatcmpl" if prepared.kind == "chat" else "cmpl")
            stamp = created()
            try:
                async with _cancel_on_disconnect(http, streams) as gone:
                    for index, s in enumerate(streams):
                        deltas = _prefetched(first, ended, first_iter) if index == 0 else s.__aiter__()
                        async for event in _choice_events(prepared, index, s, deltas, results):
                            yield sse(_envelope(prepared, rid, stamp, event, include_usage))
                    if include_usage:
                        yield sse(_envelope(prepared, rid, stamp, None, True,
                                            usage(results, prepared.prompt_of_choice)))
                    if gone[0]:
                        status = "cancelled"
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except Exception as exc:
                err = _api_error(prepared, exc)
                status = err.status
                yield sse(err.body())
            finally:
                for s in streams:
                    s.cancel()
                metrics.running.labels(strategy).dec(len(streams))
                for r in results:
                    metrics.record_result(strategy, r)
                metrics.latency.labels(strategy).observe(time.perf_counter() - started)
                count(endpoint, strategy, status)
            yield DONE

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    # ------------------------------------------------------------------ routes

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> Response:
        """OpenAI chat completions; alignment in the ``deal`` field or a ``MODEL:POLICY`` alias."""
        try:
            prepared = prepare_chat(settings, served.model, body)
        except Exception as exc:
            count("chat", "none", to_api_error(exc).status)
            raise
        include = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run("chat", http, prepared, bool(body.stream), include)

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(body: CompletionRequest, http: Request) -> Response:
        """OpenAI text completions (no chat template)."""
        try:
            prepared = prepare_completion(settings, served.model, body)
        except Exception as exc:
            count("completions", "none", to_api_error(exc).status)
            raise
        include = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run("completions", http, prepared, bool(body.stream), include)

    def model_cards() -> list[dict[str, Any]]:
        base = settings.model_id
        cards = [{"id": base, "object": "model", "created": 0, "owned_by": "deal", "deal": {"policy": None}}]
        for name in settings.policy_names():
            policy = settings.find_policy(name)
            cards.append({"id": f"{base}:{name}", "object": "model", "created": 0, "owned_by": "deal",
                          "deal": {"policy": name, "description": policy.description,
                                   "strategy": policy.strategy}})
        return cards

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        """The served model and one ``MODEL:POLICY`` alias per policy."""
        return {"object": "list", "data": model_cards()}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def model(model_id: str) -> dict[str, Any]:
        for card in model_cards():
            if card["id"] == model_id:
                return card
        raise APIError(404, f"model {model_id!r} is not served here", param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and the scheduler's queue (no key needed)."""
        return {"status": "ok", "model": settings.model_id, **served.scheduler.stats()}

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        """Prometheus text: requests, tokens, forward passes, latency, queue depth, per strategy."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


# --------------------------------------------------------------------------- response bodies


async def _prefetched(first: list[str], ended: bool, rest: Any) -> AsyncIterator[str]:
    for delta in first:
        yield delta
    if not ended:
        async for delta in rest:
            yield delta


async def _choice_events(prepared: Prepared, index: int, stream: Any, deltas: AsyncIterator[str],
                         results: list[GenerationResult]) -> AsyncIterator[dict[str, Any]]:
    """The streamed pieces of one choice: text deltas, tool-call deltas, then its finish."""
    chat = prepared.kind == "chat"
    if chat:
        yield {"index": index, "delta": {"role": "assistant", "content": ""}}
    text, shown = "", ""
    async for delta in deltas:
        text += delta
        if prepared.forced:
            continue  # a forced call's JSON is sent as a tool-call delta once decoded
        visible = text[: streamable_length(text)].rstrip() if prepared.tools_on else text
        if len(visible) > len(shown) and visible.startswith(shown):
            piece, shown = visible[len(shown):], visible
            yield {"index": index, "delta": {"content": piece}} if chat else {"index": index, "text": piece}
    result = stream.result
    results.append(result)
    parsed = parse_output(prepared, result)
    rest = parsed.text[len(shown):] if parsed.text.startswith(shown) else ""
    if rest:
        yield {"index": index, "delta": {"content": rest}} if chat else {"index": index, "text": rest}
    for j, call in enumerate(tool_call_dicts(parsed.tool_calls)):
        yield {"index": index, "delta": {"tool_calls": [{"index": j, **call}]}}
    done = deal_block(result, prepared.requests[index], prepared.warnings)
    reason = finish_reason(result, parsed.tool_calls)
    if chat:
        yield {"index": index, "delta": {}, "finish_reason": reason, "deal": done}
    else:
        yield {"index": index, "text": "", "finish_reason": reason, "deal": done}


def _envelope(prepared: Prepared, rid: str, stamp: int, choice: dict[str, Any] | None, include_usage: bool,
              totals: dict[str, int] | None = None) -> dict[str, Any]:
    chat = prepared.kind == "chat"
    payload: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                               "created": stamp, "model": prepared.model_id}
    if choice is None:
        payload["choices"] = []
    else:
        choice.setdefault("finish_reason", None)
        choice.setdefault("logprobs", None)
        payload["choices"] = [choice]
    if include_usage:
        payload["usage"] = totals
    return payload


def _summary(prepared: Prepared, results: Sequence[GenerationResult]) -> dict[str, Any]:
    block = deal_block(results[0], prepared.requests[0], prepared.warnings)
    if len(results) > 1:
        block["forward_passes"] = {}
        for r in results:
            for k, v in r.stats.forward_passes.items():
                block["forward_passes"][k] = block["forward_passes"].get(k, 0) + v
    return block


def _chat_body(prepared: Prepared, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": created(), "model": prepared.model_id,
        "choices": [chat_choice(i, prepared, r, prepared.requests[i]) for i, r in enumerate(results)],
        "usage": usage(results, prepared.prompt_of_choice),
        "system_fingerprint": None,
        "deal": _summary(prepared, results),
    }


def _text_body(prepared: Prepared, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": created(), "model": prepared.model_id,
        "choices": [{"index": i, "text": r.text, "logprobs": None, "finish_reason": finish_reason(r),
                     "deal": deal_block(r, prepared.requests[i])} for i, r in enumerate(results)],
        "usage": usage(results, prepared.prompt_of_choice),
        "deal": _summary(prepared, results),
    }
