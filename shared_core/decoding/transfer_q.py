"""Transfer Q*: value each top-k candidate token by rolling out an aligned baseline model and scoring it.

Transfer Q* (Chakraborty et al., 2024, "Transfer Q Star: Principled Decoding for LLM Alignment")
estimates the optimal Q-function of a reward without training one: from the committed prefix, each of
the target (policy) model's top-k candidate tokens is extended by a short rollout (horizon H) of a
*baseline* model that is already aligned, and the reward of that rollout estimates the candidate's
value. The next token maximizes (or samples) ``log p_target(z) + Q(z) / alpha``.

* ``mode="direct"``: the baseline is aligned to the reward; ``Q(z) = r(prefix, z, rollout)``.
* ``mode="indirect"``: the baseline is aligned to something else, so each rollout is reweighted by the
  importance ratio ``p_target(rollout) / p_baseline(rollout)`` (self-normalized over the k rollouts to
  mean 1, so the scale of Q stays the reward's). With ``baseline`` equal to the target, every ratio
  is 1 and indirect equals direct.

Cost per committed token: ``H`` batched baseline forwards over k rows (the baseline's prefix cache is
expanded to k rows with ``batch_repeat_interleave``, extended by the rollouts, then cropped back and
reduced to the chosen row, which already holds the committed token) plus one target forward (in
indirect mode that forward scores all k rollouts at once and also yields the next logits). One
reward call scores the k rollout texts. When the baseline is the target itself, reading the same
prompt, the two share one cache and the target needs no forward of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.errors import ConfigError
from shared_core.models import LocalModel, load_model, resolve_model_source
from shared_core.processors.sampling import SamplingParams, choose_tokens
from shared_core.rewards.arm import check_model_name, check_shared_vocabulary, instructed_prompt


class TransferQParams(BaseModel):
    """Transfer Q* settings. ``baseline`` is required: an alias ("smollm2"), a model folder or a hub id."""

    model_config = ConfigDict(extra="forbid")

    baseline: str | None = Field(None, validate_default=True,
                                 description="the aligned baseline model that rolls out (alias, folder or hub id)")
    baseline_instruction: str | None = Field(None, min_length=1,
                                             description="preference statement the baseline reads as a system message")
    k: int = Field(5, ge=1, description="top-k candidate tokens of the target model per step")
    horizon: int = Field(8, ge=1, description="rollout length in tokens after each candidate")
    alpha: float = Field(1.0, gt=0.0, description="scores are log p_target + Q / alpha; smaller = more reward")
    mode: Literal["direct", "indirect"] = "direct"
    temperature: float = Field(0.0, ge=0.0, description="0 = pick the best candidate; > 0 samples among them")
    rollout_temperature: float = Field(0.0, ge=0.0, description="0 = greedy rollouts; > 0 samples them")

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("transfer_q needs a baseline model to roll out: an embedded alias such as "
                             "'smollm2', a model folder or a hub id (baseline=...)")
        try:
            return check_model_name("baseline", value)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @field_validator("alpha", "temperature", "rollout_temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value


def importance_weights(log_ratios: torch.Tensor) -> torch.Tensor:
    """Self-normalized importance weights with mean 1: ``k * softmax(log_ratios)``."""
    return torch.softmax(log_ratios.double(), dim=-1).float() * log_ratios.shape[-1]


def crop_to(cache: Any, length: int) -> None:
    """Crops a KV cache back to its first ``length`` positions (``DynamicCache.crop`` takes a negative count)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _eos_mask(tokens: torch.Tensor, eos_ids: frozenset[int]) -> torch.Tensor:
    if not eos_ids:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, torch.tensor(sorted(eos_ids), device=tokens.device))


@register_strategy
class TransferQStrategy(Strategy):
    """Top-k candidates valued by reward-scored rollouts of an aligned baseline (direct or indirect transfer).

    Example:
        >>> generate("smollm2", "Tips for sleep?", strategy="transfer_q", baseline="smollm2",   # doctest: +SKIP
        ...          baseline_instruction="Answer briefly and kindly.", k=5, horizon=8,
        ...          reward={"type": "length", "max_words": 40})
    """

    name = "transfer_q"
    Params = TransferQParams
    needs_reward = True
    description = "top-k tokens valued by reward on baseline-model rollouts (direct / indirect transfer)"

    def _baseline(self, job: DecodeJob, params: TransferQParams) -> tuple[LocalModel, list[int], int]:
        policy = job.model
        try:
            if resolve_model_source(params.baseline or "") == policy.source:
                baseline = policy  # the policy is its own baseline: one model, one shared cache
            else:
                baseline = load_model(params.baseline or "", device=policy.device, dtype=policy.dtype)
        except (ConfigError, OSError) as exc:
            raise ConfigError("params.baseline", f"cannot load baseline {params.baseline!r}: {exc}") from exc
        width = check_shared_vocabulary(policy, baseline, "params.baseline", role="baseline")
        if params.baseline_instruction is None:
            ids = list(job.prompt_ids)
        else:
            prompt: Any = job.prompt if job.prompt is not None else job.prompt_text
            use_chat = baseline.has_chat_template if job.chat is None else job.chat
            if not isinstance(prompt, str):
                use_chat = True
            ids = baseline.render(instructed_prompt(prompt, params.baseline_instruction, chat=use_chat),
                                  chat=use_chat)
        return baseline, ids, width

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        params: TransferQParams = job.params
        baseline, baseline_ids, width = self._baseline(job, params)
        shared = baseline is job.model and baseline_ids == list(job.prompt_ids)
        indirect = params.mode == "indirect"
        pick = SamplingParams(temperature=params.temperature)
        roll = SamplingParams(temperature=params.rollout_temperature)
        eos_ids = job.model.eos_token_ids

        target = job.runner()
        logits, target_cache = job.prefill()
        if shared:
            rollout_runner, rollout_cache = target, target_cache
        else:
            rollout_runner = job.runner(baseline, "baseline")
            _, rollout_cache = rollout_runner.prefill(baseline_ids)
        device = target.device
        job.stats.extra["transfer_q"] = {"k": params.k, "horizon": params.horizon, "mode": params.mode,
                                         "shared_cache": shared, "rollouts": 0}

        while True:
            logits = job.process_one(job.committed, logits)
            log_probs = torch.log_softmax(logits[:width].float(), dim=-1)
            k = min(params.k, width)
            cand_lp, cand = log_probs.topk(k)
            horizon = min(params.horizon, job.remaining - 1)
            committed = list(job.committed)

            # -- rollouts: k rows from the baseline's prefix cache, H batched forwards
            rollout_prefix = rollout_cache.get_seq_length()
            after_candidate: torch.Tensor | None = None  # baseline logits right after each candidate
            tokens = torch.empty((k, 0), dtype=torch.long, device=device)
            base_lp = torch.empty((k, 0), device=device)
            valid = torch.empty((k, 0), dtype=torch.bool, device=device)
            if horizon > 0:
                rollout_cache.batch_repeat_interleave(k)
                alive = ~_eos_mask(cand, eos_ids)
                step_logits = rollout_runner.step(rollout_cache, cand.view(k, 1))
                after_candidate = step_logits
                columns, lps, masks = [], [], []
                for h in range(horizon):
                    generated = [committed + [int(cand[i])] + [int(col[i]) for col in columns] for i in range(k)]
                    step_lp = torch.log_softmax(job.process(generated, step_logits)[:, :width].float(), dim=-1)
                    nxt = choose_tokens(step_lp, roll, job.generator)
                    columns.append(nxt)
                    lps.append(step_lp.gather(-1, nxt.view(k, 1)).squeeze(-1))
                    masks.append(alive.clone())
                    alive = alive & ~_eos_mask(nxt, eos_ids)
                    if h == horizon - 1 or not bool(alive.any()):
                        break
                    step_logits = rollout_runner.step(rollout_cache, nxt.view(k, 1))
                tokens, base_lp, valid = torch.stack(columns, 1), torch.stack(lps, 1), torch.stack(masks, 1)
                job.stats.extra["transfer_q"]["rollouts"] += k

            # -- rewards on the rollouts
            texts = []
            for i in range(k):
                row = [int(t) for t, ok in zip(tokens[i].tolist(), valid[i].tolist()) if ok]
                texts.append(job.candidate_text(committed + [int(cand[i])] + row))
            q = torch.tensor(job.score(texts), dtype=torch.float32, device=device)

            # -- indirect transfer: reweight by p_target(rollout) / p_baseline(rollout)
            target_after: torch.Tensor | None = None
            target_prefix = target_cache.get_seq_length()
            if indirect and tokens.shape[1] > 0:
                if shared:
                    log_ratio = torch.zeros(k, device=device)
                else:
                    n = tokens.shape[1]
                    target_cache.batch_repeat_interleave(k)
                    fed = torch.cat([cand.view(k, 1), tokens[:, : n - 1]], dim=1)
                    out = target.step(target_cache, fed, all_positions=True)
                    target_after = out[:, 0]
                    target_lp = torch.log_softmax(out[..., :width].float(), dim=-1)
                    target_lp = target_lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
                    log_ratio = ((target_lp - base_lp) * valid).sum(dim=-1)
                weights = importance_weights(log_ratio)
                q = q * weights
                job.stats.extra["transfer_q"]["last_log_ratios"] = [round(float(v), 4) for v in log_ratio]

            adjusted = cand_lp + q / params.alpha
            choice = int(choose_tokens(adjusted.unsqueeze(0), pick, job.generator)[0])
            token = int(cand[choice])
            yield (token,)
            if job.finished:
                return

            # -- advance the caches: keep the chosen row, cropped to prefix + the committed token
            index = torch.tensor([choice], device=device)
            if after_candidate is not None:
                rollout_cache.batch_select_indices(index)
                crop_to(rollout_cache, rollout_prefix + 1)
            elif not shared:
                rollout_runner.step(rollout_cache, torch.tensor([[token]], device=device))
            if shared:
                if after_candidate is not None:
                    logits = after_candidate[choice]
                else:
                    logits = target.step(target_cache, torch.tensor([[token]], device=device))[0]
            elif target_after is not None:
                target_cache.batch_select_indices(index)
                crop_to(target_cache, target_prefix + 1)
                logits = target_after[choice]
            else:
                logits = target.step(target_cache, torch.tensor([[token]], device=device))[0]
