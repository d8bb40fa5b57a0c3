"""URIAL on local models: render the in-context prompt, reuse the preamble's KV cache, clean the answer.

The preamble (instruction plus K restyled examples) is the same for every call, so its KV cache is
computed once per model and copied into each request; only the query is encoded per call. The prompt
is tokenized as ``encode(prefix) + encode(suffix)`` in both paths so cached and uncached runs see the
same ids. Generation stops at the next ``# Query:`` and the answer's fences are stripped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared_core.backends.local import ModelRunner
from shared_core.decoding.base import PrefixCache
from shared_core.errors import ConfigError
from shared_core.models import LocalModel
from shared_core.result import GenerationStats
from shared_core.urial import VARIANTS, UrialExample, check_fits, parse_urial_answer, preamble_text, urial_prompt

__all__ = [
    "PREFIX_CACHE_SIZE",
    "UrialOptions",
    "clear_prefix_cache",
    "parse_urial_option",
    "render_urial",
    "urial_deltas",
]

PREFIX_CACHE_SIZE = 8


@dataclass(frozen=True)
class UrialOptions:
    """Which URIAL prompt to use: a built-in variant, or your own examples and preamble."""

    variant: str = "safe"
    examples: tuple[UrialExample, ...] | None = None
    preamble: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"variant": self.variant, "examples": self.examples, "preamble": self.preamble}


def parse_urial_option(value: Any) -> UrialOptions | None:
    """``urial=`` accepts False/None (off), True (the "safe" variant), a variant name, a dict or UrialOptions."""
    if value is None or value is False:
        return None
    if value is True:
        options = UrialOptions()
    elif isinstance(value, UrialOptions):
        options = value
    elif isinstance(value, str):
        if value not in VARIANTS:
            raise ConfigError("urial", f"unknown variant {value!r}; valid: True, False, " + ", ".join(map(repr, VARIANTS)))
        options = UrialOptions(variant=value)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"variant", "examples", "preamble"})
        if unknown:
            raise ConfigError(f"urial.{unknown[0]}", "not an option; valid options: variant, examples, preamble")
        examples = value.get("examples")
        options = UrialOptions(
            variant=value.get("variant", "safe"),
            examples=None if examples is None else tuple(examples),
            preamble=value.get("preamble"),
        )
    else:
        raise ConfigError("urial", f"must be a bool, a variant name or a dict of options, got {type(value).__name__}")
    preamble_text(**options.kwargs())  # validates variant, examples and preamble before any model work
    return options


_PREFIXES: OrderedDict[tuple[Any, ...], PrefixCache] = OrderedDict()
_PREFIX_LOCK = threading.Lock()


def _prefix_cache(lm: LocalModel, prefix_text: str, prefix_ids: list[int]) -> tuple[PrefixCache, bool]:
    """The preamble's KV cache for ``lm`` (computed on first use, kept for the most recent preambles)."""
    key = (lm.source, str(lm.device), str(lm.dtype), prefix_text)
    with _PREFIX_LOCK:
        if key in _PREFIXES:
            _PREFIXES.move_to_end(key)
            return _PREFIXES[key], True
    _, cache = ModelRunner(lm, GenerationStats(), "urial-preamble").prefill(prefix_ids)
    entry = PrefixCache(ids=tuple(prefix_ids), cache=cache)
    with _PREFIX_LOCK:
        _PREFIXES[key] = entry
        while len(_PREFIXES) > PREFIX_CACHE_SIZE:
            _PREFIXES.popitem(last=False)
    return entry, False


def render_urial(
    lm: LocalModel, prompt: str | Sequence[Mapping[str, Any]], options: UrialOptions, max_new_tokens: int,
    stats: GenerationStats,
) -> tuple[list[int], PrefixCache]:
    """Prompt ids for a URIAL request and the cached preamble they start with."""
    parts = urial_prompt(prompt, **options.kwargs())
    prefix_ids = lm.encode(parts.prefix, add_special_tokens=True)
    suffix_ids = lm.encode(parts.suffix)
    check_fits(len(prefix_ids), lm.context_window, reserve_tokens=len(suffix_ids) + max_new_tokens)
    started = time.perf_counter()
    prefix, reused = _prefix_cache(lm, parts.prefix, prefix_ids)
    stats.extra["urial_preamble_tokens"] = len(prefix_ids)
    stats.extra["urial_preamble_cached"] = reused
    if not reused:
        stats.extra["urial_preamble_seconds"] = time.perf_counter() - started
        stats.count_forward("policy")
    return prefix_ids + suffix_ids, prefix


def clear_prefix_cache() -> None:
    with _PREFIX_LOCK:
        _PREFIXES.clear()


def urial_deltas(raw_text: Any, raw_deltas: Iterator[str]) -> Iterator[str]:
    """Streams the cleaned answer: complete lines only, so fence and header debris never reach the reader.

    ``raw_text()`` returns the raw text so far. The concatenated output equals
    ``parse_urial_answer(final raw text)``.
    """
    emitted = ""
    for _ in raw_deltas:
        text = raw_text()
        complete = text[: text.rfind("\n") + 1]
        shown = parse_urial_answer(complete)
        if shown.startswith(emitted) and len(shown) > len(emitted):
            yield shown[len(emitted):]
            emitted = shown
    final = parse_urial_answer(raw_text())
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted):]
