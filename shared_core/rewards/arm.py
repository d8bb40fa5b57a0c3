"""Autoregressive reward models (ARMs): a causal LM whose log-likelihood of a response is the reward.

GenARM (Xu et al., 2024) parametrizes the reward of a response ``y`` to a prompt ``x`` as the
log-likelihood an autoregressive model gives it, ``r(x, y) = sum_t log pi_ARM(y_t | x, y_<t)``. Because
the reward decomposes over tokens, ``log pi_ARM(. | x, y_<t)`` is a token-level reward that a decoder
can add to the base model's next-token log-probs at no more cost than one extra cached forward per
token (see :mod:`shared_core.decoding.genarm`).

Any causal LM sharing the base model's tokenizer works as an ARM:

* a trained one (``deal train-arm``, :func:`shared_core.arm_training.train_arm`), or
* a *prompted* one: an instruct model given a preference statement (``instruction``) as a system
  message, so it reads the same conversation conditioned on the preference. This is a stand-in
  when no trained ARM exists; it steers toward whatever the instruction asks, as well as the
  model understands it.

The spec: ``{"type": "arm", "model": "smollm2", "weight": 1.0, "instruction": "Answer in one sentence."}``.
``weight`` is GenARM's alpha: the reward this class reports is ``weight * log pi_ARM(y | x)``, so a
weighted sum of ARM rewards is exactly the exponent GenARM decodes with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from shared_core.compute import count_forward, exclusive_forward
from shared_core.errors import ConfigError, DealError, ModelLoadError, RewardError
from shared_core.rewards.base import Reward, RewardSpecBase, validated_spec

if TYPE_CHECKING:
    import torch

    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats


# --------------------------------------------------------------------------- prompts


def instructed_prompt(prompt: Any, instruction: str | None, *, chat: bool) -> Any:
    """``prompt`` conditioned on a preference statement: what a prompted ARM reads.

    Chat prompts get the instruction as a system message (appended to an existing system message);
    raw-text prompts (``chat=False``) get it as a paragraph before the text.
    """
    if instruction is None:
        return prompt
    if isinstance(prompt, str):
        if not chat:
            return f"{instruction}\n\n{prompt}"
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content') or ''}\n\n{instruction}".strip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


# --------------------------------------------------------------------------- vocabulary checks

_SAME_VOCAB: dict[tuple[str, str], bool] = {}


def same_vocabulary(a: LocalModel, b: LocalModel) -> bool:
    """Whether two models' tokenizers map every token string to the same id (cached per pair)."""
    if a is b or a.tokenizer is b.tokenizer:
        return True
    key = (a.source, b.source)
    if key not in _SAME_VOCAB:
        ta, tb = a.tokenizer, b.tokenizer
        _SAME_VOCAB[key] = len(ta) == len(tb) and ta.get_vocab() == tb.get_vocab()
    return _SAME_VOCAB[key]


def check_shared_vocabulary(policy: LocalModel, other: LocalModel, field: str, role: str = "ARM") -> int:
    """Raises :class:`ConfigError` on ``field`` unless ``other`` shares ``policy``'s vocabulary.

    Returns the number of logit columns both models have (their output layers may be padded past
    the tokenizer's length; only the common columns are combined).
    """
    if not same_vocabulary(policy, other):
        raise ConfigError(
            field,
            f"the {role} {other.name!r} uses a different tokenizer ({len(other.tokenizer)} tokens) than the "
            f"policy model {policy.name!r} ({len(policy.tokenizer)} tokens); token-level guidance adds "
            f"next-token log-probs, so both must share one vocabulary. Use a model from the same family, or "
            f"train an ARM from the policy model with `deal train-arm --base {policy.name}`",
        )
    width = min(policy.vocab_size, other.vocab_size)
    if width < len(policy.tokenizer):
        raise ConfigError(field, f"the {role} {other.name!r} has {other.vocab_size} output logits, fewer than "
                                 f"the {len(policy.tokenizer)} tokens of the shared tokenizer")
    return width


def check_model_name(field: str, name: Any) -> str:
    """Checks that ``name`` is a model alias, an existing folder/GGUF or a hub id, without loading it."""
    from shared_core.models import locate_model

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(field, f"must be a model alias (e.g. 'smollm2'), a model folder or a hub id, got {name!r}")
    try:
        locate_model(name)
    except ConfigError as exc:
        raise ConfigError(field, str(exc).split(": ", 1)[-1]) from exc
    except ModelLoadError as exc:
        raise ConfigError(field, str(exc).removeprefix("model: ")) from exc
    return name.strip()


# --------------------------------------------------------------------------- log-likelihoods


def response_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
) -> torch.Tensor:
    """``sum_t log p(response_t | prompt, response_<t)`` for each (prompt, response) pair, shape (n,).

    One right-padded batch; gradients flow when called with grad enabled (ARM training uses this).
    An empty response scores 0.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    labels = torch.full((len(rows), width), -100, dtype=torch.long, device=device)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
        labels[i, len(prompt) : len(row)] = torch.tensor(row[len(prompt) :], dtype=torch.long)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1]
    targets = labels[:, 1:]
    token_lp = -F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    return token_lp.sum(dim=-1)


# --------------------------------------------------------------------------- the spec


class ArmSpec(RewardSpecBase):
    """``{"type": "arm", "model": ..., "weight": 1.0, "instruction": ...}`` (:class:`ArmReward`)."""

    type: Literal["arm"] = "arm"
    model: str = Field(min_length=1, description="Causal LM sharing the policy's tokenizer: alias, folder or hub id.")
    weight: float = Field(1.0, description="GenARM's alpha: finite and >= 0.")
    instruction: str | None = Field(None, min_length=1, description="Preference statement for a prompted ARM.")

    @field_validator("weight")
    @classmethod
    def _valid_alpha(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight (alpha) must be a finite number >= 0, got {value!r}; to steer away from a "
                             "behaviour, give the ARM an instruction that prefers the opposite")
        return value

    @field_validator("instruction")
    @classmethod
    def _real_instruction(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty string or None")
        return value

    def build(self) -> ArmReward:
        return ArmReward(spec=self)


# --------------------------------------------------------------------------- the reward


class ArmReward(Reward):
    """An autoregressive reward model: ``weight * log pi_ARM(continuation | prompt)``.

    Used by the ``genarm`` strategy as token-level guidance (``log p_base + weight * log p_ARM``),
    and by any other strategy as a text reward. The model loads on first use through the
    process-wide model cache, on the policy model's device and dtype when guiding it.

    Args:
        model: an embedded alias (``"smollm2"``), a model folder (e.g. one written by
            ``deal train-arm``), a ``.gguf`` file, or a hub id. Checked here; loaded later.
        weight: GenARM's alpha, finite and ``>= 0``. ``0`` turns the ARM off (the base model's output
            is then unchanged).
        instruction: a preference statement (e.g. ``"Answer in one short sentence."``); the ARM then
            reads the conversation with it as a system message (a prompted ARM).

    Example:
        >>> arm = ArmReward("smollm2", weight=1.0, instruction="Answer in one short sentence.")  # doctest: +SKIP
        >>> arm.score(["Paris.", "Well, there are many cities ..."], prompt="Capital of France?")  # doctest: +SKIP
    """

    name = "arm"
    guidance = "arm"

    def __init__(self, model: str | None = None, weight: float = 1.0, instruction: str | None = None, *,
                 spec: ArmSpec | None = None) -> None:
        if spec is None:
            spec = validated_spec(ArmSpec, model=model, weight=weight, instruction=instruction)
        self.spec: ArmSpec = spec
        self.model = check_model_name("model", spec.model)
        self.weight = spec.weight
        self.instruction = spec.instruction.strip() if spec.instruction is not None else None

    # -- loading -------------------------------------------------------------------------------

    def load(self, policy: LocalModel | None = None, *, field: str = "model") -> LocalModel:
        """The ARM as a :class:`LocalModel`; with ``policy``, on its device and dtype and vocabulary-checked."""
        from shared_core.models import load_model

        try:
            if policy is None:
                return load_model(self.model)
            arm = load_model(self.model, device=policy.device, dtype=policy.dtype)
        except ModelLoadError as exc:
            raise ConfigError(field, f"cannot load ARM {self.model!r}: {exc}") from exc
        check_shared_vocabulary(policy, arm, field)
        return arm

    def prompt_ids(self, arm: LocalModel, prompt: Any, *, chat: bool | None = None,
                   policy_prompt_ids: Sequence[int] | None = None) -> list[int]:
        """The ARM's own prompt ids for a request.

        Without an instruction the ARM reads exactly the policy's prompt ids (same tokenizer, same
        rendering), when given; with one, the conversation is re-rendered with the instruction.
        """
        if self.instruction is None and policy_prompt_ids is not None:
            return list(policy_prompt_ids)
        use_chat = arm.has_chat_template if chat is None else chat
        if not isinstance(prompt, str):
            use_chat = True
        return arm.render(instructed_prompt(prompt, self.instruction, chat=use_chat), chat=use_chat)

    # -- scoring -------------------------------------------------------------------------------

    def log_likelihood(self, continuations: Sequence[str], *, prompt: str | Sequence[Mapping[str, Any]] = "",
                       batch_size: int = 8) -> list[float]:
        """``log pi_ARM(continuation | prompt)`` (unweighted) for each text, batched."""
        arm = self.load()
        prompt_ids = self.prompt_ids(arm, prompt)
        out: list[float] = []
        for start in range(0, len(continuations), batch_size):
            chunk = [arm.encode(text) for text in continuations[start : start + batch_size]]
            count_forward(f"arm:{self.model}", sum(len(prompt_ids) + len(ids) for ids in chunk))
            with exclusive_forward(arm.device):
                values = response_logprobs(arm.model, [prompt_ids] * len(chunk), chunk, pad_id=arm.pad_token_id)
            out.extend(float(v) for v in values)
        return out

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        texts = list(continuations)
        if not texts:
            return []
        if self.weight == 0.0:
            return [0.0] * len(texts)
        try:
            return [self.weight * v for v in self.log_likelihood(texts, prompt=prompt)]
        except DealError:
            raise
        except Exception as exc:
            raise RewardError(f"reward 'arm' ({self.model}) failed on {len(texts)} text(s): "
                              f"{type(exc).__name__}: {exc}") from exc

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> ArmTokenScorer | None:
        """An incremental scorer (one cached ARM forward per step) when the ARM reads the policy's prompt.

        Prompted ARMs (``instruction`` set) return ``None``: their prompt is re-rendered from the request,
        so strategies fall back to :meth:`score`.
        """
        if self.instruction is not None or getattr(model, "tokenizer", None) is None:
            return None
        arm = self.load(model)
        return ArmTokenScorer(self, arm, list(prompt_ids), stats)


class ArmTokenScorer:
    """Rates candidate next tokens as ``weight * (log pi_ARM(prefix) + log pi_ARM(candidate | prefix))``.

    Keeps the ARM's KV cache over the prompt and the committed continuation and the running
    log-likelihood of the committed tokens; each call feeds only the tokens committed since the last
    one, so all k candidates cost one ARM forward. A prefix that diverges from the cached one (a
    strategy backtracked) starts a fresh cache.
    """

    def __init__(self, reward: ArmReward, arm: LocalModel, prompt_ids: list[int],
                 stats: GenerationStats | None, *, label: str | None = None, cancel: Any = None) -> None:
        from shared_core.backends.local import ModelRunner
        from shared_core.result import GenerationStats

        self._reward = reward
        self._runner = ModelRunner(arm, stats if stats is not None else GenerationStats(),
                                   label or f"arm:{reward.model}", cancel=cancel)
        self._prompt_ids = prompt_ids
        self._cache: Any = None
        self._committed: list[int] = []
        self._total = 0.0
        self._next_logprobs: torch.Tensor | None = None

    def _advance(self, prefix: list[int]) -> None:
        import torch

        if self._cache is None or prefix[: len(self._committed)] != self._committed:
            logits, self._cache = self._runner.prefill(self._prompt_ids)
            self._next_logprobs = torch.log_softmax(logits.float(), dim=-1)
            self._committed, self._total = [], 0.0
        new = prefix[len(self._committed) :]
        if not new:
            return
        assert self._next_logprobs is not None
        ids = torch.tensor([new], dtype=torch.long, device=self._runner.device)
        logits = torch.log_softmax(self._runner.step(self._cache, ids, all_positions=True)[0].float(), dim=-1)
        self._total += float(self._next_logprobs[new[0]])
        for j in range(1, len(new)):
            self._total += float(logits[j - 1, new[j]])
        self._next_logprobs = logits[-1]
        self._committed = list(prefix)

    def next_logprobs(self, prefix_ids: Sequence[int]) -> torch.Tensor:
        """The ARM's next-token log-probs (vocab,) after its prompt and ``prefix_ids`` (one forward per new token)."""
        self._advance([int(i) for i in prefix_ids])
        assert self._next_logprobs is not None
        return self._next_logprobs

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        try:
            self._advance([int(i) for i in prefix_ids])
        except Exception as exc:
            self._cache = None
            raise RewardError(f"reward 'arm' ({self._reward.model}) failed after {len(prefix_ids)} token(s): "
                              f"{type(exc).__name__}: {exc}") from exc
        assert self._next_logprobs is not None
        weight = self._reward.weight
        return [weight * (self._total + float(self._next_logprobs[int(c)])) for c in candidate_ids]


# --------------------------------------------------------------------------- collecting ARMs from a reward


@dataclass(frozen=True)
class ArmTerm:
    """One ARM in a (possibly weighted) reward: its effective alpha and where it sits in the spec."""

    reward: ArmReward
    alpha: float
    field: str  # e.g. "reward.model" or "reward.components[1].reward.model"
    label: str  # the stats label of its forward passes, e.g. "arm:0"


def collect_arms(reward: Reward | None, *, strategy: str = "genarm") -> list[ArmTerm]:
    """The ARMs in ``reward`` with their effective alphas (component weight times ARM weight).

    Accepts an :class:`ArmReward` or a weighted reward (nested too) whose components are all ARMs.

    Raises:
        ConfigError: no reward, or a component that is not an ARM.
    """
    from shared_core.rewards.weighted import WeightedReward

    found: list[tuple[ArmReward, float, str]] = []

    def visit(node: Reward, scale: float, path: str) -> None:
        if isinstance(node, ArmReward):
            found.append((node, scale * node.weight, f"{path}.model"))
        elif isinstance(node, WeightedReward):
            for i, (weight, child) in enumerate(node.components):
                visit(child, scale * weight, f"{path}.components[{i}].reward")
        else:
            raise ConfigError(
                path,
                f"strategy {strategy!r} guides decoding with ARM next-token log-probs, but this reward is "
                f"{getattr(node, 'name', type(node).__name__)!r}; use {{\"type\": \"arm\", \"model\": ...}} "
                "(or a weighted sum of arm specs), or a strategy for text rewards (args, deal, best_of_n)",
            )

    if reward is None:
        raise ConfigError("reward", f"strategy {strategy!r} needs an ARM reward, e.g. "
                                    '{"type": "arm", "model": "smollm2", "weight": 1.0, "instruction": "..."}')
    visit(reward, 1.0, "reward")
    return [ArmTerm(r, a, f, f"arm:{i}") for i, (r, a, f) in enumerate(found)]


__all__ = [
    "ArmReward",
    "ArmTerm",
    "ArmTokenScorer",
    "check_model_name",
    "check_shared_vocabulary",
    "collect_arms",
    "instructed_prompt",
    "response_logprobs",
    "same_vocabulary",
]
