"""Classifier reward model: any ``AutoModelForSequenceClassification``, scored on text or incrementally."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, field_validator

from shared_core.compute import count_forward, exclusive_forward
from shared_core.errors import ConfigError, DealError, ModelLoadError, RewardError
from shared_core.hf_compat import CACHE_ARGUMENTS, cache_argument, forward_accepts, report_slow_path
from shared_core.rewards.base import Reward, RewardSpecBase, validated_spec
from shared_core.tokenization import encode_truncated, pad_right

__all__ = [
    "ClassifierReward",
    "ClassifierSpec",
    "ClassifierTokenScorer",
    "causal_head",
    "load_shared",
    "resolve_source",
    "same_vocabulary",
]

if TYPE_CHECKING:
    import torch

    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats

T = TypeVar("T")
ClassifierOutput = Literal["logit", "probability"]


def resolve_source(field: str, name: str) -> str:
    """What ``from_pretrained`` reads for a folder, alias ("smollm2") or hub id; else a ConfigError on ``field``.

    Goes through ``shared_core.models.resolve_model_source``, so rewards accept the same names as the
    policy model (an embedded alias is converted to a safetensors folder once, on first use).
    """
    from shared_core.models import resolve_model_source

    try:
        return resolve_model_source(name)
    except ConfigError as exc:
        raise ConfigError(field, str(exc).partition(": ")[2] or str(exc)) from exc
    except (DealError, OSError, ValueError, KeyError) as exc:  # the message names the value and why
        raise ConfigError(field, str(exc).removeprefix("model: ")) from exc


def load_shared(key: Any, factory: Callable[[], T], *, model: bool = True) -> T:
    """``factory()`` once per process for ``key`` (the process-wide model cache), then the same object.

    ``model=False`` marks a small derived value (a tokenizer, a fitted probe) that does not count
    toward the cache's model limit.
    """
    from shared_core.models import cached

    return cached(key, factory, model=model)


def _read_labels(source: str) -> list[str] | None:
    """Label names from a local folder's ``config.json`` without loading the model; ``None`` for a hub id."""
    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError("model", f"cannot read {config_file}: {exc}") from exc
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]
    num_labels = int(config.get("num_labels", 2))
    return [f"LABEL_{i}" for i in range(num_labels)]


def _resolve_label(label: str | int | None, labels: list[str], model: str) -> int:
    """Index of ``label`` among ``labels``; the default is the only logit, or the last label."""
    if label is None:
        return len(labels) - 1
    if isinstance(label, bool):
        raise ConfigError("label", f"must be a label name or index, got {label!r}")
    if isinstance(label, str):
        lowered = [name.lower() for name in labels]
        if label.lower() in lowered:
            return lowered.index(label.lower())
        if label.isdigit():
            label = int(label)
        else:
            raise ConfigError("label", f"{label!r} is not a label of {model!r}; labels: {labels}")
    if not 0 <= label < len(labels):
        raise ConfigError("label", f"index {label} is out of range for {model!r} with {len(labels)} label(s)")
    return label


def causal_head(classifier: Any) -> torch.nn.Module | None:
    """The per-position classification head of a decoder-only classifier, or ``None``.

    Decoder-only sequence classifiers (Llama, Mistral, Qwen2, Gemma, GPT-2, ...) apply a linear
    ``score`` head to every position's hidden state and pool the last token, so a prefix's KV cache can
    be reused. Encoder classifiers (BERT and friends) pool a first token through other layers and
    cannot be scored incrementally.
    """
    import torch

    head = getattr(classifier, "score", None)
    if not isinstance(head, torch.nn.Linear) or getattr(classifier.config, "is_encoder_decoder", False):
        return None
    base = classifier.base_model
    if not any(forward_accepts(base, name) for name in CACHE_ARGUMENTS) or not forward_accepts(base, "position_ids"):
        return None
    return head


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every token string to the same id."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class ClassifierSpec(RewardSpecBase):
    """``{"type": "classifier", "model": ..., "label": ...}``: one label of a sequence classifier (:class:`ClassifierReward`).

    A spec cannot turn on ``trust_remote_code`` (specs come from files and requests): construct
    :class:`ClassifierReward` in Python to opt in.
    """

    type: Literal["classifier"] = "classifier"
    model: str = Field(min_length=1, description="Model folder, alias (e.g. 'smollm2') or hub id.")
    label: str | int | None = Field(None, description="Label name or index; default: the last label.")
    output: Literal["logit", "probability"] = "logit"
    include_prompt: bool = True
    max_length: int = Field(512, gt=0)
    batch_size: int = Field(16, gt=0)
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bf16 on CUDA and on CPUs with bf16 instructions (AVX512-BF16, AMX), else fp32."
    )

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a model folder, alias or hub id")
        return value

    def build(self) -> ClassifierReward:
        return ClassifierReward(spec=self)


class ClassifierReward(Reward):
    """Score of one label of a sequence classifier (a reward model, a toxicity classifier, ...).

    Works with any Hugging Face ``AutoModelForSequenceClassification`` folder (safetensors weights
    only), a model alias (``"smollm2"`` loads the embedded chat model's weights with a fresh,
    seeded-random score head: useful for speed measurements, meaningless as a reward) or a hub id.
    The model loads on first use through the process-wide model cache, so many rewards over the same
    folder share one copy.

    Score: the raw logit of ``label`` (``output="logit"``), or its probability (``"probability"``:
    softmax over labels, or the sigmoid of the single logit of a one-label regression head). With
    ``label=None`` the last label is used, which is the only logit of a one-label reward model and
    the positive class of a binary classifier.

    With ``include_prompt=True`` (the default; reward models rate a response to a request) the
    classifier reads ``prompt + continuation``; otherwise the continuation alone. Texts are
    batched ``batch_size`` at a time and truncated from the left to ``max_length`` tokens, so the
    end of a long text (what a decoder classifier pools) is kept.

    Incremental scoring: when the policy model's tokenizer has the same vocabulary as the
    classifier's and the classifier is decoder-only, :meth:`token_scorer` keeps the classifier's own
    KV cache over the prompt and the committed continuation and rates all k candidate next tokens
    in one forward pass (see :class:`ClassifierTokenScorer`). There the prompt is the policy's own
    prompt ids (chat template included), and no truncation applies.

    Args:
        model: Model folder, alias or hub id. A path that does not exist raises :class:`ConfigError`.
        label: Label name (case-insensitive) or index; ``None`` for the last label.
        output: ``"logit"`` or ``"probability"``.
        include_prompt: Whether the classifier reads the prompt before the continuation.
        max_length: Longest tokenized text, in tokens.
        batch_size: Texts per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``. ``"auto"`` is bf16 on CUDA and on
            a CPU with bf16 instructions (AVX512-BF16, AMX), where it runs a classifier about twice as
            fast, else fp32. A reward only ranks candidates, so lower precision rarely changes a choice;
            ``"float32"`` gives the same scores on every machine.
        trust_remote_code: Allow custom model code from the folder (off unless asked for).

    Example:
        >>> reward = ClassifierReward("path/to/reward-model")  # doctest: +SKIP
        >>> reward.score(["I can't help with that.", "Sure, here's how..."], prompt="How do I ...?")  # doctest: +SKIP
        [1.7, -0.4]
    """

    name = "classifier"
    guidance = "token"

    def __init__(
        self,
        model: str | None = None,
        label: str | int | None = None,
        *,
        output: ClassifierOutput = "logit",
        include_prompt: bool = True,
        max_length: int = 512,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        spec: ClassifierSpec | None = None,
    ) -> None:
        from shared_core.models import resolve_device, resolve_reward_dtype

        if spec is None:
            spec = validated_spec(ClassifierSpec, model=model, label=label, output=output,
                                  include_prompt=include_prompt, max_length=max_length, batch_size=batch_size,
                                  device=device, dtype=dtype)
        if not isinstance(trust_remote_code, bool):
            raise ConfigError("trust_remote_code", f"must be True or False, got {trust_remote_code!r}")
        # custom model code cannot be described by a spec, so such a reward has none to serialize
        self.spec: ClassifierSpec | None = None if trust_remote_code else spec
        self.model = spec.model
        self.label = spec.label
        self.output: ClassifierOutput = spec.output
        self.include_prompt = spec.include_prompt
        self.max_length = spec.max_length
        self.batch_size = spec.batch_size
        self.trust_remote_code = trust_remote_code
        self.torch_device = resolve_device(spec.device)
        self.torch_dtype = resolve_reward_dtype(spec.dtype, self.torch_device)
        self.device = spec.device
        self.dtype = spec.dtype
        self.source = resolve_source("model", spec.model)
        labels = _read_labels(self.source)
        # Labels of a hub model are known once it is loaded; a local folder's are checked now.
        self.label_index: int | None = None if labels is None else _resolve_label(spec.label, labels, spec.model)
        self.stats_name = f"classifier:{spec.model}"

    @property
    def max_score(self) -> float | None:
        """1.0 for a probability; a logit is open-ended (``None``)."""
        return 1.0 if self.output == "probability" else None

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> tuple[Any, Any]:
        """The ``(classifier, tokenizer)`` pair, loaded once per process."""
        classifier, tokenizer = load_shared(
            ("sequence-classifier", self.source, str(self.torch_device), str(self.torch_dtype),
             self.trust_remote_code, True),  # True: safetensors only, part of what was loaded
            self._load_uncached,
        )
        if self.label_index is None:
            labels = [str(classifier.config.id2label[i]) for i in range(classifier.config.num_labels)]
            self.label_index = _resolve_label(self.label, labels, self.model)
        return classifier, tokenizer

    def _load_uncached(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
            # A checkpoint without a trained score head gets a random one: seed it so runs are repeatable.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                classifier = AutoModelForSequenceClassification.from_pretrained(
                    self.source, use_safetensors=True, trust_remote_code=self.trust_remote_code,
                    dtype=self.torch_dtype,
                ).to(self.torch_device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load classifier {self.model!r} from {self.source}: {exc}") from exc
        classifier.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if classifier.config.pad_token_id is None:
            classifier.config.pad_token_id = tokenizer.pad_token_id
        return classifier, tokenizer

    # -- scoring -------------------------------------------------------------------------------

    def _to_scores(self, logits: torch.Tensor) -> list[float]:
        """Rows of label logits -> this reward's scores."""
        import torch

        logits = logits.float()
        if self.output == "logit":
            values = logits[:, self.label_index]
        elif logits.shape[-1] == 1:
            values = torch.sigmoid(logits[:, 0])
        else:
            values = torch.softmax(logits, dim=-1)[:, self.label_index]
        return [float(v) for v in values]

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Scores of token-id sequences in the classifier's vocabulary (batched, right-padded)."""
        import torch

        classifier, tokenizer = self.load()
        head = causal_head(classifier)
        fallback_id = next(
            (i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None),
            0,
        )
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            batch = [list(seq) or [fallback_id] for seq in sequences[start : start + self.batch_size]]
            input_ids, attention_mask = pad_right(batch, tokenizer.pad_token_id)
            input_ids, attention_mask = input_ids.to(self.torch_device), attention_mask.to(self.torch_device)
            count_forward(self.stats_name, sum(len(seq) for seq in batch))
            with exclusive_forward(self.torch_device):
                if head is not None:
                    # Pool the last real token ourselves: robust when the pad id also occurs in text.
                    hidden = classifier.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                    last = attention_mask.sum(dim=1) - 1
                    logits = head(hidden[torch.arange(len(batch), device=hidden.device), last])
                else:
                    logits = classifier(input_ids=input_ids, attention_mask=attention_mask).logits
            scores.extend(self._to_scores(logits))
        return scores

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        texts = [prompt + text if self.include_prompt and prompt else text for text in continuations]
        if not texts:
            return []
        try:
            _, tokenizer = self.load()
            return self.score_ids(encode_truncated(tokenizer, texts, self.max_length, keep="end"))
        except DealError:
            raise
        except Exception as exc:
            raise RewardError(
                f"reward {self.name!r} ({self.model}) failed on {len(texts)} text(s), "
                f"first {_preview(texts[0])}: {type(exc).__name__}: {exc}"
            ) from exc

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> ClassifierTokenScorer | None:
        """A :class:`ClassifierTokenScorer` when ``model`` shares this classifier's vocabulary, else ``None``."""
        policy_tokenizer = getattr(model, "tokenizer", None)
        if policy_tokenizer is None:
            return None
        classifier, tokenizer = self.load()
        head = causal_head(classifier)
        if head is None:
            report_slow_path(stats, "classifier_incremental", (
                f"classifier {self.model!r} ({type(classifier).__name__}) is not a decoder-only classifier whose "
                "forward takes a KV cache and position ids, so every candidate text is re-read in full; a "
                "decoder-only reward model (Llama, Qwen2, Gemma, ...) is scored incrementally"))
            return None
        if not same_vocabulary(policy_tokenizer, tokenizer):
            report_slow_path(stats, "classifier_incremental", (
                f"classifier {self.model!r} has another vocabulary than the policy model "
                f"{getattr(model, 'name', '?')!r}, so candidates are decoded to text and re-read in full; a "
                "classifier sharing the policy's tokenizer is scored incrementally"))
            return None
        return ClassifierTokenScorer(self, classifier, head, list(prompt_ids) if self.include_prompt else [], stats)


class ClassifierTokenScorer:
    """Rates k candidate next tokens with one classifier forward over a kept KV cache.

    The cache holds the classifier's keys and values for ``prompt_ids + committed continuation``.
    Each call feeds, as one row, the committed tokens not yet in the cache followed by the k
    candidates, with a float 4D attention mask: committed tokens attend causally; every candidate
    attends the whole prefix and itself only, at the same position id (the prefix length). The head
    reads each candidate's hidden state, and the candidates' cache entries are cropped off again, so
    one forward per decoding step covers both extending the prefix and scoring all candidates.

    If the committed prefix diverges from what is cached (a strategy backtracked), the cache is
    cropped back to the common part first.
    """

    def __init__(
        self,
        reward: ClassifierReward,
        classifier: Any,
        head: torch.nn.Module,
        prompt_ids: list[int],
        stats: GenerationStats | None,
    ) -> None:
        from transformers import DynamicCache

        self._reward = reward
        self._classifier = classifier
        self._base = classifier.base_model
        self._head = head
        self._prompt_ids = prompt_ids
        self._stats = stats
        self._cache = DynamicCache(config=classifier.config)
        self._cached_ids: list[int] = []

    def _sync_prefix(self, target: list[int]) -> int:
        """Crop the cache to its longest common prefix with ``target``; return that length."""
        common = 0
        limit = min(len(self._cached_ids), len(target))
        while common < limit and self._cached_ids[common] == target[common]:
            common += 1
        if common < len(self._cached_ids):
            self._cache.crop(-(len(self._cached_ids) - common))
            self._cached_ids = self._cached_ids[:common]
        return common

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        import torch

        candidates = [int(c) for c in candidate_ids]
        if not candidates:
            return []
        target = self._prompt_ids + [int(i) for i in prefix_ids]
        try:
            past = self._sync_prefix(target)
            new = target[past:]
            n, k = len(new), len(candidates)
            dtype, device = self._head.weight.dtype, self._head.weight.device
            blocked = torch.finfo(dtype).min
            mask = torch.full((1, 1, n + k, past + n + k), blocked, dtype=dtype)
            mask[..., :past] = 0.0  # everyone sees the cached prefix
            mask[0, 0, :n, past : past + n] = torch.full((n, n), blocked, dtype=dtype).triu(1)  # causal
            mask[0, 0, n:, past : past + n] = 0.0  # candidates see every new committed token
            mask[0, 0, n:, past + n :] = torch.full((k, k), blocked, dtype=dtype).fill_diagonal_(0.0)  # and themselves
            positions = list(range(past, past + n)) + [past + n] * k
            with exclusive_forward(device):
                hidden = self._base(
                    input_ids=torch.tensor([new + candidates], dtype=torch.long, device=device),
                    attention_mask=mask.to(device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=device),
                    use_cache=True,
                    **{cache_argument(self._base): self._cache},
                ).last_hidden_state
                logits = self._head(hidden[0, n:])
            self._cache.crop(-k)
            self._cached_ids = target
        except Exception as exc:
            # The cache may hold a partial update: start over from an empty one next time.
            self._cache = type(self._cache)(config=self._classifier.config)
            self._cached_ids = []
            raise RewardError(
                f"reward {self._reward.name!r} ({self._reward.model}) failed scoring {len(candidates)} "
                f"candidate token(s) after {len(target)} token(s): {type(exc).__name__}: {exc}"
            ) from exc
        count_forward(self._reward.stats_name, n + k, stats=self._stats)
        scores = self._reward._to_scores(logits)
        if not all(math.isfinite(s) for s in scores):
            raise RewardError(f"reward {self._reward.name!r} produced a non-finite score: {scores}")
        return scores
