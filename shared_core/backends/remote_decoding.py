"""Strategies on a remote backend: the same strategies, driven through ``/v1/completions`` requests.

The engine (``generate``/``stream``) hands a request whose model is a
:class:`~shared_core.backends.remote.RemoteModel` to this module: :func:`check_backend` refuses a
strategy the backend cannot serve (before any request), :func:`remote_jobs` renders the prompts to
token ids (URIAL included; the server's prefix cache keeps the preamble), and :func:`strategy_for`
gives the remote implementation of the strategy. Rewards are scored in this process, on text.

Round trips (each one ``/v1/completions`` request; ``stats.extra["requests"]`` counts them):

* ``greedy`` / ``sample``: one streamed request.
* ``best_of_n``: one request with ``n`` (two with ``include_greedy``: the greedy row separately).
* ``deal``: one request for the first top-k, then one per search: every candidate (top-k token of
  each live hypothesis) rolled out greedily as a list of token-id prompts, with the top-k at each
  position, which are the next search's candidates. Rollouts share the committed prefix, which the
  server's prefix cache serves.
* ``args``: one ``max_tokens=1, logprobs=k`` request per token (the top-k it re-ranks).
* ``speculative_rejection``: one request with ``n`` up to the first check, then one per check
  continuing the survivors (a list of prompts).
* ``cards``: one request per try (``candidates`` segments, top-20 log-probs per position for the
  entropy that ends a segment).
* a batch of prompts with ``greedy`` (or unseeded ``sample``): one request with the list of prompts.

The request's logits processors cannot run on the server: a repetition penalty is sent as the
server's ``repetition_penalty`` (layout tokens are not exempt there); the rest have no remote form.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch

from shared_core.backends.capabilities import check_capabilities
from shared_core.backends.remote import Completion, RemoteModel
from shared_core.decoding.args import TextRewardCache
from shared_core.decoding.base import DecodeJob, Strategy
from shared_core.decoding.candidates import stopped_by_string
from shared_core.decoding.cards import _Candidate as _Segment_Candidate
from shared_core.decoding.cards import _Cards, _Segment
from shared_core.decoding.lookahead import _Hypothesis, _NextTokens, _Rollout, _Search, search_loop
from shared_core.decoding.speculative_rejection import _Candidate, check_lengths
from shared_core.decoding.speculative_rejection import _Search as _RejectionSearch
from shared_core.decoding.stopping import StopState
from shared_core.errors import ConfigError
from shared_core.processors.sampling import SamplingParams, choose_tokens, make_generator
from shared_core.request import Request, request_text
from shared_core.result import GenerationStats
from shared_core.urial import check_fits, find_answer_end, urial_prompt

__all__ = ["REMOTE_STRATEGIES", "RemoteJob", "check_backend", "is_remote", "remote_jobs", "strategy_for"]


def is_remote(model: Any) -> bool:
    """Whether ``model`` is a remote backend handle (from ``connect_model``)."""
    return isinstance(model, RemoteModel)


@dataclass
class RemoteJob(DecodeJob):
    """A decode job on a remote model: what the server is told besides the prompt."""

    seed: int | None = None
    repetition_penalty: float | None = None

    @property
    def remote(self) -> RemoteModel:
        assert isinstance(self.model, RemoteModel)
        return self.model

    @property
    def max_tokens(self) -> int:
        """Tokens the server may still generate: the remaining budget, within the context window."""
        used = len(self.prompt_ids) + len(self.committed)
        return max(1, min(self.remaining, self.remote.context_window - used))


# --------------------------------------------------------------------------- checks and jobs


def check_backend(request: Request) -> None:
    """Refuses (ConfigError on ``strategy``) a strategy the request's remote backend cannot serve; no request is sent."""
    model = request.model
    if not is_remote(model):
        return
    strategy = request.strategy
    check_capabilities(strategy.name, strategy.needs, model.backend_name, model.capabilities)
    if strategy.name not in REMOTE_STRATEGIES:
        raise ConfigError(
            "strategy",
            f"strategy {strategy.name!r} has no remote implementation for backend {model.backend_name!r} (it runs "
            f"on in-process logits); strategies served remotely: {', '.join(sorted(REMOTE_STRATEGIES))}",
        )
    if request.tools:
        raise ConfigError("tools", f"tool schemas are rendered for local models only; backend {model.backend_name!r} "
                                   "takes plain prompts")
    if request.prefix is not None:
        raise ConfigError("prefix", "a KV-cache prefix belongs to a local model; the remote server's prefix cache "
                                    "reuses shared prefixes by itself")


def remote_jobs(request: Request) -> list[DecodeJob]:
    """One job per prompt: rendered to token ids here (the chat template, or URIAL's prompt), checked to fit."""
    remote: RemoteModel = request.model
    jobs: list[DecodeJob] = []
    penalty = request.repetition.repetition_penalty
    for i, prompt in enumerate(request.prompts):
        stats = GenerationStats()
        stats.extra.update(backend="remote", base_url=remote.base_url, requests=0, tokens_proposed=0)
        if request.urial is not None:
            parts = urial_prompt(prompt, **request.urial.kwargs())
            prefix_ids = remote.encode(parts.prefix, add_special_tokens=True)
            suffix_ids = remote.encode(parts.suffix)
            check_fits(len(prefix_ids), remote.context_window, reserve_tokens=len(suffix_ids) + request.max_new_tokens)
            ids = prefix_ids + suffix_ids
            stats.extra["urial_preamble_tokens"] = len(prefix_ids)
        else:
            ids = remote.render(prompt, chat=request.chat)
        if len(ids) >= remote.context_window:
            raise ConfigError("prompt", f"is {len(ids)} tokens but the served model's context window is "
                                        f"{remote.context_window} tokens")
        stats.prompt_tokens = len(ids)
        stats.extra["planned"] = request.plan.chosen_by
        if penalty is not None and penalty != 1.0:
            stats.extra["repetition_penalty"] = "server (layout tokens not exempt)"
        seed = None if request.seed is None else request.seed + i
        jobs.append(RemoteJob(
            model=remote, prompt_ids=ids, prompt_text=request_text(prompt), params=request.params,  # type: ignore[arg-type]
            reward=request.reward, max_new_tokens=request.max_new_tokens,
            generator=make_generator(seed, torch.device("cpu")), stats=stats,
            state=StopState(remote.decode, remote.eos_token_ids, request.stop, request.max_new_tokens,
                            stop_finder=None if request.urial is None else find_answer_end),
            prompt=prompt, chat=request.chat, cancel=request.cancel, seed=seed,
            repetition_penalty=None if penalty == 1.0 else penalty,
        ))
    return jobs


def _end(job: RemoteJob, finish_reason: str | None) -> None:
    """Ends the job where the server ended it: EOS elided from the ids, or a stop string."""
    if job.finished or finish_reason != "stop":
        return
    job.state.finish("stop" if job.state.stop_strings or job.state.stop_finder else "eos")


# --------------------------------------------------------------------------- plain decoding


def _plain(job: RemoteJob, params: SamplingParams) -> Iterator[Sequence[int]]:
    """Greedy or sampling: one streamed request; the server's token ids are committed as they arrive."""
    tokens = job.remote.stream_tokens(
        job.prompt_ids, max_tokens=job.max_tokens, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k, seed=job.seed, stop=job.state.stop_strings, repetition_penalty=job.repetition_penalty,
        stats=job.stats)
    try:
        for ids, finish in tokens:
            if ids:
                yield ids
            if finish:
                _end(job, finish)
                return
    finally:
        tokens.close()  # type: ignore[attr-defined]


def _plain_batch(jobs: list[RemoteJob], params: SamplingParams) -> Iterator[list[Sequence[int]]]:
    """Several prompts' continuations in one request; each job's stats count the request it shared."""
    first = jobs[0]
    outs = first.remote.complete(
        [job.prompt_ids for job in jobs], n=1, max_tokens=min(job.max_tokens for job in jobs),
        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, stop=first.state.stop_strings,
        repetition_penalty=first.repetition_penalty)
    for job, (out,) in zip(jobs, outs):
        job.stats.extra.update(requests=1, prompt_tokens_sent=len(job.prompt_ids), tokens_proposed=len(out.token_ids),
                               shared_request=len(jobs))
    yield [out.token_ids for (out,) in outs]
    for job, (out,) in zip(jobs, outs):
        _end(job, out.finish_reason)


def _greedy(job: RemoteJob) -> Iterator[Sequence[int]]:
    return _plain(job, SamplingParams(temperature=0.0))


def _sample(job: RemoteJob) -> Iterator[Sequence[int]]:
    return _plain(job, job.params)


# --------------------------------------------------------------------------- best-of-n


def _best_of_n(job: RemoteJob) -> Iterator[Sequence[int]]:
    """n samples in one request (``n``), scored here; the best is committed."""
    p = job.params
    remote = job.remote
    sampled = p.n - 1 if p.include_greedy else p.n
    common = dict(max_tokens=job.max_tokens, stop=job.state.stop_strings,
                  repetition_penalty=job.repetition_penalty, stats=job.stats, logprobs=None)
    completions: list[Completion] = []
    if p.include_greedy:
        completions += remote.propose(job.prompt_ids, 1, temperature=0.0, **common)  # type: ignore[arg-type]
    if sampled > 0:
        completions += remote.propose(job.prompt_ids, sampled, temperature=p.temperature, seed=job.seed,
                                      top_p=p.top_p, top_k=p.top_k, **common)  # type: ignore[arg-type]
    samples = [c.token_ids for c in completions]
    scores = TextRewardCache(job)(samples)
    best = max(range(len(samples)), key=lambda i: scores[i])
    job.stats.extra.update(samples=len(samples), sample_tokens=sum(len(s) for s in samples),
                           sample_scores=scores, chosen=best)
    yield samples[best]
    _end(job, completions[best].finish_reason)


# --------------------------------------------------------------------------- ARGS


def _args(job: RemoteJob) -> Iterator[Sequence[int]]:
    """ARGS: the server's top-k next tokens (one request per token), re-ranked here by log-prob + weight * reward."""
    p = job.params
    plain = SamplingParams(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    texts = TextRewardCache(job) if p.weight > 0 else None
    if texts is not None:
        job.stats.extra["reward_scoring"] = "text"
    steps = 0
    while True:
        ids, logprobs = job.remote.top_next(job.prompt_ids + job.committed, p.top_k, stats=job.stats)
        if not ids:
            return
        scores = torch.tensor(logprobs, dtype=torch.float32)
        if texts is not None:
            rewards = torch.tensor(texts([[*job.committed, c] for c in ids]), dtype=torch.float32)
            scores = scores + p.weight * rewards
            steps += 1
            job.stats.extra["candidates_scored"] = steps * len(ids)
        token = ids[int(choose_tokens(scores.unsqueeze(0), plain, job.generator)[0])]
        yield (token,)
        if job.finished:
            return


# --------------------------------------------------------------------------- DeAL


class _RemoteDeal:
    """DeAL's lookahead search (``shared_core.decoding.lookahead``) with rollouts computed by the server.

    The ranking (tiers, reward, clean endings, fluency), the "end here" candidates, the held-back
    fallback and the repair of premature endings are the local search's own code; only where tokens
    and top-k come from differs.
    """

    def __init__(self, job: RemoteJob) -> None:
        self.job = job
        self.params = job.params
        self.search = _Search(job, job.params)
        self.remote = job.remote
        self.eos = job.remote.eos_token_ids
        self.nexts: dict[int, list[_NextTokens]] = {}

    def next_tokens(self, top: Sequence[tuple[int, float]], *, no_ending: bool = False) -> _NextTokens:
        pairs = [(t, lp) for t, lp in top if not (no_ending and self.search.closes(t))][: self.params.top_k]
        eos = [lp for t, lp in top if t in self.eos]
        if eos:
            eos_lp = max(eos)
        else:  # EOS is below the top-k: its log-prob is at most the lowest one shown
            eos_lp = min((lp for _, lp in top), default=0.0) - math.log(2.0)
        return _NextTokens(torch.tensor([lp for _, lp in pairs], dtype=torch.float32),
                           torch.tensor([t for t, _ in pairs], dtype=torch.long), eos_lp)

    def first(self, tokens: list[int], *, no_ending: bool = False) -> _NextTokens:
        k = self.params.top_k
        if no_ending:  # room to skip ending tokens, within what servers return (vLLM: 20 by default)
            k = max(k, min(k + 16, self.remote.max_logprobs))
        ids, logprobs = self.remote.top_next(self.job.prompt_ids + tokens, k, stats=self.job.stats)
        return self.next_tokens(list(zip(ids, logprobs)), no_ending=no_ending)

    def expand(self, live: list[_Hypothesis], budget: int) -> list[_Rollout]:
        """Every candidate of every live hypothesis rolled out greedily in ONE request, then ranked."""
        search = self.search
        steps = min(self.params.lookahead, budget - 1)
        rollouts = [
            _Rollout(hyp, [token], [logprob], finished=token in self.eos)
            for hyp in live
            for logprob, token in zip(hyp.next.logprobs.tolist(), hyp.next.ids.tolist())
        ]
        endings = [search._ending(h, [], [], h.next) for h in live if h.tokens and search.closes(h.tokens[-1])]
        running = [r for r in rollouts if not r.finished]
        self.nexts = {}
        if steps > 0 and running:
            outs = self.remote.complete(
                [self.job.prompt_ids + r.ids for r in running], n=1, max_tokens=steps, temperature=0.0,
                logprobs=self.params.top_k, stop=self.job.state.stop_strings,
                repetition_penalty=self.job.repetition_penalty, stats=self.job.stats)
            search.stats["rollout_tokens"] += sum(len(o[0].token_ids) for o in outs)
            for row, (r, (out,)) in enumerate(zip(running, outs)):
                nexts = self.nexts.setdefault(id(r), [])
                assert out.top is not None and out.logprobs is not None
                for j, token in enumerate(out.token_ids[:steps]):
                    nxt = self.next_tokens(out.top[j] if j < len(out.top) else [(token, out.logprobs[j])])
                    if search.closes(r.tokens[-1]) and r.tokens[-1] not in self.eos:
                        endings.append(search._ending(r.parent, r.tokens, r.logprobs, nxt))
                    nexts.append(nxt)
                    r.rows.append(row)
                    r.tokens.append(int(token))
                    r.logprobs.append(out.logprobs[j] if j < len(out.logprobs) else 0.0)
                    if token in self.eos:
                        r.finished = True
                        break
                if not r.finished and out.finish_reason == "stop" and len(out.token_ids) < steps \
                        and self.search.end_token is not None \
                        and not search._stopped(r.ids, self.job.candidate_text(r.ids)):
                    r.tokens.append(self.search.end_token)  # the server ended with EOS but left it out of the ids
                    r.logprobs.append(0.0)
                    r.finished = True
        ranked = search._score(rollouts + [e for e in endings if e is not None], budget)
        ranked.sort(key=lambda r: r.key, reverse=True)
        return ranked

    def advance(self, going: list[_Rollout], commit: int) -> list[_Hypothesis]:
        return [_Hypothesis(r.ids[: len(r.parent.tokens) + commit], i, self.nexts[id(r)][commit - 1])
                for i, r in enumerate(going)]

    def repair(self, winner: _Rollout) -> _Hypothesis | None:
        """The local search's repair: cut back before the closing punctuation; the next search may not end there."""
        keep = list(winner.tokens)
        while keep and self.search.closes(keep[-1]):
            keep.pop()
        self.search.stats["repairs"] += 1
        nxt = self.first(winner.parent.tokens + keep, no_ending=True)
        if nxt.ids.numel() == 0:
            return None
        return _Hypothesis(winner.parent.tokens + keep, 0, nxt)

    def run(self) -> Iterator[Sequence[int]]:
        yield from search_loop(self.job, self.params, _Hypothesis([], 0, self.first([])), self.expand, self.advance,
                               self.search.can_repair, self.repair)


def _deal(job: RemoteJob) -> Iterator[Sequence[int]]:
    return _RemoteDeal(job).run()


# --------------------------------------------------------------------------- speculative rejection


def _speculative_rejection(job: RemoteJob) -> Iterator[Sequence[int]]:
    """Speculative rejection: n samples up to the first check in one request (``n``), then one request per
    check continuing the survivors (a list of prompts); the checks, pruning and choice are the local search's."""
    p = job.params
    if p.n == 1:  # plain sampling, as locally
        job.stats.extra.update(candidates=1, checks=[])
        yield from _plain(job, p.sampling())
        return
    remote = job.remote
    search = _RejectionSearch(job, p)
    checks = check_lengths(p.first_check, p.rejection_rate, job.max_new_tokens)
    alive = [_Candidate(i) for i in range(p.n)]
    finish: dict[int, str | None] = {}
    sampled = 0
    length = 0
    winner: _Candidate | None = None
    common: dict[str, Any] = dict(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, logprobs=None,
                                  stop=job.state.stop_strings, repetition_penalty=job.repetition_penalty,
                                  stats=job.stats)
    for round_, bound in enumerate([*checks, job.max_new_tokens]):
        seed = None if job.seed is None else job.seed + round_ * p.n
        if round_ == 0:
            outs = remote.propose(job.prompt_ids, p.n, max_tokens=bound, seed=seed, **common)
        else:
            outs = [c[0] for c in remote.complete([job.prompt_ids + c.tokens for c in alive], n=1,
                                                  max_tokens=bound - length, seed=seed, **common)]
        length = bound
        done: list[_Candidate] = []
        going: list[_Candidate] = []
        for candidate, out in zip(alive, outs):
            candidate.tokens.extend(out.token_ids)
            sampled += len(out.token_ids)
            finish[candidate.index] = out.finish_reason
            ended = out.finish_reason == "stop" or (candidate.tokens and candidate.tokens[-1] in search.eos)
            if ended or len(candidate.tokens) >= job.max_new_tokens or stopped_by_string(job, candidate.tokens):
                candidate.finished = True
                done.append(candidate)
            else:
                going.append(candidate)
        winner = search.record_finished(done)
        if winner is not None:
            alive = []
            break
        if going and round_ < len(checks):
            going = search.prune(going, length)
        alive = going
        if not alive:
            break
    chosen = search.choose(winner, alive, sampled)
    yield chosen.tokens
    _end(job, finish.get(chosen.index))


# --------------------------------------------------------------------------- CARDS

#: Top log-probs asked per position to estimate the policy's entropy (vLLM's default ``--max-logprobs``).
ENTROPY_TOP_K = 20


def top_entropy(top: Sequence[tuple[int, float]]) -> float:
    """A lower bound of the next-token entropy (nats) from its top-k log-probs.

    The mass outside the top-k is spread over tokens no likelier than the k-th, so each of them adds at
    least ``-log p_k`` per unit of mass: ``H >= -sum p_i log p_i - (1 - sum p_i) log p_k``.
    """
    if not top:
        return 0.0
    probs = [math.exp(lp) for _, lp in top]
    known = -sum(p * lp for p, (_, lp) in zip(probs, top))
    rest = max(0.0, 1.0 - sum(probs))
    return known + rest * -min(lp for _, lp in top)


def _cards(job: RemoteJob) -> Iterator[Sequence[int]]:
    """CARDS: each try is ONE request for ``candidates`` segments with the top-20 log-probs at every position;
    a segment ends where the estimated entropy (:func:`top_entropy`) reaches the threshold, the rest of the
    continuation is dropped; acceptance is the local search's (``_Cards.decide``)."""
    p = job.params
    cards = _Cards(job, p)
    remote = job.remote
    job.stats.extra["entropy"] = f"lower bound from the top-{ENTROPY_TOP_K} log-probs"
    prefix: list[int] = []
    if cards.guided:
        cards.base = cards.rewards([[]])[0]  # type: ignore[misc]
        job.stats.extra["empty_text_reward"] = cards.base
    prefix_score = cards.base
    lengths: list[int] = []
    tries = 0
    while True:
        segment = _Segment()
        accepted = None
        budget = job.max_new_tokens - len(prefix)
        while accepted is None:
            seed = None if job.seed is None else job.seed + tries * cards.width
            tries += 1
            segment.tries += 1
            cards.stats["tries"] += 1
            outs = remote.propose(
                job.prompt_ids + prefix, cards.width, max_tokens=min(p.max_segment + 1, budget),
                temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=seed,
                logprobs=min(ENTROPY_TOP_K, remote.max_logprobs),
                stop=job.state.stop_strings, repetition_penalty=job.repetition_penalty, stats=job.stats)
            candidates = []
            for index, out in enumerate(outs):
                candidate = _Segment_Candidate(index, ended=True)
                assert out.top is not None
                for j, token in enumerate(out.token_ids):
                    if j >= p.min_segment and (j >= p.max_segment or top_entropy(out.top[j]) >= p.entropy_threshold):
                        break  # pauses before token j
                    candidate.tokens.append(token)
                    if token in cards.eos or len(candidate.tokens) >= budget \
                            or stopped_by_string(job, prefix + candidate.tokens):
                        candidate.finished = True
                        break
                else:
                    candidate.finished = out.finish_reason == "stop" or len(candidate.tokens) >= budget
                cards.stats["sample_tokens"] += len(candidate.tokens)
                candidates.append(candidate)
            _, accepted = cards.decide(prefix, candidates, 0, segment, prefix_score)
        cards.stats["segments"] += 1
        lengths.append(len(accepted.tokens))
        cards.stats["mean_segment_tokens"] = sum(lengths) / len(lengths)
        yield accepted.tokens
        if accepted.finished or job.finished:
            if accepted.finished and not job.finished:
                _end(job, "stop")
            return
        prefix = prefix + accepted.tokens
        if accepted.score is not None:
            prefix_score = accepted.score


# --------------------------------------------------------------------------- the strategies served remotely

#: Strategy name -> its remote implementation.
REMOTE_STRATEGIES: dict[str, Callable[[RemoteJob], Iterator[Sequence[int]]]] = {
    "greedy": _greedy,
    "sample": _sample,
    "best_of_n": _best_of_n,
    "args": _args,
    "deal": _deal,
    "speculative_rejection": _speculative_rejection,
    "cards": _cards,
}


class _RemoteStrategy(Strategy):
    """Runs a strategy's remote implementation in the engine's place of ``Strategy.decode``."""

    name = "remote"

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self._decode = REMOTE_STRATEGIES[name]

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        assert isinstance(job, RemoteJob)
        return self._decode(job)

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]] | None:
        """Greedy (and unseeded sampling) over a batch of prompts: ONE request with the list of prompts."""
        if self.name not in ("greedy", "sample") or len(jobs) < 2:
            return None
        remote_jobs = [job for job in jobs if isinstance(job, RemoteJob)]
        params = SamplingParams(temperature=0.0) if self.name == "greedy" else remote_jobs[0].params
        if not params.greedy and remote_jobs[0].seed is not None:
            return None  # each prompt has its own seed (seed + i), as locally: one request each
        return _plain_batch(remote_jobs, params)


def strategy_for(request: Request) -> Strategy:
    """The strategy object that decodes ``request``: the registered one, or its remote implementation."""
    if is_remote(request.model):
        check_backend(request)
        return _RemoteStrategy(request.strategy.name)
    return request.strategy()
