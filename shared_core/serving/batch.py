"""The running batch of continuous batching: rows that join and leave one decoding step at a time.

Every row keeps its own KV cache positions inside one left-padded batch cache: a row joins with the
cache of its own prefill (the same forward ``generate`` runs alone, so its first token is the same),
padded on the left to the batch's length (or the batch is padded to the row's), with an attention
mask that hides the padding and explicit position ids per row. A step feeds every row's last token
in one forward; rows that finish or are cancelled leave at once (``batch_select_indices``), and
columns that only padding uses any more are trimmed off the left so a long-gone prompt costs nothing.

Only caches made of plain growing layers (``keys``/``values`` of shape (rows, heads, length, dim)) can
be padded and joined this way; :func:`joinable_cache` tells, and the scheduler sends requests for a
model with another cache layout (sliding-window layers) through the engine one turn at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from shared_core.compute import exclusive_forward
from shared_core.decoding.base import DecodeJob
from shared_core.hf_compat import cache_argument
from shared_core.models import LocalModel
from shared_core.processors.sampling import SamplingParams, choose_tokens

__all__ = ["BatchRow", "RunningBatch", "choose_next", "joinable_cache"]


def joinable_cache(cache: Any) -> bool:
    """Whether ``cache`` is made only of plain growing layers that can be padded and joined along the batch."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not isinstance(getattr(layer, "keys", None), torch.Tensor):
            return False
        if layer.keys.dim() != 4 or not isinstance(getattr(layer, "values", None), torch.Tensor):
            return False
    return True


def choose_next(job: DecodeJob, params: SamplingParams, logits: torch.Tensor) -> int:
    """The row's next token from its logits (vocab,): its processors, then argmax or a seeded sample.

    The same operations, in the same order, as :func:`shared_core.decoding.greedy.step_loop`.
    """
    scores = job.process_one(job.committed, logits)
    return int(choose_tokens(scores.unsqueeze(0), params, job.generator)[0])


@dataclass
class BatchRow:
    """One sequence in the running batch: its job, how it chooses tokens, the token it feeds next."""

    job: DecodeJob
    params: SamplingParams
    owner: Any  # the scheduler's entry this row decodes for
    next_token: int = 0
    position: int = 0  # the position id of ``next_token``
    steps: int = 0  # batched forwards this row took part in
    widest: int = 1  # the largest batch it decoded in
    extra: dict[str, Any] = field(default_factory=dict)


def _pad_left(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """Rows decoding together over one padded KV cache; call under ``torch.inference_mode``."""

    def __init__(self, lm: LocalModel) -> None:
        self.lm = lm
        self.rows: list[BatchRow] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, cache length), 1 where a row has a real token

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """The cache length every row is padded to."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, row: BatchRow, cache: Any, length: int) -> None:
        """Adds a prefilled row (its own one-row ``cache`` of ``length`` tokens) to the batch."""
        row_mask = torch.ones((1, length), dtype=torch.long, device=self.lm.device)
        if not self.rows:
            self.cache, self.mask, self.rows = cache, row_mask, [row]
            return
        assert self.mask is not None
        width = self.width
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, length - width, 2), _pad_left(theirs.keys, width - length, 2)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length - width, 2), _pad_left(theirs.values, width - length, 2)]
            )
        self.mask = torch.cat([_pad_left(self.mask, length - width, 1), _pad_left(row_mask, width - length, 1)])
        self.rows.append(row)

    def step(self) -> torch.Tensor:
        """One forward over every row's ``next_token``; returns the next-token logits (rows, vocab)."""
        assert self.mask is not None and self.rows
        device = self.lm.device
        tokens = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long, device=device)
        mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=device)], dim=1)
        width = len(self.rows)
        for row in self.rows:
            row.job.stats.count_forward("policy", tokens=1)
            row.steps += 1
            row.widest = max(row.widest, width)
        with exclusive_forward(device):
            out = self.lm.model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                                logits_to_keep=1, **{cache_argument(self.lm.model): self.cache})
        self.mask = mask
        for row in self.rows:
            row.position += 1
        return out.logits[:, -1]

    def keep(self, indices: Sequence[int]) -> None:
        """Keeps only the rows at ``indices`` (in order) and trims padding no remaining row needs."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        assert self.mask is not None
        index = torch.tensor(list(indices), dtype=torch.long, device=self.lm.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [self.rows[i] for i in indices]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def clear(self) -> list[BatchRow]:
        """Empties the batch; returns the rows it held."""
        rows, self.rows, self.cache, self.mask = self.rows, [], None, None
        return rows
