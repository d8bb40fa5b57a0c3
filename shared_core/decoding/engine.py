"""``generate`` and ``stream``: run a :class:`~shared_core.request.Request` through its strategy and package the result.

Everything a user can get wrong is checked when the request is built (``Request.build``), before a
model is loaded or a forward pass runs. The engine then renders the prompts, composes the request's
logits processors, drives the strategy (its committed tokens go through the stop rules), and reports
the result with the reward's verdict.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from shared_core.cancel import Cancelled, CancelToken
from shared_core.decoding.base import DecodeJob, PrefixCache, Strategy
from shared_core.decoding.stopping import StopState
from shared_core.decoding.urial_mode import UrialOptions, render_urial, urial_deltas
from shared_core.errors import ConfigError
from shared_core.models import LocalModel, load_model
from shared_core.processors.base import LogitsProcessorList
from shared_core.processors.repetition import RepetitionPenaltyProcessor
from shared_core.processors.sampling import make_generator
from shared_core.request import DEFAULT_MAX_NEW_TOKENS, Prompt, Request, request_text
from shared_core.result import GenerationResult, GenerationStats
from shared_core.rewards.runtime import final_score
from shared_core.urial import ANSWER_END, find_answer_end, parse_urial_answer

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "GenerationStream", "generate", "stream", "validate_request"]


# --------------------------------------------------------------------------- jobs


def resolve_model(model: Any) -> LocalModel:
    """The loaded model a request names (a :class:`LocalModel` is used as is)."""
    return model if isinstance(model, LocalModel) else load_model(model)


def processors_for(request: Request, lm: LocalModel) -> LogitsProcessorList:
    """The request's logits processors for ``lm`` (the repetition penalty, when it is on)."""
    processors = LogitsProcessorList()
    settings = request.repetition
    penalty = settings.repetition_penalty
    if penalty is not None and penalty != 1.0:
        exempt = frozenset() if settings.penalize_layout else lm.layout_token_ids
        processors.append(RepetitionPenaltyProcessor(penalty, exempt))
    return processors


def _remote(request: Request) -> Any:
    """The remote-backend module when ``request`` decodes on a remote model (``connect_model``), else None."""
    from shared_core.backends import remote_decoding  # imported here: it builds on the strategy modules

    return remote_decoding if remote_decoding.is_remote(request.model) else None


def _strategy(request: Request) -> Strategy:
    """The strategy that decodes ``request``: its remote implementation on a remote model."""
    remote = _remote(request)
    return remote.strategy_for(request) if remote is not None else request.strategy()


def make_jobs(request: Request) -> list[DecodeJob]:
    """One decode job per prompt: the model loaded, the prompt rendered and checked against the context window."""
    remote = _remote(request)
    if remote is not None:  # rendered to token ids for the server; no weights here
        return remote.remote_jobs(request)
    lm = resolve_model(request.model)
    processors = processors_for(request, lm)
    jobs = []
    for i, prompt in enumerate(request.prompts):
        stats = GenerationStats()
        prefix = request.prefix
        if request.urial is not None:
            ids, prefix = render_urial(lm, prompt, request.urial, request.max_new_tokens, stats)
        else:
            ids = lm.render(prompt, chat=request.chat, tools=request.tools)
        if len(ids) >= lm.context_window:
            raise ConfigError("prompt", f"is {len(ids)} tokens but the model's context window is "
                                        f"{lm.context_window} tokens")
        stats.prompt_tokens = len(ids)
        stats.extra["planned"] = request.plan.chosen_by
        seed = None if request.seed is None else request.seed + i
        jobs.append(DecodeJob(
            model=lm, prompt_ids=ids, prompt_text=request_text(prompt), params=request.params,
            reward=request.reward, max_new_tokens=request.max_new_tokens,
            generator=make_generator(seed, lm.device), stats=stats,
            state=StopState(lm.decode, lm.eos_token_ids, request.stop, request.max_new_tokens,
                            stop_finder=None if request.urial is None else find_answer_end),
            prefix=prefix, prompt=prompt, chat=request.chat, processors=processors, cancel=request.cancel,
        ))
    return jobs


# --------------------------------------------------------------------------- results


def _urial_raw_text(job: DecodeJob) -> str:
    """The continuation of a URIAL prompt, closed the way the format closes an answer once it has ended.

    A stop string or the structural stop cut the text *before* the closing fence, and a model may end
    with EOS instead of the fence; re-adding the end marker lets the parser pair an inner code block
    the model opened with a bare fence, instead of leaving that fence unbalanced in the answer.
    """
    state = job.state
    return state.text + ANSWER_END if state.finish_reason in ("stop", "eos") else state.text


def final_text(request: Request, job: DecodeJob) -> str:
    """The answer shown to the user: the decoded text, cleaned of URIAL's format when it is on."""
    if request.urial is not None:
        return parse_urial_answer(_urial_raw_text(job))
    return job.state.text


def make_result(request: Request, job: DecodeJob, seconds: float) -> GenerationResult:
    """The job's GenerationResult; the reward's verdict unless it was cancelled (see ``final_score``)."""
    state = job.state
    if not state.finished:
        state.finish("length")
    job.stats.new_tokens = len(state.token_ids)
    job.stats.seconds = seconds
    text = final_text(request, job)
    reward, error = None, None
    if request.reward is not None and state.finish_reason != "cancelled":
        reward, error = final_score(request.reward, text, prompt=job.prompt_text, stats=job.stats)
    assert state.finish_reason is not None
    return GenerationResult(
        text=text, token_ids=list(state.token_ids), finish_reason=state.finish_reason, reward=reward,
        stats=job.stats, strategy=request.strategy_name, model=job.model.name, reward_error=error,
    )


def _cancelled_before_start(request: Request) -> GenerationResult:
    """The result of a stream closed before its first step: no text, no model work."""
    name = request.model.name if isinstance(request.model, LocalModel) else str(request.model)
    return GenerationResult(text="", token_ids=[], finish_reason="cancelled", reward=None, stats=GenerationStats(),
                            strategy=request.strategy_name, model=name)


# --------------------------------------------------------------------------- driving a strategy


def _drive(strategy: Strategy, job: DecodeJob) -> Iterator[str]:
    """Feeds a strategy's tokens into the job's stop state and yields safe text deltas.

    A cancelled request (its token checked before every forward pass and between chunks) ends the
    sequence with ``finish_reason="cancelled"``.
    """
    tokens = strategy.decode(job)
    try:
        for chunk in tokens:
            done = job.state.push_many(chunk)
            delta = job.state.pop_delta()
            if delta:
                yield delta
            if done:
                break
            job.check_cancelled()
    except Cancelled:
        job.state.finish("cancelled")
    finally:
        tokens.close()  # type: ignore[attr-defined]
    if not job.state.finished:
        job.state.finish("length")
    delta = job.state.pop_delta()
    if delta:
        yield delta


def _deltas(request: Request, strategy: Strategy, job: DecodeJob) -> Iterator[str]:
    """The text deltas a reader sees; they add up to :func:`final_text`."""
    raw = _drive(strategy, job)
    if request.urial is not None:
        return urial_deltas(lambda: _urial_raw_text(job), raw)
    return raw


def _drive_batch(strategy: Strategy, jobs: list[DecodeJob]) -> bool:
    """Runs a batch through the strategy's batched decoder; False when it has none."""
    steps = strategy.decode_batch(jobs)
    if steps is None:
        return False
    try:
        for chunks in steps:
            for job, chunk in zip(jobs, chunks):
                if chunk and not job.finished:
                    job.state.push_many(chunk)
            if all(job.finished for job in jobs):
                break
            jobs[0].check_cancelled()
    except Cancelled:
        for job in jobs:
            job.state.finish("cancelled")
    finally:
        steps.close()  # type: ignore[attr-defined]
    return True


class GenerationStream(Iterator[str]):
    """An iterator of text deltas; after it is exhausted, ``result`` holds the GenerationResult.

    The concatenated deltas equal ``result.text``. :meth:`close` (or :meth:`cancel`, from any thread)
    stops decoding before the next forward pass; ``result`` then holds what was generated so far,
    with ``finish_reason="cancelled"``.
    """

    def __init__(self, request: Request) -> None:
        if request.cancel is None:
            request.cancel = CancelToken()
        self._request = request
        self._token = request.cancel
        self._job: DecodeJob | None = None
        self._result: GenerationResult | None = None
        self._started = time.perf_counter()
        self._deltas = self._run()
        self._lock = threading.Lock()
        self._ended = threading.Event()  # set once ``result`` is known

    def _run(self) -> Iterator[str]:
        self._token.check()
        job = make_jobs(self._request)[0]
        self._job = job
        self._started = time.perf_counter()
        yield from _deltas(self._request, _strategy(self._request), job)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except (StopIteration, Cancelled):
            self._finish()
            raise StopIteration from None

    def _finish(self) -> None:
        with self._lock:
            if self._result is not None:
                return
            if self._job is None:
                self._result = _cancelled_before_start(self._request)
            else:
                if not self._job.state.finished and self._token.cancelled:
                    self._job.state.finish("cancelled")
                self._result = make_result(self._request, self._job, time.perf_counter() - self._started)
            self._ended.set()

    def cancel(self) -> None:
        """Asks decoding to stop before its next forward pass; safe from any thread, at any time."""
        self._token.cancel()

    @property
    def cancelled(self) -> bool:
        return self._token.cancelled

    def close(self) -> None:
        """Stops generation early; ``result`` then reflects what was produced (``finish_reason="cancelled"``).

        From another thread while a step runs, decoding stops before its next forward pass and that
        thread's ``next()`` ends the stream.
        """
        self._token.cancel()
        try:
            self._deltas.close()  # type: ignore[attr-defined]
        except ValueError:  # "generator already executing": running in another thread, which stops on its own
            return
        self._finish()

    @property
    def result(self) -> GenerationResult:
        """The GenerationResult; reads the rest of the stream first when it has not ended.

        While another thread is inside ``next()`` (a stream closed from outside its reading thread),
        this waits for that thread to end the stream instead of reading it at the same time.
        """
        while self._result is None:
            if getattr(self._deltas, "gi_running", False):
                self._ended.wait(0.05)
                continue
            for _ in self:
                pass
        assert self._result is not None
        return self._result


# --------------------------------------------------------------------------- entry points


#: The keyword arguments of :func:`generate` and :func:`stream` besides the strategy's parameters, with
#: their defaults (a built Request carries its own, so passing any of them with one is an error).
_OPTION_DEFAULTS: dict[str, Any] = {
    "strategy": None, "reward": None, "policy": None, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "stop": None,
    "seed": None, "chat": None, "tools": None, "prefix": None, "urial": False, "cancel": None,
}


def _as_request(model: Any, prompt: Any, options: dict[str, Any], params: dict[str, Any]) -> Request:
    """The request a call describes: a built Request passed alone, or one built from the arguments."""
    if isinstance(model, Request):
        given = sorted(k for k, v in options.items() if v != _OPTION_DEFAULTS[k]) + sorted(params)
        if prompt is not None or given:
            raise ConfigError(given[0] if given else "prompt",
                              "a built Request carries its own prompt and settings; pass it alone")
        return model
    if prompt is None:
        raise ConfigError("prompt", "missing: pass a model and a prompt, or a built Request")
    return Request.build(model, prompt, **options, **params)


def stream(
    model: LocalModel | str | Request,
    prompt: Prompt | None = None,
    *,
    strategy: str | None = None,
    reward: Any = None,
    policy: Any = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    chat: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    prefix: PrefixCache | None = None,
    urial: bool | str | Mapping[str, Any] | UrialOptions = False,
    cancel: CancelToken | None = None,
    **params: Any,
) -> GenerationStream:
    """Like :func:`generate` for one prompt, but returns an iterator of text deltas as they are decided.

    Takes the same arguments as :func:`generate`, or a single :class:`~shared_core.request.Request`.

    Example:
        >>> s = stream("smollm2", "Say hi.", max_new_tokens=16)   # doctest: +SKIP
        >>> text = "".join(s); s.result.finish_reason              # doctest: +SKIP
    """
    options = dict(strategy=strategy, reward=reward, policy=policy, max_new_tokens=max_new_tokens, stop=stop,
                   seed=seed, chat=chat, tools=tools, prefix=prefix, urial=urial, cancel=cancel)
    request = _as_request(model, prompt, options, params)
    if request.batch:
        raise ConfigError("prompt", "stream takes one prompt (a string or a list of chat messages), not a batch")
    remote = _remote(request)
    if remote is not None:
        remote.check_backend(request)  # a strategy the backend cannot serve is refused before any request
    return GenerationStream(request)


def generate(
    model: LocalModel | str | Request,
    prompt: Prompt | Sequence[Prompt] | None = None,
    *,
    strategy: str | None = None,
    reward: Any = None,
    policy: Any = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    chat: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    prefix: PrefixCache | None = None,
    urial: bool | str | Mapping[str, Any] | UrialOptions = False,
    cancel: CancelToken | None = None,
    **params: Any,
) -> GenerationResult | list[GenerationResult]:
    """Generates a continuation with a decoding strategy, steered by a reward when one is given.

    Args:
        model: a :class:`LocalModel` or anything :func:`load_model` accepts (``"smollm2"``); or a
            built :class:`~shared_core.request.Request` (then nothing else is passed).
        prompt: a string (sent as a user message to chat models), chat messages, or a list of those
            (a batch; the result is then a list).
        strategy: a registered strategy name (``list_strategies()``). Default: the policy's; else the
            one that moves the reward (``deal`` for keywords and length budgets, ``args`` for a
            classifier, ``best_of_n`` for safety and Python functions, ``genarm`` for ARMs); else
            greedy (``sample`` when ``temperature > 0``). Name ``"greedy"`` to only *score* a reward.
        reward: a reward spec (dict or JSON), a policy name, a callable ``texts -> scores``, or a Reward.
        policy: a registered policy name: its reward, strategy and parameters are the defaults, and
            explicit arguments override them.
        max_new_tokens: the most tokens to generate (> 0).
        stop: stop strings; generation ends before the first one, which is not returned.
        seed: makes sampling reproducible.
        chat: force (True) or skip (False) the chat template for a string prompt.
        tools: tool schemas (OpenAI format) rendered through the chat template.
        urial: align with the URIAL in-context prompt instead of the chat template: ``True`` (the
            "safe" variant), ``"help"``, or ``{"variant", "examples", "preamble"}``. Works with any
            strategy; the preamble's KV cache is computed once per model and reused. Its default
            ``repetition_penalty`` is 1.2.
        cancel: a :class:`~shared_core.cancel.CancelToken`; cancelling it stops decoding before the
            next forward pass (``finish_reason="cancelled"``).
        **params: the strategy's own parameters (e.g. ``temperature`` for ``"sample"``), and, for every
            strategy, ``repetition_penalty`` and ``penalize_layout``.

    Example:
        >>> r = generate("smollm2", "Give me two tips for staying safe online.", max_new_tokens=64)  # doctest: +SKIP
        >>> r.text, r.finish_reason, r.stats.forward_passes                                           # doctest: +SKIP
    """
    options = dict(strategy=strategy, reward=reward, policy=policy, max_new_tokens=max_new_tokens, stop=stop,
                   seed=seed, chat=chat, tools=tools, prefix=prefix, urial=urial, cancel=cancel)
    return run(_as_request(model, prompt, options, params))


def run(request: Request) -> GenerationResult | list[GenerationResult]:
    """Decodes a built request: one result, or a list for a batch."""
    strategy = _strategy(request)  # on a remote model, refuses a strategy it cannot serve before any request
    jobs = make_jobs(request)
    if request.batch and len(jobs) > 1 and all(job.prefix is None for job in jobs):
        started = time.perf_counter()
        if _drive_batch(strategy, jobs):
            seconds = time.perf_counter() - started
            for job in jobs:
                job.stats.extra["batch_size"] = len(jobs)
            return [make_result(request, job, seconds) for job in jobs]
    results = []
    for job in jobs:
        started = time.perf_counter()
        for _ in _deltas(request, strategy, job):
            pass
        results.append(make_result(request, job, time.perf_counter() - started))
    return results if request.batch else results[0]


def validate_request(prompt: Prompt | Sequence[Prompt], *, params: dict[str, Any] | None = None,
                     **kwargs: Any) -> Request:
    """Runs every check :func:`generate` runs, without loading a model (the CLI calls it first).

    ``params`` are the strategy's parameters (as ``**params`` of :func:`generate`); the other keyword
    arguments are :func:`generate`'s. Returns the built request (its model is ``None``).
    """
    return Request.build(None, prompt, **kwargs, **dict(params or {}))
