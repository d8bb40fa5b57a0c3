"""Deciding when generation ends (EOS, stop strings, token budget) and what text to show so far.

Stop strings can span several tokens, so they are matched on the decoded text after every token. For
streaming, text that could still turn out to be the start of a stop string is held back, so the
concatenated deltas always equal the final text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared_core.result import FinishReason


@dataclass
class StopState:
    """Tracks one sequence's generated ids and decides whether it has finished."""

    decode: Callable[[Sequence[int]], str]
    eos_token_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    max_new_tokens: int
    stop_finder: Callable[[str], int] | None = None  # a structural stop (e.g. URIAL's closed answer)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    _text: str = ""
    _stop_at: int | None = None
    _emitted: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> bool:
        """Adds one generated token; returns True once the sequence has finished."""
        if self.finished:
            return True
        self.token_ids.append(int(token_id))
        if token_id in self.eos_token_ids:
            self.finish_reason = "eos"
            return True
        self._text = self.decode(self.token_ids)
        if self.stop_strings or self.stop_finder:
            hits = [i for i in (self._text.find(s) for s in self.stop_strings) if i >= 0]
            if self.stop_finder is not None and (found := self.stop_finder(self._text)) >= 0:
                hits.append(found)
            if hits:
                self._stop_at = min(hits)
                self.finish_reason = "stop"
                return True
        if len(self.token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            return True
        return False

    def push_many(self, token_ids: Sequence[int]) -> bool:
        for token_id in token_ids:
            if self.push(token_id):
                return True
        return False

    def finish(self, reason: FinishReason) -> None:
        """Marks the sequence finished for a reason decided outside (a strategy ran out of budget)."""
        if not self.finished:
            self.finish_reason = reason

    @property
    def text(self) -> str:
        """The text so far, without a matched stop string or anything after it."""
        return self._text if self._stop_at is None else self._text[: self._stop_at]

    def _safe_length(self) -> int:
        """How much of the text can be shown now without risking a later retraction."""
        if self.finished:
            return len(self.text)
        text = self._text
        safe = len(text)
        while safe > 0 and text[safe - 1] == "\ufffd":  # an incomplete multi-byte character
            safe -= 1
        hold = 0
        for stop in self.stop_strings:  # the longest tail that starts some stop string
            for k in range(min(len(stop) - 1, safe), hold, -1):
                if text[safe - k : safe] == stop[:k]:
                    hold = k
                    break
        return safe - hold

    def pop_delta(self) -> str:
        """The text produced since the last call that is safe to show."""
        safe = self._safe_length()
        if safe <= self._emitted:
            return ""
        delta = self.text[self._emitted : safe] if self.finished else self._text[self._emitted : safe]
        self._emitted = safe
        return delta
