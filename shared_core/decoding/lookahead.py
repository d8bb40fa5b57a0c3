"""DeAL: decoding-time alignment as a lookahead search (Huang et al., 2024, "DeAL: Decoding-time Alignment").

Each search takes the policy's ``top_k`` next tokens for every live hypothesis, rolls every candidate
out ``lookahead`` tokens greedily, scores each (committed + candidate + rollout) text with the reward,
and keeps the best ``beam_width`` hypotheses. The first ``search_every`` tokens of the winning rollout
are then committed at once, so the search costs ``lookahead / search_every`` batched forwards per
committed token (2 with the defaults) instead of ``lookahead`` (searching before every token).

Where the time goes, and how it is kept low:

* All candidates of a search are rolled out as ONE batch: the committed prefix's KV cache is
  gathered into one row per candidate (``batch_select_indices``), never recomputed.
* After the search, the winner's row already holds the committed tokens' keys and values: the other
  rows are dropped and the unused rollout tail is cropped off (``DynamicCache.crop``). The next
  search's candidates come from the logits kept from the rollout, so committing costs no forward.
* Rows that reach EOS leave the batch at once; the reward sees each candidate text once per search
  in one batched call (only generated tokens are decoded).

Choosing among rollouts (each gets a key; higher wins, compared in this order):

1. A tier. Without a known target every rollout is tier 1, except ones the token limit would cut
   off (tier 0), so the output ends by itself. When the reward has a known maximum (``target``;
   keywords: 1.0, length budgets: 0.0, weighted sums of those), the tiers are:
   4 - ends (EOS offered by the policy) at a sentence boundary with the target reached: done;
   3 - goes on with the target reached so far;
   2.5 - ends with the target reached, but where the policy would not end (EOS forced after a
   sentence) or not at a sentence boundary: a fallback, the latest one preferred;
   2 - goes on below the target; 1 - ends below the target (it can no longer reach it); 0 - cut off.
2. The reward, then a clean (sentence) ending, then the policy's mean log-probability of the
   rollout, so equally rewarded candidates fall back to what the model itself prefers (fluency).

Ending well (what the reward of a partial text cannot see):

* Endings inside rollouts. Wherever a rollout closes a sentence, "end here" (EOS) is a candidate
  too, at no extra forward pass: when the policy offers EOS among its top-k there, or, with a known
  target, always (as a tier-2.5 fallback). So a keyword answer stops once its sentence has every
  word, and a length budget ends at the last full sentence that fits.
* Held-back fallback. The best finished answer so far is remembered; tokens after the point where
  it branches off are not emitted until something better appears, so when every live rollout later
  breaks the target (runs over a length budget), the search can still end at that sentence.
* Premature endings. If every candidate ends below the target (the sentence closes one word short),
  the best one is cut back to before its closing punctuation and the next search may not end there
  (EOS and sentence-final tokens are skipped once): the sentence goes on to take the missing words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared_core.decoding.args import TextRewardCache
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.rewards.base import Reward

# A sentence ends in . ! ? or …, maybe followed by closing quotes, brackets or markdown emphasis; a
# period right after a digit ("1.", "23.") is more often a list number or a decimal cut short.
_SENTENCE_END = re.compile(r"(?:(?<!\d)\.|[!?…])[\"'”’)\]*_`]*\s*$")
_TOLERANCE = 1e-9


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends at a sentence boundary (``.``, ``!``, ``?`` or ``…``, maybe followed by quotes).

    Example: ``ends_sentence('He said "hi."')`` is true; ``ends_sentence("tilted at 23.")`` is not.
    """
    return bool(_SENTENCE_END.search(text))


def reward_target(reward: Reward | None) -> float | None:
    """The score at which ``reward`` is fully satisfied (its declared ``max_score``); ``None`` when open-ended."""
    return None if reward is None else reward.max_score


class DealParams(BaseModel):
    """Parameters of :class:`DealStrategy`."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(10, ge=1, description="candidate next tokens expanded per hypothesis at each search")
    lookahead: int = Field(8, ge=1, description="tokens rolled out greedily after each candidate before scoring")
    beam_width: int = Field(1, ge=1, description="hypotheses kept between searches")
    search_every: int = Field(4, ge=1, description="tokens of the winning rollout committed per search (<= lookahead)")
    target: float | None = Field(
        None, allow_inf_nan=False, description="reward value that counts as satisfied; default: the reward's maximum"
    )

    @field_validator("search_every")
    @classmethod
    def _commit_within_rollout(cls, value: int, info: ValidationInfo) -> int:
        lookahead = info.data.get("lookahead")
        if lookahead is not None and value > lookahead:
            raise ValueError(f"must be at most lookahead ({lookahead}): only scored tokens are committed")
        return value


@dataclass
class _NextTokens:
    """A position's next-token candidates: top-k log-probs and ids, and the log-prob of ending (EOS)."""

    logprobs: torch.Tensor  # (top_k,)
    ids: torch.Tensor  # (top_k,)
    eos_logprob: float


@dataclass
class _Hypothesis:
    """A live partial answer: its generated ids, its row in the shared cache, its next candidates."""

    tokens: list[int]
    row: int
    next: _NextTokens


@dataclass
class _Rollout:
    """One candidate continuation of a hypothesis: the candidate token, then greedy tokens."""

    parent: _Hypothesis
    tokens: list[int]
    logprobs: list[float]
    finished: bool = False
    rows: list[int] = field(default_factory=list)  # its batch row at each rollout step
    forced: bool = False  # ends with EOS where the policy did not rank EOS in its top-k
    text: str = ""
    reward: float = 0.0
    key: tuple[float, ...] = ()

    @property
    def ids(self) -> list[int]:
        return self.parent.tokens + self.tokens


MAX_REPAIRS = 3


class _Search:
    """One DeAL run over a job: live hypotheses sharing one batched KV cache, and how to rank rollouts."""

    def __init__(self, job: DecodeJob, params: DealParams) -> None:
        self.job = job
        self.params = params
        self.runner = job.runner()
        self.device = self.runner.device
        self.eos = job.model.eos_token_ids
        self.eos_list = sorted(self.eos)
        self.end_token = min(self.eos) if self.eos else None
        self.target = params.target if params.target is not None else reward_target(job.reward)
        self.rewards = TextRewardCache(job)
        self.stats = job.stats.extra
        self.stats.update(searches=0, candidates_scored=0, rollout_tokens=0, repairs=0)
        if self.target is not None:
            self.stats["reward_target"] = self.target
        self._closing: dict[int, bool] = {}
        self.steps: list[list[_NextTokens]] = []  # per rollout step, per batch row

    # -- helpers -------------------------------------------------------------------------------

    def next_tokens(self, logits: torch.Tensor, generated: Sequence[Sequence[int]], *,
                    no_ending: bool = False) -> list[_NextTokens]:
        """The candidates after each row of ``logits`` (rows, vocab) that follow ``generated`` ids (the request's
        logits processors run first); optionally without ending tokens."""
        logprobs = torch.log_softmax(self.job.process(generated, logits).float(), dim=-1)
        k = min(self.params.top_k, logprobs.shape[-1])
        extra = 16 if no_ending else 0
        top = torch.topk(logprobs, min(k + extra, logprobs.shape[-1]), dim=-1)
        if self.eos_list:
            eos_lp = logprobs[:, self.eos_list].max(dim=-1).values.tolist()
        else:
            eos_lp = [float("-inf")] * logprobs.shape[0]
        out = []
        for row in range(logprobs.shape[0]):
            values, ids = top.values[row], top.indices[row]
            if no_ending:
                keep = [i for i, t in enumerate(ids.tolist()) if not self.closes(t)][:k]
                values, ids = values[keep], ids[keep]
            out.append(_NextTokens(values, ids, eos_lp[row]))
        return out

    def closes(self, token: int) -> bool:
        """Whether ``token`` ends an answer or a sentence (EOS, or text ending in . ! ?)."""
        if token not in self._closing:
            self._closing[token] = token in self.eos or ends_sentence(self.job.model.decode([token]).strip())
        return self._closing[token]

    def satisfied(self, reward: float) -> bool:
        return self.target is not None and reward >= self.target - _TOLERANCE

    def key(self, rollout: _Rollout, budget: int) -> tuple[float, ...]:
        """The ranking key of a scored rollout (see the module docstring); higher is better."""
        clean = rollout.finished and ends_sentence(rollout.text)
        cut = not rollout.finished and len(rollout.tokens) >= budget
        later = 0.0
        if cut:
            tier = 0.0
        elif self.target is None:
            tier = 1.0
        elif not self.satisfied(rollout.reward):
            tier = 1.0 if rollout.finished else 2.0  # an early end can no longer reach the target
        elif not rollout.finished:
            tier = 3.0  # satisfied so far: go on while the policy does not want to end
        elif clean and not rollout.forced:
            tier = 4.0  # satisfied, and the policy itself ends here at a sentence boundary: done
        else:
            tier = 2.5  # satisfied, but ending where the policy would not: a fallback, latest first
            later = float(len(rollout.ids))
        mean_logprob = sum(rollout.logprobs) / len(rollout.logprobs)
        return (tier, round(rollout.reward, 9), 1.0 if clean else 0.0, later, mean_logprob)

    # -- one search ----------------------------------------------------------------------------

    def expand(self, live: list[_Hypothesis], cache: Any, budget: int) -> list[_Rollout]:
        """Expands each live hypothesis into its candidates, rolls them out as one batch, and ranks them.

        The candidates after every rollout step of every batch row are kept in ``steps``: they are the
        next candidates of whichever rollout is committed.
        """
        steps = min(self.params.lookahead, budget - 1)
        rollouts = [
            _Rollout(hyp, [token], [logprob], finished=token in self.eos)
            for hyp in live
            for logprob, token in zip(hyp.next.logprobs.tolist(), hyp.next.ids.tolist())
        ]
        endings = [self._ending(hyp, [], [], hyp.next) for hyp in live if hyp.tokens and self.closes(hyp.tokens[-1])]
        running = [r for r in rollouts if not r.finished]
        self.steps = []
        if steps > 0 and running:
            cache.batch_select_indices(torch.tensor([r.parent.row for r in running], device=self.device))
            for step in range(steps):
                inputs = torch.tensor([[r.tokens[-1]] for r in running], device=self.device)
                after = self.next_tokens(self.runner.step(cache, inputs), [r.ids for r in running])
                self.steps.append(after)
                self.stats["rollout_tokens"] += len(running)
                keep = []
                for row, (r, nxt) in enumerate(zip(running, after)):
                    if self.closes(r.tokens[-1]) and r.tokens[-1] not in self.eos:
                        endings.append(self._ending(r.parent, r.tokens, r.logprobs, nxt))
                    token = int(nxt.ids[0])
                    r.rows.append(row)
                    r.tokens.append(token)
                    r.logprobs.append(float(nxt.logprobs[0]))
                    if token in self.eos:
                        r.finished = True
                    else:
                        keep.append(row)
                if not keep or step == steps - 1:
                    break
                if len(keep) < len(running):
                    cache.batch_select_indices(torch.tensor(keep, device=self.device))
                    running = [running[row] for row in keep]
        ranked = self._score(rollouts + [e for e in endings if e is not None], budget)
        ranked.sort(key=lambda r: r.key, reverse=True)
        return ranked

    def _ending(self, parent: _Hypothesis, tokens: list[int], logprobs: list[float],
                nxt: _NextTokens) -> _Rollout | None:
        """"End here" after a sentence-closing token: EOS appended, at no forward pass.

        Offered when the policy has EOS among its top-k here, or, with a known target, always (it only
        ranks first if the text then satisfies the target).
        """
        offered = bool(torch.isin(nxt.ids, torch.tensor(self.eos_list, dtype=nxt.ids.dtype)).any())
        if self.end_token is None or (self.target is None and not offered):
            return None
        if offered and (not tokens or int(nxt.ids[0]) in self.eos):
            return None  # already a candidate, or the greedy rollout ends here anyway
        return _Rollout(parent, tokens + [self.end_token], logprobs + [nxt.eos_logprob], finished=True,
                        forced=not offered)

    def _score(self, rollouts: list[_Rollout], budget: int) -> list[_Rollout]:
        """Scores the rollouts' texts in one batched reward call and sets their ranking keys."""
        texts = self.rewards.texts([r.ids for r in rollouts])
        scores = self.rewards.score_texts(texts)
        self.stats["searches"] += 1
        self.stats["candidates_scored"] += len(rollouts)
        for r, text, score in zip(rollouts, texts, scores):
            r.text = text
            r.reward = score
            r.finished = r.finished or self._stopped(r.ids, text)
            r.key = self.key(r, budget)
        return rollouts

    def _stopped(self, ids: Sequence[int], text: str) -> bool:
        """Whether a stop string cut ``ids`` (the engine will end generation there)."""
        return bool(self.job.state.stop_strings) and len(text) < len(self.job.model.decode(ids))

    # -- committing ----------------------------------------------------------------------------

    def advance(self, going: list[_Rollout], cache: Any, commit: int) -> list[_Hypothesis]:
        """Keeps the winners' cache rows, cropped to ``commit`` tokens of their rollouts."""
        taken = len(going[0].tokens) - 1  # tokens each live row has in the cache beyond the prefix
        cache.batch_select_indices(torch.tensor([r.rows[-1] for r in going], device=self.device))
        if taken > commit:
            cache.crop(-(taken - commit))
        return [
            _Hypothesis(r.ids[: len(r.parent.tokens) + commit], i, self.steps[commit - 1][r.rows[commit - 1]])
            for i, r in enumerate(going)
        ]

    def can_repair(self, winner: _Rollout, budget: int) -> bool:
        """Whether to back off a premature ending rather than stop (see :meth:`repair`)."""
        return (
            self.target is not None
            and self.params.beam_width == 1  # every cache row then shares the winner's prefix
            and winner.key[0] == 1.0  # every candidate ended short of the target
            and self.stats["repairs"] < MAX_REPAIRS
            and budget > self.params.lookahead + 2
            # going on must not lose reward (a length budget already exceeded would only get worse)
            and winner.reward >= self.rewards([winner.parent.tokens])[0]
        )

    def repair(self, winner: _Rollout, cache: Any) -> _Hypothesis | None:
        """Backs off a rollout that ended before the target, to just before its sentence end.

        Every candidate ended without reaching the reward's target, so none can improve. Instead of
        stopping, the winner is cut back to before its closing punctuation, and the next search may not
        end there (its candidates skip EOS and sentence-ending tokens): the sentence goes on.
        """
        prefix = len(self.job.prompt_ids) + len(winner.parent.tokens)
        keep = list(winner.tokens)
        while keep and self.closes(keep[-1]):
            keep.pop()
        if cache.get_seq_length() < prefix:
            return None
        cache.batch_select_indices(torch.tensor([0], device=self.device))
        if cache.get_seq_length() > prefix:
            cache.crop(-(cache.get_seq_length() - prefix))
        self.stats["repairs"] += 1
        if keep:
            logits = self.runner.step(cache, torch.tensor([keep], device=self.device))
            nxt = self.next_tokens(logits, [winner.parent.tokens + keep], no_ending=True)[0]
        else:
            old = winner.parent.next
            mask = [not self.closes(t) for t in old.ids.tolist()]
            if not any(mask):
                return None
            nxt = _NextTokens(old.logprobs[mask], old.ids[mask], old.eos_logprob)
        return _Hypothesis(winner.parent.tokens + keep, 0, nxt)


def _deal_loop(job: DecodeJob, params: DealParams) -> Iterator[Sequence[int]]:
    search = _Search(job, params)
    logits, cache = job.prefill()
    first = _Hypothesis([], 0, search.next_tokens(logits.unsqueeze(0), [[]])[0])
    yield from search_loop(job, params, first,
                           expand=lambda live, budget: search.expand(live, cache, budget),
                           advance=lambda going, commit: search.advance(going, cache, commit),
                           can_repair=search.can_repair,
                           repair=lambda winner: search.repair(winner, cache))


def search_loop(job: Any, params: DealParams, first: _Hypothesis,
                expand: Callable[[list[_Hypothesis], int], list[_Rollout]],
                advance: Callable[[list[_Rollout], int], list[_Hypothesis]],
                can_repair: Callable[[_Rollout, int], bool],
                repair: Callable[[_Rollout], _Hypothesis | None]) -> Iterator[Sequence[int]]:
    """DeAL's search loop, whichever backend computes the rollouts (in process, or a remote server).

    Each round expands the live hypotheses (``expand``: rollouts ranked best first), keeps the beam,
    commits ``search_every`` tokens of the survivors (``advance``) or backs off a premature ending
    (``can_repair``/``repair``), and yields the tokens every kept path agrees on.
    """
    live = [first]
    best_done: _Rollout | None = None
    emitted = 0
    while live:
        budget = job.max_new_tokens - len(live[0].tokens)
        ranked = expand(live, budget)
        kept = ranked[: params.beam_width]
        # The best finished answer so far (a fallback ending counts even when live ones rank higher);
        # tokens past the point where it branches off are held back until it is beaten.
        for r in ranked:
            if r.finished and (r in kept or r.key[0] == 2.5) and (best_done is None or r.key > best_done.key):
                best_done = r
        going = [r for r in kept if not r.finished and r.rows]
        if best_done is not None and (not going or best_done.key >= going[0].key):
            going = []  # a finished answer beats every live one
        live = []
        commit = min(params.search_every, len(going[0].tokens) - 1) if going else 0
        if going and budget > commit:
            live = advance(going, commit)
        elif best_done is not None and can_repair(best_done, budget):
            repaired = repair(best_done)
            if repaired is not None:
                live, best_done = [repaired], None
        if live:
            done = [best_done.ids] if best_done is not None else []
            tokens = _common_prefix([h.tokens for h in live] + done)
        else:
            final = ranked[0] if best_done is None or ranked[0].key > best_done.key else best_done
            tokens = final.ids
        if len(tokens) > emitted:
            yield tokens[emitted:]
            emitted = len(tokens)
        if not live or job.finished:
            return


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    first = sequences[0]
    n = len(first)
    for seq in sequences[1:]:
        n = min(n, len(seq))
        for i in range(n):
            if seq[i] != first[i]:
                n = i
                break
    return first[:n]


@register_strategy
class DealStrategy(Strategy):
    """Lookahead search: top-k candidates rolled out in one batch, scored by the reward, best kept.

    Example:
        >>> from shared_core import generate
        >>> words = ["dog", "frisbee", "catch", "park"]
        >>> r = generate("smollm2", "Write one sentence using all of these words: " + ", ".join(words) + ".",
        ...              strategy="deal", reward={"type": "keywords", "words": words})  # doctest: +SKIP
    """

    name = "deal"
    Params = DealParams
    needs_reward = True
    needs = frozenset({"samples", "top_logprobs"})  # remotely: greedy rollouts with their top-k
    description = "DeAL lookahead search: top-k candidates rolled out in one batch and ranked by the reward"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return _deal_loop(job, job.params)


