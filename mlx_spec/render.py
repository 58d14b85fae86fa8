"""How statistics and streamed text look: the one-line summary, the full statistics block, and
text painted so that tokens drafted-and-accepted stand out from the target's own tokens.

Shared by chat, generate and bench; nothing here decodes or touches a model.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable

from rich.table import Table

from mlx_spec.stats import Stats

DRAFTED_ANSI = "\x1b[36m"  # cyan: accepted from the proposal
RESET_ANSI = "\x1b[0m"
DRAFTED_LEGEND = "cyan"
PIECE_CONTEXT = 4  # previous tokens decoded with each round so leading spaces survive


def use_color(stream) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def k_label(pair) -> str | None:
    """How k is chosen for a pair: 'fixed 4', 'adaptive ≤8', or None without drafting."""
    if pair.draft_name is None:
        return None
    return f"fixed {pair.k}" if pair.k is not None else f"adaptive ≤{pair.k_max}"


def summary_line(stats: Stats, k_label: str | None = None) -> str:
    """tokens/s, tau, acceptance rate and k after one reply, e.g.
    '52 tokens at 180.3 tok/s · τ 3.71 · accepted 90% · k 3.2 (adaptive) · prompt 12 tok ·
    first token 0.21 s'. A fixed k's free n-gram tail is shown apart ('k 4.0 + tail 1.6
    (fixed 4)'): in the mean it would read as more than the k asked for."""
    parts = [f"{stats.generated_tokens} tokens at {stats.generation_tps:.1f} tok/s"]
    if stats.drafted:
        parts.append(f"τ {stats.tau:.2f}")
        parts.append(f"accepted {stats.acceptance_rate:.0%}")
        k = f"k {stats.mean_k:.1f}"
        if stats.tail_proposed:
            k = (f"k {(stats.drafted - stats.tail_proposed) / stats.rounds:.1f}"
                 f" + tail {stats.tail_proposed / stats.rounds:.1f}")
        parts.append(k + (f" ({k_label})" if k_label else ""))
    else:
        parts.append("no drafting")
    parts.append(f"prompt {stats.prompt_tokens} tok")
    parts.append(f"first token {stats.first_token_time:.2f} s")
    return " · ".join(parts)


def _size(gb: float, unit: str = "B") -> str:
    """GB, or MB for small models, so tiny test models do not read '0.00 GB'."""
    return f"{gb:.2f} G{unit}" if gb >= 1 else f"{gb * 1e3:.1f} M{unit}"


def _percent_list(values: Iterable[float]) -> str:
    return " ".join(f"{v:.0%}" for v in values) or "-"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}×{n}" for k, n in sorted(counter.items(), key=lambda kv: str(kv[0]))) or "-"


def _by_source(stats: Stats) -> str:
    """'draft: 12 rounds, τ 5.10, 78% accepted; none: 4 rounds' (acceptance only where drafted)."""
    parts = []
    for source, row in stats.by_source().items():
        part = f"{source}: {row['rounds']} rounds, τ {row['tau']:.2f}"
        if row["drafted"]:
            part += f", {row['acceptance_rate']:.0%} of {row['drafted']} accepted"
        parts.append(part)
    return "; ".join(parts) or "-"


def stats_rows(stats: Stats) -> list[tuple[str, str]]:
    """(label, value) pairs of the full statistics block, in reading order."""
    split = stats.time_split()
    rows = [
        ("prompt", f"{stats.prompt_tokens} tokens prefilled, {stats.prompt_tps:.1f} tok/s"),
        ("first token", f"{stats.first_token_time:.2f} s after the call"),
        ("generation", f"{stats.generated_tokens} tokens, {stats.generation_tps:.1f} tok/s "
                       f"in {stats.generation_time:.2f} s"),
        ("rounds", f"{stats.rounds} (target forwards {stats.target_forwards}, "
                   f"host syncs {stats.host_syncs})"),
        ("τ (tokens/round)", f"{stats.tau:.2f}"),
        ("drafted / accepted", f"{stats.drafted} / {stats.accepted}"
                               + (f" (+{stats.sibling_hits} from siblings)" if stats.sibling_hits else "")),
        ("acceptance rate", f"{stats.acceptance_rate:.1%}"),
        ("by position", _percent_list(stats.acceptance_by_position)),
        ("k chosen", _counts(stats.k_counts)),
        ("by source", _by_source(stats)),
        ("time split", f"draft {split['draft']:.0%} · verify {split['verify']:.0%} · "
                       f"other {split['other']:.0%}"),
        ("draft's price", "—" if stats.draft_price is None else
                          f"{stats.draft_price:.2f}× what the calibration said (as the rounds took it)"),
        ("peak memory", _size(stats.peak_memory_gb)),
        ("bandwidth", f"{_size(stats.bandwidth_gbs, 'B/s')} (target weights × forwards/s)"),
        ("weights", f"target {_size(stats.target_bytes / 1e9)}"
                    + (f", draft {_size(stats.draft_bytes / 1e9)}" if stats.draft_bytes else "")),
    ]
    return rows


def stats_table(columns: dict[str, Stats], title: str = "statistics") -> Table:
    """The full block, one column per Stats (e.g. 'last reply' and 'conversation')."""
    table = Table(title=title, title_justify="left", show_header=len(columns) > 1)
    table.add_column("", style="bold")
    for name in columns:
        table.add_column(name)
    per_column = [stats_rows(s) for s in columns.values()]
    for i, (label, _) in enumerate(per_column[0]):
        table.add_row(label, *(rows[i][1] for rows in per_column))
    return table


def combine(stats_list: list[Stats]) -> Stats:
    """Totals over several generations (a conversation): counts and times add, peak is max."""
    total = Stats()
    for s in stats_list:
        for name in ("prompt_tokens", "prompt_time", "generated_tokens", "generation_time",
                     "rounds", "target_forwards", "host_syncs", "drafted", "accepted",
                     "sibling_hits", "tail_proposed", "tail_accepted",
                     "draft_time", "verify_time", "other_time"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        for name in ("proposed_by_position", "accepted_by_position"):
            mine, theirs = getattr(total, name), getattr(s, name)
            mine += [0] * (len(theirs) - len(mine))
            for i, v in enumerate(theirs):
                mine[i] += v
        total.k_counts.update(s.k_counts)
        for name in ("rounds_by_source", "drafted_by_source", "accepted_by_source", "tokens_by_source"):
            getattr(total, name).update(getattr(s, name))
        total.peak_memory_gb = max(total.peak_memory_gb, s.peak_memory_gb)
        total.first_token_time += s.first_token_time / len(stats_list)  # the mean reply's
        total.target_bytes, total.draft_bytes = s.target_bytes, s.draft_bytes
        total.draft_price = s.draft_price  # the latest reply's: the policy's, not a sum
    return total


class Painter:
    """Turns a Step's text into what is written: plain, or with drafted tokens coloured.

    A round's text arrives as one segment; to colour per token we decode the round's tokens
    one at a time (with a few earlier tokens in front, so SentencePiece keeps its leading
    spaces). When those pieces do not add up to the Step's text (a stop string cut it, an
    incomplete UTF-8 sequence, a tokenizer without `decode`) the round is coloured as a whole
    by its majority instead.
    """

    def __init__(self, tokenizer, color: bool):
        self.tokenizer, self.color = tokenizer, color
        self.history: list[int] = []

    def start(self, context: list[int] | None = None) -> None:
        """A new reply begins after `context` (the prompt's token ids, if known)."""
        self.history = list(context or [])[-PIECE_CONTEXT:]

    def _pieces(self, tokens: list[int]) -> list[str] | None:
        decode = getattr(self.tokenizer, "decode", None)
        if decode is None:
            return None
        try:
            window = self.history[-PIECE_CONTEXT:]
            base = decode(window, skip_special_tokens=True)
            pieces, prev = [], base
            for j in range(len(tokens)):
                text = decode(window + tokens[: j + 1], skip_special_tokens=True)
                if not text.startswith(prev) or text.endswith("\ufffd"):
                    return None
                pieces.append(text[len(prev):])
                prev = text
            return pieces
        except Exception:  # any tokenizer quirk only costs the finer colouring
            return None

    def paint(self, text: str, tokens: list[int], drafted: list[bool]) -> str:
        try:
            if not self.color or not text:
                return text
            pieces = self._pieces(tokens)
            if pieces is None or "".join(pieces) != text:
                return self._wrap(text) if sum(drafted) * 2 > len(drafted) else text
            return "".join(self._wrap(p) if d and p else p for p, d in zip(pieces, drafted))
        finally:
            self.history = (self.history + list(tokens))[-PIECE_CONTEXT:]

    @staticmethod
    def _wrap(text: str) -> str:
        # Colour codes must not span a newline, or terminals smear them into the next line.
        return "\n".join(f"{DRAFTED_ANSI}{line}{RESET_ANSI}" if line else line
                         for line in text.split("\n"))
