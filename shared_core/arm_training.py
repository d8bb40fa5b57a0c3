"""Training an autoregressive reward model (ARM) from preference pairs with the GenARM objective.

GenARM parametrizes the reward as the ARM's log-likelihood of the response,
``r(x, y) = beta * sum_t log pi_ARM(y_t | x, y_<t)``, and fits it with the Bradley-Terry loss on
(chosen, rejected) pairs:

    loss = -log sigmoid(beta * (log pi_ARM(chosen | x) - log pi_ARM(rejected | x)))

By default both log-likelihoods are taken relative to the frozen starting model
(``reference=True``, the DPO form: ``beta * ((log pi_ARM(c) - log pi_ref(c)) - (log pi_ARM(r) - log pi_ref(r)))``).
The plain form (``reference=False``) saturates at once when chosen and rejected differ a lot in
length: a short answer is already far more likely than a long one under any language model, the
loss starts near 0 and nothing is learnt. Relative to the reference, training starts at ``log 2``
and learns only what the pairs prefer beyond what the starting model already did.

To stay within minutes on a CPU, only the top ``train_layers`` decoder layers and the final norm are
trained (no adapters needed): the frozen lower layers build no autograd graph, and the embeddings /
tied output layer stay fixed. The result is a normal model folder (safetensors + tokenizer) that
:func:`shared_core.models.load_model` and the ``{"type": "arm", "model": FOLDER}`` spec read.

The preference file is JSON lines, one pair per line::

    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Well, ..."}

``prompt`` may also be a list of chat messages. The prompt is rendered with the model's chat template
(as the policy model renders it when decoding), and each response ends with the EOS token, so the
ARM also learns where a preferred answer stops.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shared_core.errors import ConfigError

EXAMPLE_PREFERENCES = "arm_preferences.jsonl"
EXAMPLE_HELDOUT = "arm_heldout.jsonl"


def example_path(name: str = EXAMPLE_PREFERENCES) -> Path:
    """The path of a preference file shipped with deal (``arm_preferences.jsonl``, ``arm_heldout.jsonl``)."""
    return Path(str(resources.files("shared_core") / "data" / name))


@dataclass(frozen=True)
class PreferencePair:
    """One preference: for ``prompt``, ``chosen`` is preferred over ``rejected``."""

    prompt: Any  # a string or a list of chat messages
    chosen: str
    rejected: str


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Reads a JSON-lines preference file; a bad line raises :class:`ConfigError` naming its number."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("preferences", f"file {str(file)!r} does not exist (expected JSON lines with "
                                         "prompt / chosen / rejected)")
    pairs: list[PreferencePair] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"preferences line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(where, f"not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise ConfigError(where, f"expected an object with prompt / chosen / rejected, got {type(row).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise ConfigError(f"{where}.{key}", "missing")
        prompt = row["prompt"]
        if not ((isinstance(prompt, str) and prompt.strip()) or (isinstance(prompt, list) and prompt)):
            raise ConfigError(f"{where}.prompt", "must be a non-empty string or a list of chat messages")
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ConfigError(f"{where}.{key}", "must be a non-empty string")
        if row["chosen"] == row["rejected"]:
            raise ConfigError(where, "chosen and rejected are identical")
        pairs.append(PreferencePair(prompt, row["chosen"], row["rejected"]))
    if not pairs:
        raise ConfigError("preferences", f"{str(file)!r} holds no preference pairs")
    return pairs


@dataclass
class ArmTrainingReport:
    """What a training run did: the loss curve, how often the ARM ranks pairs right, and the time."""

    out_dir: str
    base: str
    pairs: int
    epochs: int
    steps: int
    beta: float
    learning_rate: float
    train_layers: int | None
    reference: bool
    trainable_parameters: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_accuracies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder layers (the ``nn.ModuleList`` with ``num_hidden_layers`` blocks)."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError("train_layers", f"cannot find the decoder layers of {type(model).__name__}; "
                                      "use train_layers=None to train every parameter")


def freeze_for_arm_training(model: Any, train_layers: int | None) -> int:
    """Leaves only the top ``train_layers`` decoder layers and the final norm trainable; returns their size.

    ``None`` trains everything.
    """
    if train_layers is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    for layer in layers[len(layers) - train_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = getattr(model.base_model, "norm", None) or getattr(model.base_model, "final_layernorm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


Encoded = tuple[list[int], list[int], list[int]]


def encode_pairs(lm: Any, pairs: Sequence[PreferencePair], max_length: int) -> list[Encoded]:
    """(prompt ids, chosen ids + EOS, rejected ids + EOS), prompts left-truncated to fit ``max_length``."""
    eos = lm.tokenizer.eos_token_id
    out = []
    for pair in pairs:
        prompt = lm.render(pair.prompt)
        chosen = lm.encode(pair.chosen) + ([eos] if eos is not None else [])
        rejected = lm.encode(pair.rejected) + ([eos] if eos is not None else [])
        room = max_length - max(len(chosen), len(rejected))
        if room < 1:
            chosen, rejected = chosen[: max_length // 2], rejected[: max_length // 2]
            room = max_length - max(len(chosen), len(rejected))
        out.append((prompt[-room:], chosen, rejected))
    return out


def preference_margins(model: Any, encoded: Sequence[Encoded], *,
                       pad_id: int, batch_size: int = 8) -> list[float]:
    """``log pi(chosen) - log pi(rejected)`` per pair under ``model`` (no gradients)."""
    import torch

    from shared_core.rewards.arm import response_logprobs

    margins: list[float] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        prompts = [p for p, _, _ in chunk] * 2
        responses = [c for _, c, _ in chunk] + [r for _, _, r in chunk]
        with torch.inference_mode():
            lp = response_logprobs(model, prompts, responses, pad_id=pad_id)
        margins.extend(float(a - b) for a, b in zip(lp[: len(chunk)], lp[len(chunk) :]))
    return margins


def _check_positive(name: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        kind = "a positive integer" if integer else "a finite number > 0"
        raise ConfigError(name, f"must be {kind}{' or None' if allow_none else ''}, got {value!r}")


def train_arm(
    base: str = "smollm2",
    preferences_path: str | Path | None = None,
    out_dir: str | Path = "arm-model",
    *,
    epochs: int = 2,
    beta: float = 0.1,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    train_layers: int | None = 4,
    reference: bool = True,
    max_length: int = 256,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> ArmTrainingReport:
    """Trains an ARM from ``base`` on (chosen, rejected) pairs and saves it to ``out_dir``.

    Args:
        base: the model to start from (alias, folder, GGUF or hub id): use the policy model (or one
            sharing its tokenizer) so the ARM can guide it.
        preferences_path: JSON lines of ``{"prompt", "chosen", "rejected"}``; default: the example
            file shipped with deal (concise answers preferred over verbose ones).
        out_dir: where the ARM folder is written (created; files inside are overwritten).
        epochs: passes over the pairs.
        beta: the Bradley-Terry scale on the log-likelihood difference.
        learning_rate: AdamW learning rate.
        batch_size: pairs per optimizer step.
        train_layers: how many top decoder layers to train (plus the final norm); ``None`` = all.
        reference: measure log-likelihoods relative to the frozen starting model (DPO form; the
            default). ``False`` is GenARM's plain objective.
        max_length: the longest prompt + response, in tokens.
        seed: shuffling seed.
        log: called with a progress line after each epoch (e.g. ``print``).

    Returns:
        An :class:`ArmTrainingReport` (also written as ``arm_training.json`` in ``out_dir``).

    Example:
        >>> report = train_arm("smollm2", None, "my-arm", epochs=2)          # doctest: +SKIP
        >>> generate("smollm2", "What is tea?", strategy="genarm",             # doctest: +SKIP
        ...          reward={"type": "arm", "model": "my-arm", "weight": 1.0})
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from shared_core.models import load_model, resolve_model_source
    from shared_core.rewards.arm import response_logprobs

    _check_positive("epochs", epochs, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("max_length", max_length, integer=True)
    _check_positive("train_layers", train_layers, integer=True, allow_none=True)
    _check_positive("beta", beta)
    _check_positive("learning_rate", learning_rate)
    pairs = load_preferences(preferences_path or example_path())
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError("out_dir", f"{str(out)!r} exists and is not a folder")

    started = time.perf_counter()
    lm = load_model(base, device="cpu", dtype="float32")  # tokenizer, rendering, and the frozen reference
    if train_layers is not None and train_layers > lm.model.config.num_hidden_layers:
        layers = lm.model.config.num_hidden_layers
        raise ConfigError("train_layers", f"the model has {layers} decoder layers, got {train_layers}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_source(base), dtype=torch.float32,
                                                 use_safetensors=True)
    model.train()
    trainable = freeze_for_arm_training(model, train_layers)
    encoded = encode_pairs(lm, pairs, max_length)
    pad_id = lm.pad_token_id

    reference_margins = [0.0] * len(encoded)
    if reference:
        reference_margins = preference_margins(lm.model, encoded, pad_id=pad_id)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    order = list(range(len(encoded)))
    rng = random.Random(seed)
    report = ArmTrainingReport(
        out_dir=str(out), base=base, pairs=len(pairs), epochs=epochs, steps=0, beta=beta,
        learning_rate=learning_rate, train_layers=train_layers, reference=reference,
        trainable_parameters=trainable, seconds=0.0,
    )
    for epoch in range(epochs):
        rng.shuffle(order)
        epoch_loss, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            chunk = [encoded[i] for i in idx]
            prompts = [p for p, _, _ in chunk] * 2
            responses = [c for _, c, _ in chunk] + [r for _, _, r in chunk]
            lp = response_logprobs(model, prompts, responses, pad_id=pad_id)
            margin = lp[: len(chunk)] - lp[len(chunk) :]
            margin = margin - torch.tensor([reference_margins[i] for i in idx], dtype=margin.dtype)
            loss = -F.logsigmoid(beta * margin).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            report.steps += 1
            report.losses.append(float(loss.detach()))
            epoch_loss += float(loss.detach()) * len(chunk)
            correct += int((margin > 0).sum())
            if log is not None and report.steps % 8 == 0:
                log(f"  step {report.steps}: loss {report.losses[-1]:.4f}, {time.perf_counter() - started:.0f}s")
        report.epoch_losses.append(epoch_loss / len(order))
        report.epoch_accuracies.append(correct / len(order))
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {report.epoch_losses[-1]:.4f}, "
                f"pairs ranked right {report.epoch_accuracies[-1]:.0%}, {time.perf_counter() - started:.0f}s")

    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    report.seconds = time.perf_counter() - started
    (out / "arm_training.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report


__all__ = [
    "ArmTrainingReport",
    "PreferencePair",
    "encode_pairs",
    "example_path",
    "freeze_for_arm_training",
    "load_preferences",
    "preference_margins",
    "train_arm",
]
