"""Prometheus metrics of ``deal serve``, per strategy, in a registry of the app's own.

``deal_requests_total{endpoint,strategy,status}`` (status: the HTTP status, or ``cancelled`` for a client
that went away), ``deal_tokens_total{strategy,kind}`` (kind: ``prompt`` or ``completion``),
``deal_forward_passes_total{strategy,model}``, ``deal_request_seconds{strategy}`` (a histogram of
whole-request latency), ``deal_queue_depth{strategy}`` (requests accepted and not yet producing
output), ``deal_running{strategy}`` (requests decoding), and ``deal_scheduler_queue_depth`` /
``deal_scheduler_running`` as the scheduler reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SchedulerCollector:
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        yield GaugeMetricFamily("deal_scheduler_queue_depth", "Requests waiting in the scheduler's queue",
                                value=float(stats.get("queue_depth", 0)))
        yield GaugeMetricFamily("deal_scheduler_running", "Requests the scheduler is decoding",
                                value=float(stats.get("running", 0)))


class ServerMetrics:
    """The server's counters; one instance per app so several apps in one process do not collide."""

    def __init__(self, scheduler_stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("deal_requests", "Requests by endpoint, strategy and outcome",
                                ["endpoint", "strategy", "status"], registry=r)
        self.tokens = Counter("deal_tokens", "Tokens read (prompt) and written (completion)",
                              ["strategy", "kind"], registry=r)
        self.forward_passes = Counter("deal_forward_passes", "Model calls by strategy and model",
                                      ["strategy", "model"], registry=r)
        self.latency = Histogram("deal_request_seconds", "Whole-request latency", ["strategy"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue_depth = Gauge("deal_queue_depth", "Requests accepted and not yet producing output",
                                 ["strategy"], registry=r)
        self.running = Gauge("deal_running", "Requests decoding", ["strategy"], registry=r)
        r.register(_SchedulerCollector(scheduler_stats))  # type: ignore[arg-type]

    def record_result(self, strategy: str, result: Any) -> None:
        """Counts a finished generation's tokens and forward passes."""
        stats = result.stats
        self.tokens.labels(strategy, "prompt").inc(stats.prompt_tokens)
        self.tokens.labels(strategy, "completion").inc(stats.new_tokens)
        for model, n in stats.forward_passes.items():
            self.forward_passes.labels(strategy, model).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
