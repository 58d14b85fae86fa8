"""Streamed text: incremental detokenization that keeps every space, and stop strings
(emit nothing past a stop string, hold back a tail that might be the start of one); and
input text made safe to tokenize."""

from __future__ import annotations

from typing import Sequence


def readable(text: str) -> str:
    """Typed or piped text with the bytes that were not UTF-8 as U+FFFD. Python hands such
    bytes over as lone surrogates (surrogateescape: argv, and stdin as the CLI reads it),
    which a tokenizer refuses to encode."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no byte stands for (e.g. from JSON)
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


class StopText:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def feed(self, segment: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was reached)."""
        text = self.held + segment
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held, self.hit = "", True
            return text[: min(hits)], True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:size]):
                    hold = size
                    break
        self.held = text[len(text) - hold :]
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The held-back tail, once no more text will come (nothing after a stop string)."""
        if self.hit:
            return ""
        held, self.held = self.held, ""
        return held


class TextStream:
    """Text of generated tokens, one token at a time.

    Decodes `anchor + generated` and drops the anchor's own text: decoding the generated ids
    alone would lose a leading space (SentencePiece and mlx-lm's BPE streamer both trim it).
    A trailing incomplete UTF-8 sequence is held back until the token that completes it.
    """

    def __init__(self, tokenizer, anchor: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(anchor)
        self.base = len(self._decode(self.ids))
        self.sent = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _new_text(self, final: bool) -> str:
        text = self._decode(self.ids)[self.base :]
        if not final and text.endswith("\ufffd"):
            return ""
        new, self.sent = text[self.sent :], len(text)
        return new

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._new_text(final=False)

    def finalize(self) -> str:
        return self._new_text(final=True)


class CodeFences:
    """Whether a reply's text so far is inside a fenced code block (an odd number of ```
    fences): where a reply turns from prose to code, a draft's agreement with the target
    changes with it (a draft that missed a reply's opening words often gets its code right)."""

    FENCE = "```"

    def __init__(self):
        self.text = ""

    def feed(self, segment: str) -> None:
        self.text += segment

    @property
    def regime(self) -> str:
        """"code" inside a fenced block, else "prose"."""
        return "code" if self.text.count(self.FENCE) % 2 else "prose"
