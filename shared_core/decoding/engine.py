"""``generate`` and ``stream``: validate a request, run a strategy, and package the result.

Everything a user can get wrong is checked before a model is loaded or a forward pass runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

from shared_core.decoding.base import DecodeJob, PrefixCache, Strategy, get_strategy, validate_params
from shared_core.decoding.sampling import make_generator
from shared_core.decoding.stopping import StopState
from shared_core.decoding.urial_mode import UrialOptions, parse_urial_option, render_urial, urial_deltas
from shared_core.urial import find_answer_end
from shared_core.errors import ConfigError
from shared_core.models import LocalModel, load_model, validate_messages
from shared_core.result import GenerationResult, GenerationStats
from shared_core.rewards.base import Reward
from shared_core.rewards.runtime import final_score

Messages = Sequence[Mapping[str, Any]]
Prompt = Union[str, Messages]

DEFAULT_MAX_NEW_TOKENS = 256


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(m, Mapping) for m in value
    )


def split_batch(prompt_or_batch: Any) -> tuple[list[Prompt], bool]:
    """Returns (prompts, is_batch): a str or a message list is one prompt; a list of those is a batch."""
    if isinstance(prompt_or_batch, str) or _is_messages(prompt_or_batch):
        return [prompt_or_batch], False
    if isinstance(prompt_or_batch, Sequence) and len(prompt_or_batch) > 0:
        return list(prompt_or_batch), True
    raise ConfigError("prompt", "must be a non-empty string, a list of chat messages, or a list of those (a batch)")


def validate_prompt(prompt: Any, field: str = "prompt") -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError(field, "must be a non-empty string")
        return
    if _is_messages(prompt):
        validate_messages(prompt, field)
        return
    raise ConfigError(field, f"must be a non-empty string or a list of chat messages, got {type(prompt).__name__}")


def request_text(prompt: Prompt) -> str:
    """The user's request as rewards see it: the prompt string, or the last user message."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return str(prompt[-1].get("content") or "")


def validate_common(max_new_tokens: Any, stop: Any, seed: Any) -> tuple[str, ...]:
    """Checks the arguments every strategy shares; returns the stop strings as a tuple."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError("max_new_tokens", f"must be a positive integer, got {max_new_tokens!r}")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    else:
        stops = tuple(stop)
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"stop[{i}]", f"stop strings must be non-empty strings, got {s!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("seed", f"must be an integer or None, got {seed!r}")
    return stops


def resolve_reward(reward: Any) -> Reward | None:
    """Builds a Reward from a spec, JSON, policy name, callable or Reward (see ``shared_core.specs``)."""
    if reward is None:
        return None
    from shared_core.specs import build_reward

    return build_reward(reward)


def apply_policy(
    policy: str | None, strategy: str | None, reward: Any, params: dict[str, Any]
) -> tuple[str, Any, dict[str, Any]]:
    """Fills strategy, reward and parameters from a named policy; explicit arguments win.

    The rules are :mod:`shared_core.planning`'s; without a strategy, ``generate`` stays greedy (a
    reward alone is scored, not steered toward).
    """
    if policy is None:
        return strategy or "greedy", reward, params
    from shared_core.planning import choose_decoding, resolve_policy_name

    choice = choose_decoding(policy=resolve_policy_name(policy), strategy=strategy, reward=reward,
                             param_layers=[params])
    return choice.strategy, choice.reward, choice.params


class GenerationStream(Iterator[str]):
    """An iterator of text deltas; after it is exhausted, ``result`` holds the GenerationResult.

    The concatenated deltas equal ``result.text``.
    """

    def __init__(self, deltas: Iterator[str], finish: Any) -> None:
        self._deltas = deltas
        self._finish = finish
        self._result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration:
            if self._result is None:
                self._result = self._finish()
            raise

    def close(self) -> None:
        """Stops generation early (the result then reflects what was produced)."""
        close = getattr(self._deltas, "close", None)
        if close:
            close()

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            for _ in self:
                pass
        assert self._result is not None
        return self._result


class _Request:
    """A validated request: the checks run in the constructor, model work in ``jobs``."""

    def __init__(
        self,
        model: LocalModel | str,
        prompts: list[Prompt],
        *,
        strategy: str,
        reward: Any,
        max_new_tokens: int,
        stop: Any,
        seed: int | None,
        chat: bool | None,
        tools: Sequence[Mapping[str, Any]] | None,
        prefix: PrefixCache | None,
        params: dict[str, Any],
        urial: Any = False,
    ) -> None:
        if not isinstance(strategy, str):
            raise ConfigError("strategy", f"must be a strategy name, got {type(strategy).__name__}")
        self.strategy_cls: type[Strategy] = get_strategy(strategy)
        self.params = validate_params(self.strategy_cls, params)
        self.stops = validate_common(max_new_tokens, stop, seed)
        for i, prompt in enumerate(prompts):
            validate_prompt(prompt, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        self.urial: UrialOptions | None = parse_urial_option(urial)
        if self.urial is not None:
            from shared_core.urial import URIAL_STOP_STRINGS

            self.stops = self.stops + tuple(s for s in URIAL_STOP_STRINGS if s not in self.stops)
        self.reward = resolve_reward(reward)
        if self.strategy_cls.needs_reward and self.reward is None:
            raise ConfigError("reward", f"strategy {self.strategy_cls.name!r} needs a reward (a spec, a policy name or a callable)")
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.chat = chat
        self.tools = tools
        self.prefix = prefix
        self.model_arg = model

    def jobs(self) -> list[DecodeJob]:
        lm = self.model_arg if isinstance(self.model_arg, LocalModel) else load_model(self.model_arg)
        jobs = []
        for i, prompt in enumerate(self.prompts):
            stats = GenerationStats()
            prefix = self.prefix
            if self.urial is not None:
                ids, prefix = render_urial(lm, prompt, self.urial, self.max_new_tokens, stats)
            else:
                ids = lm.render(prompt, chat=self.chat, tools=self.tools)
            if len(ids) >= lm.context_window:
                raise ConfigError("prompt", f"is {len(ids)} tokens but the model's context window is {lm.context_window} tokens")
            stats.prompt_tokens = len(ids)
            seed = None if self.seed is None else self.seed + i
            jobs.append(DecodeJob(
                model=lm, prompt_ids=ids, prompt_text=request_text(prompt), params=self.params,
                reward=self.reward, max_new_tokens=self.max_new_tokens,
                generator=make_generator(seed, lm.device), stats=stats,
                state=StopState(lm.decode, lm.eos_token_ids, self.stops, self.max_new_tokens,
                                stop_finder=None if self.urial is None else find_answer_end),
                prefix=prefix, prompt=prompt, chat=self.chat,
            ))
        return jobs

    def result(self, job: DecodeJob, seconds: float) -> GenerationResult:
        state = job.state
        if not state.finished:
            state.finish("length")
        job.stats.new_tokens = len(state.token_ids)
        job.stats.seconds = seconds
        text = self.final_text(job)
        reward = final_score(self.reward, text, prompt=job.prompt_text) if self.reward is not None else None
        assert state.finish_reason is not None
        return GenerationResult(
            text=text, token_ids=list(state.token_ids), finish_reason=state.finish_reason,
            reward=reward, stats=job.stats, strategy=self.strategy_cls.name, model=job.model.name,
        )


    def final_text(self, job: DecodeJob) -> str:
        """The answer shown to the user: the decoded text, cleaned of URIAL's format when it is on."""
        if self.urial is not None:
            from shared_core.urial import parse_urial_answer

            return parse_urial_answer(_urial_raw_text(job))
        return job.state.text

    def deltas(self, strategy: Strategy, job: DecodeJob) -> Iterator[str]:
        """The text deltas a reader sees; they add up to :meth:`final_text`."""
        raw = _drive(strategy, job)
        if self.urial is not None:
            return urial_deltas(lambda: _urial_raw_text(job), raw)
        return raw


def _urial_raw_text(job: DecodeJob) -> str:
    """The continuation of a URIAL prompt, closed the way the format closes an answer once it has ended.

    A stop string or the structural stop cut the text *before* the closing fence, and a model may end
    with EOS instead of the fence; re-adding the end marker lets the parser pair an inner code block
    the model opened with a bare fence, instead of leaving that fence unbalanced in the answer.
    """
    from shared_core.urial import ANSWER_END

    state = job.state
    return state.text + ANSWER_END if state.finish_reason in ("stop", "eos") else state.text


def _drive(strategy: Strategy, job: DecodeJob) -> Iterator[str]:
    """Feeds a strategy's tokens into the job's stop state and yields safe text deltas."""
    tokens = strategy.decode(job)
    try:
        for chunk in tokens:
            done = job.state.push_many(chunk)
            delta = job.state.pop_delta()
            if delta:
                yield delta
            if done:
                break
    finally:
        tokens.close()  # type: ignore[attr-defined]
    if not job.state.finished:
        job.state.finish("length")
    delta = job.state.pop_delta()
    if delta:
        yield delta


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
    finally:
        steps.close()  # type: ignore[attr-defined]
    return True


def stream(
    model: LocalModel | str,
    prompt: Prompt,
    *,
    strategy: str | None = None,
    reward: Any = None,
    policy: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    chat: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    prefix: PrefixCache | None = None,
    urial: bool | str | Mapping[str, Any] | UrialOptions = False,
    **params: Any,
) -> GenerationStream:
    """Like :func:`generate` for one prompt, but returns an iterator of text deltas as they are decided.

    Example:
        >>> s = stream("smollm2", "Say hi.", max_new_tokens=16)   # doctest: +SKIP
        >>> text = "".join(s); s.result.finish_reason              # doctest: +SKIP
    """
    if not (isinstance(prompt, str) or _is_messages(prompt)):
        raise ConfigError("prompt", "stream takes one prompt (a string or a list of chat messages), not a batch")
    strategy, reward, params = apply_policy(policy, strategy, reward, params)
    request = _Request(model, [prompt], strategy=strategy, reward=reward, max_new_tokens=max_new_tokens,
                       stop=stop, seed=seed, chat=chat, tools=tools, prefix=prefix, params=params, urial=urial)
    started = time.perf_counter()
    holder: dict[str, DecodeJob] = {}

    def deltas() -> Iterator[str]:
        job = request.jobs()[0]
        holder["job"] = job
        yield from request.deltas(request.strategy_cls(), job)

    def finish() -> GenerationResult:
        return request.result(holder["job"], time.perf_counter() - started)

    return GenerationStream(deltas(), finish)


def generate(
    model: LocalModel | str,
    prompt: Prompt | Sequence[Prompt],
    *,
    strategy: str | None = None,
    reward: Any = None,
    policy: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    chat: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    prefix: PrefixCache | None = None,
    urial: bool | str | Mapping[str, Any] | UrialOptions = False,
    **params: Any,
) -> GenerationResult | list[GenerationResult]:
    """Generates a continuation with a decoding strategy, optionally steered by a reward.

    Args:
        model: a :class:`LocalModel` or anything :func:`load_model` accepts (``"smollm2"``).
        prompt: a string (sent as a user message to chat models), chat messages, or a list of those
            (a batch; the result is then a list).
        strategy: a registered strategy name (``list_strategies()``); ``"greedy"`` unless a policy names one.
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
            strategy; the preamble's KV cache is computed once per model and reused.
        **params: the strategy's own parameters (e.g. ``temperature`` for ``"sample"``).

    Example:
        >>> r = generate("smollm2", "Give me two tips for staying safe online.", max_new_tokens=64)  # doctest: +SKIP
        >>> r.text, r.finish_reason, r.stats.forward_passes                                           # doctest: +SKIP
    """
    prompts, is_batch = split_batch(prompt)
    strategy, reward, params = apply_policy(policy, strategy, reward, params)
    request = _Request(model, prompts, strategy=strategy, reward=reward, max_new_tokens=max_new_tokens,
                       stop=stop, seed=seed, chat=chat, tools=tools, prefix=prefix, params=params, urial=urial)
    jobs = request.jobs()
    strategy_obj = request.strategy_cls()
    if is_batch and len(jobs) > 1 and all(job.prefix is None for job in jobs):
        started = time.perf_counter()
        if _drive_batch(strategy_obj, jobs):
            seconds = time.perf_counter() - started
            for job in jobs:
                job.stats.extra["batch_size"] = len(jobs)
            return [request.result(job, seconds) for job in jobs]
    results = []
    for job in jobs:
        started = time.perf_counter()
        for _ in request.deltas(strategy_obj, job):
            pass
        results.append(request.result(job, time.perf_counter() - started))
    return results if is_batch else results[0]


def validate_request(
    prompt: Prompt | Sequence[Prompt],
    *,
    strategy: str | None = None,
    reward: Any = None,
    policy: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    urial: Any = False,
) -> None:
    """Runs every check :func:`generate` runs, without loading a model (the CLI calls it first)."""
    prompts, _ = split_batch(prompt)
    strategy, reward, merged = apply_policy(policy, strategy, reward, dict(params or {}))
    _Request("unused", prompts, strategy=strategy, reward=reward, max_new_tokens=max_new_tokens, stop=stop,
             seed=seed, chat=None, tools=None, prefix=None, params=merged, urial=urial)
