"""Encoding texts with a shared tokenizer without reconfiguring it.

A Hugging Face fast tokenizer keeps its truncation and padding settings inside the Rust object, and a
call such as ``tokenizer(texts, truncation=True, max_length=n)`` rewrites them first. Two threads
doing that on one shared tokenizer collide ("Already borrowed"). deal's tokenizers are shared by
every thread of a process, so they are always called with their default settings (no truncation, no
padding) and truncation and padding happen here, in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["encode_truncated", "pad_right"]

def _special_layout(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens the tokenizer adds before and after a text (``[CLS] ... [SEP]`` is (1, 1))."""
    marked = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(marked) - len(plain) + 1):
        if marked[start : start + len(plain)] == plain:
            return start, len(marked) - start - len(plain)
    return 0, 0


def encode_truncated(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    *,
    keep: Literal["start", "end"] = "start",
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Token ids of each text, at most ``max_length`` long, special tokens kept.

    ``keep="end"`` drops tokens from the start of a long text (what a decoder classifier, which pools
    the last token, should read); ``"start"`` drops them from the end.
    """
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    head, tail = _special_layout(tokenizer) if add_special_tokens else (0, 0)
    budget = max(max_length - head - tail, 0)
    out = []
    for ids in encoded:
        ids = list(ids)
        if len(ids) > max_length:
            body = ids[head : len(ids) - tail]
            body = body[len(body) - budget :] if keep == "end" else body[:budget]
            ids = ids[:head] + body + ids[len(ids) - tail :]
        out.append(ids)
    return out


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` long tensors for right-padded sequences."""
    import torch

    width = max((len(seq) for seq in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask
