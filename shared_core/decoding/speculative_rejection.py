"""Speculative rejection: start many candidates, rate the partial texts, drop the low ones early.

Speculative rejection (Sun et al., NeurIPS 2024, "Fast Best-of-N Decoding via Speculative Rejection")
is best-of-N that stops paying for candidates the reward already ranks low. ``n`` candidates are
sampled from one shared prefill. At each *check* the reward scores every candidate still in the
running (partial texts of live candidates, and finished ones), and the lowest ``rejection_rate``
share is dropped. Checks come at geometrically growing lengths (``first_check``, then
``first_check / (1 - rejection_rate)``, ...), the schedule the reference implementation's fixed memory
budget gives: with half the candidates dropped at each check the length between checks doubles, so
every round costs about the same number of token-rows. The answer is the best-scored text among every
candidate that finished and the ones still running at the end.

Where the time goes, and how it is kept low:

* One prefill; its KV cache is expanded to ``n`` rows and the live rows are decoded as one batch.
  Rejected rows and rows that finish (EOS, a stop string, the token budget) leave the batch at once
  (``batch_select_indices``), so late steps run on a few rows.
* The reward sees each text once (``TextRewardCache``; one batched call per check).
* With a reward that declares its maximum (keywords: 1.0, a length budget: 0), a candidate that
  finishes at that maximum ends the search at once: nothing can beat it.

Tie-breaking and the unguided path: candidates are ranked by score, ties going to the lower
candidate index; candidate 0 samples exactly like the ``sample`` strategy (see
:mod:`shared_core.decoding.candidates`). So with a constant reward candidate 0 survives every check
and is returned: plain sampling with the same seed. ``n=1`` is plain sampling without any reward
call; ``rejection_rate=0`` drops nothing, which is best-of-n over the same samples.

Remote backends need only sampled continuations (``needs = {"samples"}``): one request for ``n``
continuations of ``first_check`` tokens, then one request per round continuing the survivors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import Field

from shared_core.decoding.args import TextRewardCache
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.candidates import CandidateSampling, RowSampler, stopped_by_string
from shared_core.decoding.greedy import step_loop
from shared_core.decoding.lookahead import reward_target

__all__ = ["SpeculativeRejectionParams", "SpeculativeRejectionStrategy"]

_TOLERANCE = 1e-9


class SpeculativeRejectionParams(CandidateSampling):
    """Parameters of :class:`SpeculativeRejectionStrategy` (sampling settings as in ``best_of_n``)."""

    n: int = Field(16, ge=1, description="candidates started from the shared prefill; 1 = plain sampling, no reward")
    rejection_rate: float = Field(
        0.5, ge=0.0, lt=1.0, allow_inf_nan=False,
        description="share of the candidates in the running dropped at each check; 0 = none (best-of-n)")
    first_check: int = Field(4, ge=1, description="tokens decoded before the first check; later checks at "
                                                  "first_check / (1 - rejection_rate)^k tokens")


@dataclass
class _Candidate:
    index: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False


def check_lengths(first_check: int, rejection_rate: float, limit: int) -> list[int]:
    """The lengths (tokens) at which candidates are scored and pruned, below ``limit``.

    Example: ``check_lengths(4, 0.5, 48) == [4, 8, 16, 32]``.
    """
    if rejection_rate <= 0.0:
        return []
    growth = 1.0 / (1.0 - rejection_rate)
    lengths: list[int] = []
    at = float(first_check)
    while True:
        length = max(int(round(at)), lengths[-1] + 1 if lengths else 1)
        if length >= limit:
            return lengths
        lengths.append(length)
        at *= growth


def kept_count(contenders: int, rejection_rate: float) -> int:
    """How many of ``contenders`` survive a check: ``ceil((1 - rejection_rate) * contenders)``, at least 1."""
    return max(1, math.ceil((1.0 - rejection_rate) * contenders - _TOLERANCE))


class _Search:
    """One speculative-rejection run: the live batch, the finished candidates, the checks."""

    def __init__(self, job: DecodeJob, params: SpeculativeRejectionParams) -> None:
        self.job = job
        self.params = params
        self.runner = job.runner()
        self.device = self.runner.device
        self.eos = job.model.eos_token_ids
        self.rewards = TextRewardCache(job)
        self.target = reward_target(job.reward)
        self.sampler = RowSampler(job, params.sampling())
        self.checks: list[dict[str, int]] = []
        self.finished: list[_Candidate] = []  # every candidate that finished: all take part in the final choice
        self.contending: list[_Candidate] = []  # finished candidates that survived the last check
        self.stopped_early = False

    def best(self, candidates: Sequence[_Candidate]) -> tuple[_Candidate, float]:
        """The highest-scored candidate, the lowest index winning ties, and its score."""
        scores = self.rewards([c.tokens for c in candidates])
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].index))
        return candidates[order[0]], scores[order[0]]

    def reached_target(self, done: Sequence[_Candidate]) -> _Candidate | None:
        """A just-finished candidate that scores the reward's maximum (then nothing can beat it)."""
        if self.target is None or not done:
            return None
        winner, score = self.best(done)
        return winner if score >= self.target - _TOLERANCE else None

    def prune(self, alive: list[_Candidate], length: int) -> list[_Candidate]:
        """Scores every candidate in the running and keeps the best share; returns the live ones kept."""
        contenders = self.contending + alive
        if len(contenders) <= 1:
            return alive
        scores = self.rewards([c.tokens for c in contenders])
        order = sorted(range(len(contenders)), key=lambda i: (-scores[i], contenders[i].index))
        kept = {contenders[i].index for i in order[: kept_count(len(contenders), self.params.rejection_rate)]}
        self.contending = [c for c in self.contending if c.index in kept]
        survivors = [c for c in alive if c.index in kept]
        self.checks.append({"length": length, "contenders": len(contenders), "kept": len(kept),
                            "live_kept": len(survivors)})
        return survivors

    def run(self) -> _Candidate:
        job, params = self.job, self.params
        logits, cache = job.prefill()
        n = params.n
        cache.batch_repeat_interleave(n)
        logits = logits.unsqueeze(0).expand(n, -1)
        alive = [_Candidate(i) for i in range(n)]
        checks = check_lengths(params.first_check, params.rejection_rate, job.max_new_tokens)
        sampled = 0
        length = 0
        winner: _Candidate | None = None
        while alive:
            scores = job.process([c.tokens for c in alive], logits)
            tokens = self.sampler.sample(scores, 0 if alive[0].index == 0 else None)
            length += 1
            sampled += len(alive)
            going: list[int] = []
            done: list[_Candidate] = []
            for row, (candidate, token) in enumerate(zip(alive, tokens.tolist())):
                candidate.tokens.append(token)
                if token in self.eos or length >= job.max_new_tokens or stopped_by_string(job, candidate.tokens):
                    candidate.finished = True
                    done.append(candidate)
                else:
                    going.append(row)
            winner = self.record_finished(done)
            if winner is not None:
                alive = []
                break
            survivors = [alive[row] for row in going]
            if survivors and checks and length >= checks[0]:
                checks.pop(0)
                survivors = self.prune(survivors, length)
            if not survivors:
                alive = []
                break
            if len(survivors) < len(alive):
                keep = {c.index for c in survivors}
                rows = [row for row, c in enumerate(alive) if c.index in keep]
                index = torch.tensor(rows, device=self.device)
                cache.batch_select_indices(index)
                tokens = tokens[index]
            alive = survivors
            logits = self.runner.step(cache, tokens.view(-1, 1).to(self.device))
        return self.choose(winner, alive, sampled)

    def record_finished(self, done: list[_Candidate]) -> _Candidate | None:
        """Adds just-finished candidates to the final choice and to the next check's contenders; returns one
        that scores the reward's maximum (the search then ends), else None."""
        self.finished.extend(done)
        self.contending.extend(done)
        winner = self.reached_target(done)
        if winner is not None:
            self.stopped_early = True
        return winner

    def choose(self, winner: _Candidate | None, alive: Sequence[_Candidate], sampled: int) -> _Candidate:
        """The answer (``winner``, else the best of every finished and still-running candidate), with the
        search's record in ``stats.extra``."""
        extra = self.job.stats.extra
        extra.update(candidates=self.params.n, sample_tokens=sampled, checks=self.checks,
                     stopped_at_target=self.stopped_early)
        if winner is not None:
            chosen, score = winner, self.rewards([winner.tokens])[0]
        else:
            chosen, score = self.best(self.finished + list(alive))
        extra.update(chosen=chosen.index, chosen_score=score)
        return chosen


@register_strategy
class SpeculativeRejectionStrategy(Strategy):
    """Best-of-n that scores partial texts and drops the low candidates early.

    Example:
        >>> from shared_core import generate
        >>> r = generate("smollm2", "Give me a tip for staying safe online.",             # doctest: +SKIP
        ...              strategy="speculative_rejection", reward={"type": "safety"}, n=16, seed=0)
    """

    name = "speculative_rejection"
    Params = SpeculativeRejectionParams
    needs_reward = True
    needs = frozenset({"samples"})
    description = ("speculative rejection: n samples from one prefill, partial texts scored at growing lengths "
                   "and the low ones dropped early")

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        params: SpeculativeRejectionParams = job.params
        if params.n == 1:
            job.stats.extra.update(candidates=1, checks=[])
            return step_loop(job, params.sampling())
        return self._decode(job, params)

    @staticmethod
    def _decode(job: DecodeJob, params: SpeculativeRejectionParams) -> Iterator[Sequence[int]]:
        yield _Search(job, params).run().tokens
