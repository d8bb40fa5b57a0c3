"""Serving many requests on one local model: continuous batching for plain decoding, fair turns for guided.

One background thread owns the model. Each turn of its loop it

1. admits queued requests, first come first served within each lane: a greedy or sampled request
   (up to ``max_batch`` rows) is prefilled on its own (the same forward ``generate`` runs, so its first
   token is the same) and joins the running batch; any other strategy (the reward-guided ones, URIAL,
   a request with a cached prefix; up to ``max_guided`` at once) gets an engine stream
   (:class:`~shared_core.decoding.GenerationStream`). The lanes have separate slots, so a burst of slow
   guided requests never holds plain ones in the queue;
2. runs either one batched forward for every running greedy/sampled row (:mod:`.batch`) or one
   turn of one guided request (round robin, one committed chunk through the normal engine). The two
   lanes share the device by time: whichever has used less time since both had work goes next, so
   neither starves the other;
3. hands each row's text deltas to its reader and ends the rows that finished or were cancelled,
   which leave the batch before the next forward.

Per-request settings stay per row: stop strings, ``max_new_tokens``, the seed, temperature/top-k/top-p
and the request's logits processors (repetition penalty). Greedy rows choose exactly as
``generate`` does alone; batched forwards are padded, so their logits may differ from a lone
forward in the last bits, as with ``generate`` on a batch of prompts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from shared_core.cancel import Cancelled, CancelToken
from shared_core.decoding.engine import GenerationStream, make_jobs, make_result
from shared_core.decoding.greedy import GREEDY, GreedyStrategy, SampleStrategy
from shared_core.errors import ConfigError, DealError
from shared_core.hf_compat import report_slow_path
from shared_core.models import LocalModel
from shared_core.request import Request
from shared_core.result import GenerationResult, GenerationStats
from shared_core.serving.batch import BatchRow, RunningBatch, choose_next, joinable_cache
from shared_core.serving.channel import DeltaChannel

__all__ = ["QueueFull", "ScheduledStream", "Scheduler", "SchedulerClosed"]

Lane = Literal["batch", "serial"]


class QueueFull(DealError):
    """The scheduler's queue is full; try again after ``retry_after`` seconds (an estimate)."""

    def __init__(self, queue_depth: int, max_queue: int, retry_after: float) -> None:
        self.queue_depth = queue_depth
        self.max_queue = max_queue
        self.retry_after = retry_after
        super().__init__(f"the queue is full ({queue_depth} of {max_queue} requests waiting); "
                         f"retry after about {retry_after:.2f} s")


class SchedulerClosed(DealError):
    """The scheduler was shut down; it takes no more requests."""


@dataclass(eq=False)
class _Entry:
    """One submitted request, from the queue to its result."""

    request: Request
    lane: Lane
    token: CancelToken
    channel: DeltaChannel = field(default_factory=DeltaChannel)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    job: Any = None  # the DecodeJob of a batch row
    stream: GenerationStream | None = None  # the engine stream of a guided request
    result: GenerationResult | None = None
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0  # tokens committed so far (batch rows)

    @property
    def done(self) -> bool:
        return self.ended.is_set()


class ScheduledStream(Iterator[str]):
    """A submitted request's text deltas, like :class:`~shared_core.decoding.GenerationStream`.

    Iterate it (``for delta in s``) or ``async for delta in s`` (waits without blocking the event
    loop); the deltas add up to ``result.text``. :meth:`close` / :meth:`cancel` from any thread stop
    decoding before the request's next forward pass and free its slot; ``result`` then holds what was
    generated, with ``finish_reason="cancelled"``. An async iteration that is abandoned (its task
    cancelled, or the loop left and the iterator dropped) cancels the request too, as does dropping
    an unfinished stream.
    """

    def __init__(self, entry: _Entry, wake: Any) -> None:
        self._entry = entry
        self._wake = wake
        self._closed = False

    @property
    def request(self) -> Request:
        return self._entry.request

    @property
    def lane(self) -> Lane:
        """``"batch"`` (continuous batching) or ``"serial"`` (engine turns: guided strategies, URIAL, prefixes)."""
        return self._entry.lane

    @property
    def tokens_generated(self) -> int:
        """Tokens committed so far (batch rows; a guided request reports its count at the end)."""
        entry = self._entry
        return len(entry.result.token_ids) if entry.result is not None else entry.tokens

    def __iter__(self) -> ScheduledStream:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        delta = self._entry.channel.get()
        if delta is None:
            raise StopIteration
        return delta

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        try:
            while not self._closed:
                delta = await self._entry.channel.aget()
                if delta is None:
                    return
                yield delta
        finally:
            if not self._entry.done:  # left early, cancelled or dropped: nobody reads the rest
                self.cancel()

    def cancel(self) -> None:
        """Asks decoding to stop before the request's next forward pass; safe from any thread."""
        if not self._entry.token.cancelled:
            self._entry.token.cancel()
            self._wake()

    @property
    def cancelled(self) -> bool:
        return self._entry.token.cancelled

    def close(self) -> None:
        """Stops the request; iteration ends and ``result`` reflects what was produced."""
        self._closed = True
        self.cancel()

    @property
    def done(self) -> bool:
        """Whether the result is known."""
        return self._entry.done

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the result is known; False on timeout."""
        return self._entry.ended.wait(timeout)

    @property
    def result(self) -> GenerationResult:
        """The GenerationResult, once the request has ended (waits for it); raises the error it failed with."""
        self._entry.ended.wait()
        if self._entry.error is not None:
            raise self._entry.error
        assert self._entry.result is not None
        return self._entry.result

    def __del__(self) -> None:
        try:
            if not self._entry.done:
                self.cancel()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def _cancelled_result(entry: _Entry, model: LocalModel) -> GenerationResult:
    """The result of a request cancelled before it ran."""
    return GenerationResult(text="", token_ids=[], finish_reason="cancelled", reward=None, stats=GenerationStats(),
                            strategy=entry.request.strategy_name, model=model.name)


class Scheduler:
    """Serves concurrent requests on one :class:`LocalModel` with continuous batching.

    Args:
        model: the loaded model every request runs on (a request's ``model`` may be ``None``, this
            model, or its name).
        max_batch: the most greedy/sampled requests decoding together (rows of the running batch).
        max_queue: the most requests waiting to start; :meth:`submit` raises :class:`QueueFull` beyond.
        max_guided: the most guided requests taking turns at once (default ``max(1, max_batch // 4)``);
            more only make each one slower, as they share the device turn by turn.

    Example:
        >>> sched = Scheduler(load_model("smollm2"))                              # doctest: +SKIP
        >>> s = sched.submit(Request.build(None, "Say hi.", max_new_tokens=16))   # doctest: +SKIP
        >>> "".join(s), s.result.finish_reason                                    # doctest: +SKIP
        >>> sched.shutdown()                                                      # doctest: +SKIP
    """

    def __init__(self, model: LocalModel, max_batch: int = 16, max_queue: int = 64,
                 max_guided: int | None = None) -> None:
        if not isinstance(model, LocalModel):
            raise ConfigError("model", f"must be a loaded LocalModel (load_model(...)), got {type(model).__name__}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError("max_batch", f"must be a positive integer, got {max_batch!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ConfigError("max_queue", f"must be a non-negative integer, got {max_queue!r}")
        if max_guided is None:
            max_guided = max(1, max_batch // 4)
        if isinstance(max_guided, bool) or not isinstance(max_guided, int) or max_guided < 1:
            raise ConfigError("max_guided", f"must be a positive integer, got {max_guided!r}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_guided = max_guided
        self._cond = threading.Condition()
        self._pending: deque[_Entry] = deque()
        self._batch = RunningBatch(model)
        self._serial: deque[_Entry] = deque()
        self._closing = False
        self._broken: BaseException | None = None  # an internal error that stopped the loop
        self._joinable: bool | None = None  # learnt from the first prefill's cache
        self._lane_seconds = {"batch": 0.0, "serial": 0.0}
        self._counts = {"submitted": 0, "rejected": 0, "completed": 0, "cancelled": 0, "failed": 0,
                        "batch_steps": 0, "serial_turns": 0, "batch_rows_stepped": 0, "tokens": 0}
        self._step_seconds = 0.05  # a running mean of one batched step, for retry estimates
        self._thread = threading.Thread(target=self._loop, name="deal-scheduler", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the public side

    def submit(self, request: Request) -> ScheduledStream:
        """Queues ``request`` (one prompt) and returns its stream.

        Raises:
            ConfigError: not a built Request, a batch, another model, or a prompt too long (before any model work).
            QueueFull: ``max_queue`` requests are already waiting.
            SchedulerClosed: after :meth:`shutdown`.
        """
        if not isinstance(request, Request):
            raise ConfigError("request", f"must be a built Request (Request.build(...)), got {type(request).__name__}")
        if request.batch:
            raise ConfigError("prompt", "the scheduler takes one prompt per request, not a batch; submit each")
        model = request.model
        if model is None or (isinstance(model, str) and model == self.model.name):
            request.model = self.model
        elif model is not self.model:
            raise ConfigError("model", f"this scheduler serves {self.model.name!r}; the request names "
                                       f"{getattr(model, 'name', model)!r}")
        if request.cancel is None:
            request.cancel = CancelToken()
        entry = _Entry(request=request, lane=self._lane_for(request), token=request.cancel)
        if entry.lane == "batch":
            entry.job = make_jobs(request)[0]  # renders and checks the prompt here, in the caller's thread
        with self._cond:
            if self._closing:
                if self._broken is not None:
                    raise SchedulerClosed(f"the scheduler stopped after an internal error: {self._broken!r}") \
                        from self._broken
                raise SchedulerClosed("the scheduler was shut down")
            if len(self._pending) >= self.max_queue:
                self._counts["rejected"] += 1
                raise QueueFull(len(self._pending), self.max_queue, self._retry_after())
            self._pending.append(entry)
            self._counts["submitted"] += 1
            self._cond.notify_all()
        return ScheduledStream(entry, self._wake)

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``queue_depth``, ``running`` (``running_batch`` + ``running_guided``), limits and counters."""
        with self._cond:
            running_batch, running_serial = len(self._batch), len(self._serial)
            counts = dict(self._counts)
            lanes = dict(self._lane_seconds)
            depth = len(self._pending)
        steps = counts["batch_steps"]
        return {
            "queue_depth": depth,
            "running": running_batch + running_serial,
            "running_batch": running_batch,
            "running_guided": running_serial,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "max_guided": self.max_guided,
            "continuous_batching": self._joinable is not False,
            "mean_batch_size": round(counts["batch_rows_stepped"] / steps, 3) if steps else 0.0,
            "lane_seconds": {k: round(v, 4) for k, v in lanes.items()},
            "closed": self._closing,
            **counts,
        }

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stops the loop: running and queued requests end as cancelled; the thread is joined."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----------------------------------------------------------------- decisions

    def _lane_for(self, request: Request) -> Lane:
        plain = request.strategy in (GreedyStrategy, SampleStrategy)
        if plain and request.urial is None and request.prefix is None and self._joinable is not False:
            return "batch"
        return "serial"

    def _retry_after(self) -> float:
        """About how long until a slot frees: the shortest remaining budget of a running row times a step."""
        remaining = [r.job.remaining for r in self._batch.rows]
        steps = min(remaining) if remaining else 20
        return round(min(30.0, max(0.05, steps * self._step_seconds)), 3)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        with torch.inference_mode():
            try:
                while True:
                    with self._cond:
                        while not self._closing and not self._admissible() and not self._batch.rows \
                                and not self._serial:
                            self._cond.wait()
                        if self._closing:
                            break
                        self._sweep_cancelled_pending()
                        admitted = self._take_admissible()
                    for entry in admitted:
                        self._admit(entry)
                    self._turn()
            except BaseException as exc:  # a bug in the loop itself: fail everyone loudly rather than hang them
                self._broken = exc
                with self._cond:
                    self._closing = True
                self._fail_everything(exc)
                raise
            finally:
                self._cancel_everything()

    def _room(self) -> dict[Lane, int]:
        return {"batch": self.max_batch - len(self._batch), "serial": self.max_guided - len(self._serial)}

    def _admissible(self) -> bool:
        """Whether a queued request (or a cancelled one to sweep) can be taken now (condition held)."""
        room = self._room()
        return any(e.token.cancelled or room[e.lane] > 0 for e in self._pending)

    def _take_admissible(self) -> list[_Entry]:
        """Queued requests whose lane has room, in arrival order (condition held); the rest keep their place."""
        room = self._room()
        taken, kept = [], deque()
        for entry in self._pending:
            if room[entry.lane] > 0:
                room[entry.lane] -= 1
                taken.append(entry)
            else:
                kept.append(entry)
        self._pending = kept
        return taken

    def _sweep_cancelled_pending(self) -> None:
        """Ends queued requests that were cancelled before they ran (called with the condition held)."""
        if any(e.token.cancelled for e in self._pending):
            keep = deque()
            for entry in self._pending:
                if entry.token.cancelled:
                    self._finish(entry, _cancelled_result(entry, self.model))
                else:
                    keep.append(entry)
            self._pending = keep

    def _turn(self) -> None:
        """One batched step or one guided turn, whichever lane has had less of the device."""
        has_batch, has_serial = bool(self._batch.rows), bool(self._serial)
        if not (has_batch and has_serial):
            self._lane_seconds = {"batch": 0.0, "serial": 0.0}  # no credit banked while alone
        if has_batch and (not has_serial or self._lane_seconds["batch"] <= self._lane_seconds["serial"]):
            self._timed("batch", self._batch_step)
        elif has_serial:
            self._timed("serial", self._serial_turn)

    def _timed(self, lane: Lane, work: Any) -> None:
        started = time.perf_counter()
        work()
        self._lane_seconds[lane] += time.perf_counter() - started

    # ----------------------------------------------------------------- admission

    def _admit(self, entry: _Entry) -> None:
        if entry.token.cancelled:
            self._finish(entry, _cancelled_result(entry, self.model))
            return
        entry.started = time.perf_counter()
        if entry.lane == "batch" and self._joinable is not False:
            started = time.perf_counter()
            try:
                self._join(entry)
            except Cancelled:
                self._finish(entry, _cancelled_result(entry, self.model))
            except Exception as exc:  # noqa: BLE001 - the request fails, the loop goes on
                self._fail(entry, exc)
            self._lane_seconds["batch"] += time.perf_counter() - started
            return
        entry.lane = "serial"
        entry.stream = GenerationStream(entry.request)
        self._serial.append(entry)

    def _join(self, entry: _Entry) -> None:
        """Prefills the request alone, commits its first token, and adds it to the running batch."""
        job = entry.job
        request = entry.request
        params = GREEDY if request.strategy is GreedyStrategy else request.params
        logits, cache = job.prefill()
        if self._joinable is None:
            self._joinable = joinable_cache(cache)
            if not self._joinable:
                report_slow_path(job.stats, "continuous_batching",
                                 f"{type(cache).__name__} of {self.model.name} has layers that cannot be padded and "
                                 "joined (sliding-window attention); requests run one engine turn at a time")
        if not self._joinable:
            entry.job = None
            entry.lane = "serial"
            entry.stream = GenerationStream(request)
            self._serial.append(entry)
            return
        row = BatchRow(job=job, params=params, owner=entry, position=len(job.prompt_ids))
        if self._commit(row, choose_next(job, params, logits)):
            self._end_row(row)
            return
        self._batch.join(row, cache, len(job.prompt_ids))

    # ----------------------------------------------------------------- the batch lane

    def _commit(self, row: BatchRow, token: int) -> bool:
        """Pushes a token into the row's stop state and sends the new text; True when the row has finished."""
        entry: _Entry = row.owner
        done = row.job.state.push(token)
        entry.tokens += 1
        self._counts["tokens"] += 1
        delta = row.job.state.pop_delta()
        if delta:
            entry.channel.put(delta)
        row.next_token = token
        return done

    def _batch_step(self) -> None:
        batch = self._batch
        keep = [i for i, row in enumerate(batch.rows) if not row.owner.token.cancelled]
        for i, row in enumerate(batch.rows):
            if row.owner.token.cancelled:
                row.job.state.finish("cancelled")
                self._end_row(row)
        batch.keep(keep)
        if not batch.rows:
            return
        started = time.perf_counter()
        try:
            logits = batch.step()
        except Exception as exc:  # noqa: BLE001 - every row of the failed forward fails; the loop goes on
            for row in batch.clear():
                self._fail(row.owner, exc)
            return
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.perf_counter() - started)
        self._counts["batch_steps"] += 1
        self._counts["batch_rows_stepped"] += len(batch.rows)
        rows = batch.rows
        plain = [i for i, row in enumerate(rows) if row.params.greedy and not row.job.processors]
        argmax = logits[plain].argmax(-1).tolist() if plain else []
        chosen: dict[int, int] = dict(zip(plain, argmax))
        keep = []
        for i, row in enumerate(rows):
            try:
                token = chosen[i] if i in chosen else choose_next(row.job, row.params, logits[i])
                done = self._commit(row, token)
            except Exception as exc:  # noqa: BLE001 - a failing processor fails its own row only
                self._fail(row.owner, exc)
                continue
            if done:
                self._end_row(row)
            else:
                keep.append(i)
        batch.keep(keep)

    def _end_row(self, row: BatchRow) -> None:
        entry: _Entry = row.owner
        job = row.job
        job.stats.extra["scheduler"] = {"lane": "batch", "batch_steps": row.steps, "max_batch_size": row.widest,
                                        "queued_seconds": round((entry.started or entry.submitted) - entry.submitted, 4)}
        try:
            result = make_result(entry.request, job, time.perf_counter() - (entry.started or entry.submitted))
        except Exception as exc:  # noqa: BLE001 - e.g. a reward that fails while scoring the answer
            self._fail(entry, exc)
            return
        self._finish(entry, result)

    # ----------------------------------------------------------------- the guided lane

    def _serial_turn(self) -> None:
        """One chunk of the guided request at the head of the round robin, through the normal engine."""
        entry = self._serial[0]  # it keeps its place (and its slot) during its turn
        stream = entry.stream
        assert stream is not None
        try:
            if entry.token.cancelled:
                stream.close()
                delta = None
            else:
                delta = next(stream, None)
        except Exception as exc:  # noqa: BLE001 - the request fails, the loop goes on
            self._serial.popleft()
            self._fail(entry, exc)
            return
        self._counts["serial_turns"] += 1
        if delta is not None:
            entry.channel.put(delta)
            self._serial.rotate(-1)  # to the back of the round robin
            return
        self._serial.popleft()
        try:
            result = stream.result
        except Exception as exc:  # noqa: BLE001
            self._fail(entry, exc)
            return
        result.stats.extra["scheduler"] = {
            "lane": "serial", "queued_seconds": round((entry.started or entry.submitted) - entry.submitted, 4)}
        self._finish(entry, result)

    # ----------------------------------------------------------------- endings

    def _finish(self, entry: _Entry, result: GenerationResult) -> None:
        entry.result = result
        key = "cancelled" if result.finish_reason == "cancelled" else "completed"
        self._counts[key] += 1
        entry.ended.set()
        entry.channel.end()

    def _fail(self, entry: _Entry, error: BaseException) -> None:
        entry.error = error
        self._counts["failed"] += 1
        entry.ended.set()
        entry.channel.end(error)

    def _fail_everything(self, error: BaseException) -> None:
        for row in self._batch.clear():
            self._fail(row.owner, error)
        while self._serial:
            self._fail(self._serial.popleft(), error)

    def _cancel_everything(self) -> None:
        """At shutdown: every running and queued request ends as cancelled with what it has."""
        for row in self._batch.clear():
            row.owner.token.cancel()
            row.job.state.finish("cancelled")
            self._end_row(row)
        while self._serial:
            entry = self._serial.popleft()
            entry.token.cancel()
            assert entry.stream is not None
            try:
                entry.stream.close()
                result = entry.stream.result
            except Exception as exc:  # noqa: BLE001
                self._fail(entry, exc)
                continue
            self._finish(entry, result)
        with self._cond:
            pending, self._pending = self._pending, deque()
        for entry in pending:
            entry.token.cancel()
            self._finish(entry, _cancelled_result(entry, self.model))

