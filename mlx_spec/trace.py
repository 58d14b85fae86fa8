"""A generation round by round: what was proposed and by which source, what the target kept,
and what the round cost in plain decoding steps. The tool for seeing why a prompt gains or
loses: a round that emitted fewer tokens than its price was slower than plain decoding.

Records come from `Stats.trace` (`Pair.stream(..., trace=True)`, `mlx-spec generate --trace`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_spec.policy import Costs


def trace_records(stats, tokenizer, costs: Costs | None = None) -> list[dict]:
    """The rounds of `stats.trace`, numbered, each with the text it emitted and, given the
    calibrated costs, its price in plain decoding steps ("steps"; None without costs). A
    round's text is what it added to the decoded reply (a token decoded alone can lose its
    leading space), or its tokens decoded alone where a character spans two rounds; and
    "rejected", the proposed tokens the target did not accept, decoded (what the proposer
    guessed where the target went another way; empty where it accepted them all)."""
    records, tokens, before = [], [], ""
    for i, record in enumerate(stats.trace or ()):
        tokens += record["tokens"]
        after = tokenizer.decode(tokens)
        text = after[len(before):] if after.startswith(before) else tokenizer.decode(record["tokens"])
        before = after
        steps = costs.round_steps(record["verified"], record["draft_forwards"]) if costs else None
        rejected = tokenizer.decode(record["proposed"][record["accepted"]:])
        records.append({"round": i, **record, "text": text, "rejected": rejected, "steps": steps})
    return records


def source_totals(records: list[dict]) -> dict[str, dict]:
    """Per source: rounds, tokens emitted, price in plain steps and tokens per step (above 1
    the source paid for itself; below 1 plain decoding would have been faster)."""
    totals: dict[str, dict] = {}
    for record in records:
        total = totals.setdefault(record["source"], {"rounds": 0, "tokens": 0, "steps": 0.0})
        total["rounds"] += 1
        total["tokens"] += record["emitted"]
        total["steps"] = None if record["steps"] is None or total["steps"] is None else total["steps"] + record["steps"]
    for total in totals.values():
        total["tokens_per_step"] = total["tokens"] / total["steps"] if total["steps"] else None
    return totals


def write_trace(records: list[dict], path: Path) -> Path:
    """One JSON object per line, one line per round (the folder must exist: a mistyped path
    is an error, not a new folder)."""
    path = Path(path)
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def totals_lines(totals: dict[str, dict]) -> list[str]:
    """One line per source, for a terminal."""
    lines = []
    for source, t in sorted(totals.items(), key=lambda item: -item[1]["tokens"]):
        line = f"{source}: {t['rounds']} rounds, {t['tokens']} tokens"
        if t["steps"] is not None:
            line += f", {t['steps']:.1f} plain steps ({t['tokens_per_step']:.2f} tokens per step)"
        lines.append(line)
    return lines
