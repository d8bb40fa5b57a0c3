"""CARDS: reward-guided rejection sampling of segments that end where the policy grows uncertain.

CARDS (Li et al., COLM 2025, "Cascade Reward Sampling for Efficient Decoding-Time Alignment") builds
the answer one *segment* at a time. A candidate segment is sampled from the policy until the policy's
next-token entropy reaches ``entropy_threshold`` (after at least ``min_segment`` tokens, at most
``max_segment``): a natural place to pause, where the text so far is a unit the reward can judge. The
reward scores the text with the candidate segment, and the segment is accepted with probability
``min(1, exp(weight * (reward - threshold)))`` (``acceptance="hard"``: when ``reward >= threshold``).
A rejected segment is sampled again; after ``max_rejections`` rejections the best candidate seen for
that segment is accepted. Accepted segments are committed (and streamed) at once.

The threshold follows the reference implementation. With a target ``r*`` (``target``, default the
reward's declared maximum: keywords 1.0, a length budget 0) it rises linearly with the length ``t``
of the text: ``tau(t) = tau0 + (r* - tau0) * min(1, t / max_new_tokens)`` from
``tau0 = (1 - alpha) * r("") + alpha * r*``, so a text is asked to be on track, not finished, early
on; a candidate that ends the answer (EOS) is held to ``tau(max_new_tokens) = r*``, since it has no
tokens left to get there. A reward with no known maximum (safety, a classifier, a Python function)
has no ``r*``: there the threshold is the reward of the text accepted so far plus the *pace* the
candidates themselves show (the mean reward gain per token over every candidate scored so far, times
the candidate's length). A segment is then accepted when it raises the reward at least as fast as an
average candidate does, and otherwise with a probability that falls with the shortfall; the linear
ramp towards ``r*`` plays the same role for rewards with a maximum.

Deviations from the reference, for speed on this engine (the reference samples one candidate at a
time with batch size 1):

* ``candidates`` segment candidates are decoded as one batch from the accepted prefix's KV cache
  (rows copied out with :func:`~shared_core.decoding.candidates.cache_rows`, the prefix cache is never
  recomputed). They are tested in index order, each as soon as it and every candidate before it
  have ended, so the first acceptable candidate is taken without waiting for slower rows. A
  candidate that pauses at its boundary keeps its own cache row and next-token logits; accepting it
  costs no forward pass.
* Segments also end at EOS, at a stop string and at the token budget (the reference checks none).
* Defaults: 4.0 nats instead of 3.0 (on SmolLM2 a quarter of the positions are above 3.0, which cut
  segments at the 4-token minimum), two candidates per try, at most 8 rejections instead of 20;
  measured with ``benchmarks/pareto.py``.
* ``weight`` is the reference's ``1 / beta`` (in 1 / reward units; the default 20 suits rewards
  spread over about [0, 1]), so that 0 means "no guidance": every segment is accepted without calling the
  reward, one candidate at a time, which is plain sampling (the ``sample`` strategy with the same
  seed and settings, token for token). A constant reward (no maximum, so no gain and a pace of 0)
  accepts every first candidate, with the same result.
* The open-ended threshold (the pace) and holding a finished answer to ``r*`` are this engine's; the
  reference needs ``r*`` for every reward model and never sees an answer end.
* The entropy is that of the policy's own next-token distribution (raw logits, temperature 1), as in
  the reference; the request's processors (a repetition penalty) apply to sampling only.

Remote backends need sampled continuations and per-position top log-probs to estimate the entropy
(``needs = {"samples", "top_logprobs"}``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from shared_core.decoding.args import TextRewardCache
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.candidates import (
    CandidateSampling,
    RowSampler,
    cache_rows,
    derived_generator,
    next_token_entropy,
    stopped_by_string,
)
from shared_core.decoding.lookahead import reward_target

__all__ = ["CardsParams", "CardsStrategy"]

_TOLERANCE = 1e-9


class CardsParams(CandidateSampling):
    """Parameters of :class:`CardsStrategy` (sampling settings as in ``best_of_n``)."""

    candidates: int = Field(2, ge=1, description="segment candidates decoded together per try and tested in order")
    weight: float = Field(
        20.0, ge=0.0, allow_inf_nan=False,
        description="acceptance sharpness (1/beta): P(accept) = min(1, exp(weight * (reward - threshold))); "
                    "0 accepts every segment (plain sampling, no reward calls)")
    acceptance: Literal["soft", "hard"] = Field(
        "soft", description="soft: accept with the probability above; hard: accept when reward >= threshold")
    target: float | None = Field(
        None, allow_inf_nan=False,
        description="reward the threshold rises to; default: the reward's maximum, else the threshold is the "
                    "reward of the text accepted so far")
    alpha: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False,
                         description="where the threshold starts, from r('') (0) to the target (1)")
    entropy_threshold: float = Field(4.0, gt=0.0, allow_inf_nan=False,
                                     description="a segment ends before a token whose entropy (nats) reaches this")
    min_segment: int = Field(4, ge=1, description="tokens a segment has at least (unless it ends the answer)")
    max_segment: int = Field(32, ge=1, description="tokens a segment has at most")
    max_rejections: int = Field(8, ge=1, description="rejected candidates after which a segment's best one is "
                                                      "accepted")

    @field_validator("max_segment")
    @classmethod
    def _segment_bounds(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_segment")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_segment ({low})")
        return value


@dataclass
class _Candidate:
    """One candidate segment: its tokens, and where it ended."""

    index: int
    tokens: list[int] = field(default_factory=list)
    ended: bool = False
    finished: bool = False  # ended the answer (EOS, a stop string, the budget)
    cache: Any = None  # its own KV cache (prefix + segment) when it paused at a boundary
    logits: torch.Tensor | None = None  # next-token logits after it, with ``cache``
    score: float | None = None


@dataclass
class _Segment:
    """A try's bookkeeping across the tries of one segment."""

    rejected: int = 0
    tries: int = 0
    best: _Candidate | None = None
    forced: bool = False


class _Cards:
    """One CARDS run over a job: the accepted prefix, its cache, and the tries of each segment."""

    def __init__(self, job: DecodeJob, params: CardsParams) -> None:
        self.job = job
        self.params = params
        self.runner = job.runner()
        self.device = self.runner.device
        self.eos = job.model.eos_token_ids
        self.guided = params.weight > 0.0
        self.width = params.candidates if self.guided else 1
        self.sampler = RowSampler(job, params.sampling())
        self.accept_generator = derived_generator(job, 2)
        self.rewards = TextRewardCache(job) if self.guided else None
        self.target = params.target if params.target is not None else reward_target(job.reward)
        self.base = 0.0
        self.gain = 0.0  # summed reward gains of scored candidates over their prefixes (open-ended rewards)
        self.gain_tokens = 0
        self.stats = job.stats.extra
        self.stats.update(segments=0, tries=0, candidates_scored=0, rejected=0, forced=0, sample_tokens=0)
        if self.guided and self.target is not None:
            self.stats["reward_target"] = self.target

    # -- acceptance ----------------------------------------------------------------------------

    def threshold(self, length: int, prefix_score: float, new_tokens: int) -> float:
        """The score asked of a text ``length`` tokens long that adds ``new_tokens`` to the accepted prefix."""
        if self.target is None:
            return prefix_score + self.pace() * new_tokens
        start = (1.0 - self.params.alpha) * self.base + self.params.alpha * self.target
        return start + (self.target - start) * min(1.0, length / self.job.max_new_tokens)

    def pace(self) -> float:
        """The mean reward gain per token of every candidate scored so far (open-ended rewards)."""
        return self.gain / self.gain_tokens if self.gain_tokens else 0.0

    def accepts(self, score: float, tau: float) -> bool:
        if self.params.acceptance == "hard":
            return score >= tau - _TOLERANCE
        gap = self.params.weight * (score - tau)
        if gap >= 0.0:
            return True
        draw = float(torch.rand(1, generator=self.accept_generator, device=self.accept_generator.device))
        return draw < math.exp(gap)

    def decide(self, prefix: list[int], candidates: list[_Candidate], start: int, segment: _Segment,
               prefix_score: float) -> tuple[int, _Candidate | None]:
        """Tests, in index order from ``start``, the candidates that have ended; returns (next to test, accepted)."""
        stop = start
        while stop < len(candidates) and candidates[stop].ended:
            stop += 1
        if stop == start:
            return start, None
        ready = candidates[start:stop]
        if not self.guided:
            return stop, ready[0]
        scores = self.rewards([prefix + c.tokens for c in ready])  # type: ignore[misc]
        self.stats["candidates_scored"] += len(ready)
        for candidate, score in zip(ready, scores):
            candidate.score = score
            self.gain += score - prefix_score
            self.gain_tokens += len(candidate.tokens)
            # a candidate that ends the answer has no tokens left to reach the target: it is held to tau(T)
            length = self.job.max_new_tokens if candidate.finished else len(prefix) + len(candidate.tokens)
            if self.accepts(score, self.threshold(length, prefix_score, len(candidate.tokens))):
                return stop, candidate
            segment.rejected += 1
            self.stats["rejected"] += 1
            if segment.best is None or score > segment.best.score:  # type: ignore[operator]
                segment.best = candidate
            if segment.rejected >= self.params.max_rejections:
                segment.forced = True
                self.stats["forced"] += 1
                return stop, segment.best
        return stop, None

    # -- one try -------------------------------------------------------------------------------

    def try_segment(self, prefix: list[int], cache: Any, logits: torch.Tensor, segment: _Segment,
                    prefix_score: float) -> _Candidate | None:
        """Decodes ``width`` candidate segments as one batch; returns the accepted one, if any."""
        job, params = self.job, self.params
        width = self.width
        rows_cache = cache_rows(cache, [0] * width, job.stats)
        row_logits = logits.unsqueeze(0).expand(width, -1)
        candidates = [_Candidate(i) for i in range(width)]
        alive = list(candidates)  # in cache-row order
        budget = job.max_new_tokens - len(prefix)
        next_to_test = 0
        length = 0
        segment.tries += 1
        self.stats["tries"] += 1
        while alive:
            # 1. candidates that pause here: long enough, and the policy is uncertain (or the segment is full)
            going = list(range(len(alive)))
            if length >= params.min_segment:
                if length >= params.max_segment:
                    pausing = set(going)
                else:
                    entropy = next_token_entropy(row_logits)
                    pausing = {row for row in going if float(entropy[row]) >= params.entropy_threshold}
                for row in sorted(pausing):
                    candidate = alive[row]
                    candidate.ended = True
                    candidate.cache = cache_rows(rows_cache, [row], job.stats)
                    candidate.logits = row_logits[row]
                going = [row for row in going if row not in pausing]
            # 2. the others take one more token
            continuing: list[int] = []
            tokens = None
            if going:
                index = torch.tensor(going, device=row_logits.device)
                rows = [alive[row] for row in going]
                scores = job.process([prefix + c.tokens for c in rows], row_logits[index])
                lead = next((i for i, c in enumerate(rows) if c.index == 0), None)
                tokens = self.sampler.sample(scores, lead)
                self.stats["sample_tokens"] += len(rows)
                for i, (candidate, token) in enumerate(zip(rows, tokens.tolist())):
                    candidate.tokens.append(token)
                    if (token in self.eos or len(candidate.tokens) >= budget
                            or stopped_by_string(job, prefix + candidate.tokens)):
                        candidate.ended = candidate.finished = True
                    else:
                        continuing.append(i)
            # 3. test what has ended, in index order
            next_to_test, accepted = self.decide(prefix, candidates, next_to_test, segment, prefix_score)
            if accepted is not None:
                return accepted
            if next_to_test >= width or not continuing:
                return None
            # 4. one forward for the candidates still going
            keep = [going[i] for i in continuing]
            if len(keep) < len(alive):
                rows_cache.batch_select_indices(torch.tensor(keep, device=self.device))
            assert tokens is not None
            step_tokens = tokens[torch.tensor(continuing, device=tokens.device)]
            alive = [alive[row] for row in keep]
            row_logits = self.runner.step(rows_cache, step_tokens.view(-1, 1).to(self.device))
            length += 1
        return None

    # -- the answer ----------------------------------------------------------------------------

    def run(self) -> Iterator[Sequence[int]]:
        job = self.job
        logits, cache = job.prefill()
        prefix: list[int] = []
        if self.guided:
            self.base = self.rewards([[]])[0]  # type: ignore[misc]
            self.stats["empty_text_reward"] = self.base
        prefix_score = self.base
        lengths: list[int] = []
        while True:
            segment = _Segment()
            accepted = None
            while accepted is None:
                accepted = self.try_segment(prefix, cache, logits, segment, prefix_score)
            self.stats["segments"] += 1
            lengths.append(len(accepted.tokens))
            self.stats["mean_segment_tokens"] = sum(lengths) / len(lengths)
            yield accepted.tokens
            if accepted.finished or job.finished:
                return
            prefix = prefix + accepted.tokens
            cache, logits = accepted.cache, accepted.logits
            if accepted.score is not None:
                prefix_score = accepted.score


@register_strategy
class CardsStrategy(Strategy):
    """Segment-level rejection sampling: segments end where the policy's entropy rises, the reward accepts them.

    Example:
        >>> from shared_core import generate
        >>> r = generate("smollm2", "Write one sentence using all of these words: dog, frisbee, catch, park.",
        ...              strategy="cards", reward={"type": "keywords", "words": ["dog", "frisbee", "catch", "park"]},
        ...              seed=0)  # doctest: +SKIP
    """

    name = "cards"
    Params = CardsParams
    needs_reward = True
    needs = frozenset({"samples", "top_logprobs"})
    description = ("CARDS: segments end where the policy's entropy rises; each is accepted or resampled by "
                   "reward-guided rejection sampling")

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return _Cards(job, job.params).run()
