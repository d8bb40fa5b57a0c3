"""The in-process transformers backend: forward passes with a KV cache, counted per model.

Strategies never re-encode what is cached: the prompt is prefilled once, then each step feeds only new
tokens. ``score_candidates`` evaluates k candidate next tokens in one forward over a single row with a
tree attention mask (each candidate attends to the cached prefix and to itself, all at the same
position), so the cache is not copied k times; the candidates are cropped off the cache afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared_core.backends.base import Completion
from shared_core.backends.capabilities import LOCAL_CAPABILITIES
from shared_core.cancel import CancelToken
from shared_core.compute import exclusive_forward
from shared_core.hf_compat import cache_argument, output_cache
from shared_core.models import LocalModel
from shared_core.processors.sampling import divide_by_temperature
from shared_core.result import GenerationStats

__all__ = ["LocalBackend", "ModelRunner", "tree_mask"]


class ModelRunner:
    """Runs one model's forward passes and counts them in ``stats.forward_passes[label]``.

    Every forward holds the device's lock (see :mod:`shared_core.compute`) and first checks the
    call's cancel token, so a cancelled generation stops before its next step.
    """

    def __init__(self, lm: LocalModel, stats: GenerationStats, label: str = "policy",
                 cancel: CancelToken | None = None) -> None:
        self.lm = lm
        self.stats = stats
        self.label = label
        self.cancel = cancel

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def _forward(self, **kwargs: Any) -> Any:
        with exclusive_forward(self.lm.device):
            if self.cancel is not None:  # checked once the device is ours: a call cancelled while waiting stops here
                self.cancel.check()
            self.stats.count_forward(self.label, tokens=int(kwargs["input_ids"].numel()))
            return self.lm.model(use_cache=True, **kwargs)

    def prefill(self, ids: Sequence[int], cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Encodes ``ids`` (after ``cache``, if given); returns the last position's logits (vocab,) and the cache."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "logits_to_keep": 1}
        if cache is not None:
            kwargs[cache_argument(self.lm.model)] = cache
        out = self._forward(**kwargs)
        return out.logits[0, -1], output_cache(out)

    def step(
        self,
        cache: Any,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Feeds ``input_ids`` (rows, new) after ``cache``; returns logits (rows, vocab), or (rows, new, vocab)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, cache_argument(self.lm.model): cache}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if not all_positions:
            kwargs["logits_to_keep"] = 1
        logits = self._forward(**kwargs).logits
        return logits if all_positions else logits[:, -1]

    def score_candidates(self, cache: Any, candidates: torch.Tensor) -> torch.Tensor:
        """Next-token logits (k, vocab) after each of k candidate tokens, in one forward; ``cache`` is unchanged."""
        k = int(candidates.shape[0])
        prefix_len = cache.get_seq_length()
        mask = tree_mask(prefix_len, k, self.lm.dtype, self.device)
        positions = torch.full((1, k), prefix_len, dtype=torch.long, device=self.device)
        logits = self.step(
            cache, candidates.view(1, k), attention_mask=mask, position_ids=positions, all_positions=True
        )
        cache.crop(-k)  # transformers 5 takes the number of tokens to drop, as a negative count
        return logits[0]


def tree_mask(prefix_len: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (1, 1, k, prefix_len + k) additive mask: candidate i sees the prefix and itself only."""
    mask = torch.full((k, prefix_len + k), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask[:, :prefix_len] = 0
    mask[:, prefix_len:].fill_diagonal_(0)
    return mask.view(1, 1, k, prefix_len + k)


class LocalBackend:
    """The in-process model as a :class:`~shared_core.backends.base.Backend`: every capability.

    Strategies use :class:`ModelRunner` directly (KV caches, tree masks, batched rows); this view offers
    the operations a remote server offers too (``propose``, ``top_next``), with forward passes counted
    in ``stats``, plus ``next_logits`` with a KV cache, which only an in-process model has.
    """

    capabilities: frozenset[str] = LOCAL_CAPABILITIES

    def __init__(self, lm: LocalModel, stats: GenerationStats | None = None) -> None:
        self.lm = lm
        self.stats = stats if stats is not None else GenerationStats()
        self.runner = ModelRunner(lm, self.stats)
        self.name = lm.name
        self.eos_token_ids = lm.eos_token_ids

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.lm.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return self.lm.decode(ids)

    def render(self, prompt: Any, *, chat: bool | None = None, tools: Any = None) -> list[int]:
        return self.lm.render(prompt, chat=chat, tools=tools)

    def next_logits(self, ids: Sequence[int], cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Next-token logits (vocab,) after ``ids`` (fed after ``cache`` when given), and the extended cache."""
        return self.runner.prefill(ids, cache=cache)

    def top_next(self, prefix_ids: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        logits, _ = self.runner.prefill(prefix_ids)
        top = torch.topk(torch.log_softmax(logits.float(), dim=-1), min(k, logits.shape[-1]))
        return top.indices.tolist(), top.values.tolist()

    def propose(self, prefix_ids: Sequence[int], n: int, max_tokens: int, stop: Sequence[str] = (),
                temperature: float = 1.0, seed: int | None = None) -> list[Completion]:
        """``n`` continuations decoded as one batch from one prefill; greedy at ``temperature=0``."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else int(seed))
        logits, cache = self.runner.prefill(prefix_ids)
        if n > 1:
            cache.batch_repeat_interleave(n)
        logits = logits.unsqueeze(0).expand(n, -1)
        rows = [Completion(token_ids=[], text="", finish_reason=None, logprobs=[]) for _ in range(n)]
        for step in range(max_tokens):
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            if temperature == 0:
                tokens = logprobs.argmax(dim=-1)
            else:
                tokens = torch.multinomial(divide_by_temperature(logprobs, temperature).softmax(dim=-1), 1,
                                            generator=generator)[:, 0]
            for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
                if row.finish_reason is not None:
                    continue
                row.token_ids.append(token)
                assert row.logprobs is not None
                row.logprobs.append(float(logprobs[i, token]))
                row.text = self.lm.decode(row.token_ids)
                cut = min((row.text.find(s) for s in stop if s in row.text), default=-1)
                if token in self.eos_token_ids or cut >= 0:
                    row.finish_reason = "stop"
                    row.text = row.text if cut < 0 else row.text[:cut]
            if step == max_tokens - 1 or all(row.finish_reason is not None for row in rows):
                break
            logits = self.runner.step(cache, tokens.view(-1, 1).to(self.device))
        for row in rows:
            row.finish_reason = row.finish_reason or "length"
        return rows

    @property
    def device(self) -> torch.device:
        return self.lm.device
