"""Token ids to the text a user sees: incremental detokenising, and stop strings across sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Detokenizer:
    """Incremental decoding that re-decodes only a short window per token and holds back
    incomplete UTF-8 sequences, so deltas concatenate to the full decoded text."""

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)  # a little prompt context gives the first token its spacing
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (e.g. a cut-off multi-byte character) at the end of a turn."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if after.startswith(before) else ""


class TextStream:
    """The answer as the user sees it: applies stop strings across deltas and sources.

    Text that could still become a stop string is held back until it cannot.
    """

    def __init__(self, stop: Sequence[str] | None = None):
        self.stops = [s for s in (stop or []) if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sources: list[tuple[int, str]] = []  # (start offset, source)
        self.emitted = 0
        self.stopped = False

    def push(self, delta: str, source: str) -> list[tuple[str, str]]:
        """Add text from `source`; returns the (text, source) pieces now safe to show."""
        if self.stopped or not delta:
            return []
        if not self.sources or self.sources[-1][1] != source:
            self.sources.append((len(self.text), source))
        start = len(self.text)
        self.text += delta
        ready = len(self.text)
        if self.stops:
            first = min(
                (i for i in (self.text.find(s, max(0, start - self.longest + 1)) for s in self.stops) if i >= 0),
                default=-1,
            )
            if first >= 0:
                self.text, self.stopped, ready = self.text[:first], True, first
            else:
                ready -= self._held_back()
        return self._emit(ready)

    def finish(self) -> list[tuple[str, str]]:
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _emit(self, ready: int) -> list[tuple[str, str]]:
        pieces = []
        while self.emitted < ready:
            idx = max(i for i, (start, _) in enumerate(self.sources) if start <= self.emitted)
            end = self.sources[idx + 1][0] if idx + 1 < len(self.sources) else len(self.text)
            end = min(end, ready)
            pieces.append((self.text[self.emitted : end], self.sources[idx][1]))
            self.emitted = end
        return pieces
