"""Carries DeAL's alignment reports into the answers of LlamaIndex query engines.

A query engine builds its ``Response`` from the synthesizer's text and the source nodes' metadata; what
the LLM returned besides the text (``raw``, ``additional_kwargs``) is dropped on the way. So that a RAG
answer still says which policy produced it and how it scored, a small span handler on LlamaIndex's
root instrumentation dispatcher opens a *collector* (a list) whenever a query engine's
``query``/``aquery`` span starts, in a context variable. Every DeAL call records its report into the
collectors open where it was called, and when the query span ends the handler stores the collector as
``response.metadata["deal"]``: a list with one report per LLM call, in call order.

Streaming answers generate after the query span has ended, when the caller reads
``response.response_gen``; the handler wraps that generator so the query's collector is open again
while each token is produced, and the same list fills as the stream is consumed. Spans that end with
an error drop their collector, so nothing leaks into later queries.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

METADATA_KEY = "deal"

Collector = list[dict[str, Any]]

# The collectors open in the current context, innermost last, each tagged with its span id.
_OPEN: ContextVar[tuple[tuple[str, Collector], ...]] = ContextVar("llamaindex_deal_collectors", default=())
_INSTALL_LOCK = threading.Lock()
_installed = False


def open_collectors() -> tuple[Collector, ...]:
    """The collectors a DeAL call starting now should record into (capture this before generating)."""
    return tuple(collector for _, collector in _OPEN.get())


def record(collectors: tuple[Collector, ...], entry: dict[str, Any]) -> None:
    """Adds one call's report to each collector (the query it ran in, and any enclosing query)."""
    for collector in collectors:
        collector.append(entry)


def _is_query_span(bound_args: inspect.BoundArguments, instance: Any) -> bool:
    return isinstance(instance, BaseQueryEngine) and "str_or_query_bundle" in bound_args.arguments


def _close(span_id: str) -> Collector | None:
    """Removes the collector of ``span_id`` (and any left open inside it) from the current context."""
    stack = _OPEN.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] == span_id:
            _OPEN.set(stack[:i])
            return stack[i][1]
    return None


class QueryReportHandler(BaseSpanHandler[Any]):
    """Opens a collector per query-engine query span and attaches it to the span's response."""

    @classmethod
    def class_name(cls) -> str:
        return "DeALQueryReportHandler"

    def span_enter(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                   parent_id: str | None = None, tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if _is_query_span(bound_args, instance):
            _OPEN.set((*_OPEN.get(), (id_, [])))

    def span_exit(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                  result: Any = None, **kwargs: Any) -> None:
        if not _is_query_span(bound_args, instance):
            return
        collector = _close(id_)
        if collector is None or not hasattr(result, "metadata"):
            return
        if result.metadata is None:
            result.metadata = {}
        # outer query spans of the same response see every inner call too, so the last one wins
        result.metadata[METADATA_KEY] = collector
        entry = (id_, collector)
        generator = getattr(result, "response_gen", None)
        if isinstance(generator, Generator):
            result.response_gen = _reopen(generator, entry)
        elif isinstance(generator, AsyncGenerator):
            result.response_gen = _areopen(generator, entry)

    def span_drop(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                  err: BaseException | None = None, **kwargs: Any) -> None:
        if _is_query_span(bound_args, instance):
            _close(id_)

    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None


def _reopen(tokens: Iterator[str], entry: tuple[str, Collector]) -> Iterator[str]:
    """Yields ``tokens`` with the query's collector open while each one is produced."""
    while True:
        reset = _OPEN.set((*_OPEN.get(), entry))
        try:
            token = next(tokens)
        except StopIteration:
            return
        finally:
            _OPEN.reset(reset)
        yield token


async def _areopen(tokens: AsyncIterator[str], entry: tuple[str, Collector]) -> AsyncIterator[str]:
    while True:
        reset = _OPEN.set((*_OPEN.get(), entry))
        try:
            token = await tokens.__anext__()
        except StopAsyncIteration:
            return
        finally:
            _OPEN.reset(reset)
        yield token


def install() -> None:
    """Registers the handler on the root dispatcher, once per process (DeAL calls this on creation)."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        get_dispatcher().add_span_handler(QueryReportHandler())
        _installed = True
