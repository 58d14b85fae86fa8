"""Issue #6's speed bar read off recorded bench results: one row per result, one column per bar.

    python3 benchmarks/speed_bar.py benchmarks/results/qwen2.5-coder-1.5b-cpu-host-e.json ...
        [--labels "host E,..."] [--out bar.md]

The bars (Qwen2.5-Coder 1.5B + 0.5B, 128 new tokens, medians over a category's prompts): greedy
mlx-spec adaptive at least 2.0x plain decoding on code, 1.7x on math, 1.4x on open-ended text and
2.5x on edit/repeat; no single prompt of the adaptive arm below 0.95x, greedy or at 0.7; greedy
adaptive at least 1.15x mlx-lm's speculative decoding at its best k in every category; at 0.7,
mlx-spec at fixed k (the bench's --k, 3 by default) at least 1.3x mlx-lm at the same k averaged
over categories. A cell reads "value ✓" where the bar is met; "—" where the result has no such
runs (a greedy-only half, say).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mlx_spec.bench_report import markdown_table

GREEDY = {"code": 2.0, "math": 1.7, "open": 1.4, "edit": 2.5}
ADAPTIVE, FIXED = "mlx-spec adaptive", "mlx-spec k="  # the fixed-k arm, whatever its k
# (key in bar_values, column header, the bar): one row per column of the table
BARS = [(c, f"greedy {c}", bar) for c, bar in GREEDY.items()] + [
    ("lowest greedy", "lowest prompt, greedy", 0.95),
    ("lowest 0.7", "lowest prompt, 0.7", 0.95),
    ("vs mlx-lm best k", "vs mlx-lm best k, lowest category", 1.15),
    ("same k at 0.7", "fixed k vs mlx-lm same k at 0.7, mean", 1.3),
]
HEADER = ["result"] + [f"{title} (≥{bar}×)" for _, title, bar in BARS] + ["met"]


def _temp(summary: dict, temperature: float) -> dict:
    """The summary's categories at a temperature (keys are stringified floats), or {}."""
    return next((cats for key, cats in summary.items() if float(key) == temperature), {})


def _met(value: float, bar: float) -> bool:
    return value >= bar - 1e-9


def _cell(value: float | None, bar: float) -> str:
    if value is None:
        return "—"
    text = f"{value:.2f}"
    if not _met(value, bar) and text == f"{bar:.2f}":  # a miss that two decimals would round onto the bar
        text = f"{value:.3f}"
    return f"{text}×" + (" ✓" if _met(value, bar) else "")


def bar_values(result: dict) -> dict[str, float | None]:
    """The figure each bar is judged by (None where the result has no runs for it)."""
    greedy, sampled = _temp(result["summary"], 0.0), _temp(result["summary"], 0.7)
    values: dict[str, float | None] = {}
    for category in GREEDY:
        values[category] = greedy.get(category, {}).get(ADAPTIVE, {}).get("speedup")
    for name, cats in (("lowest greedy", greedy), ("lowest 0.7", sampled)):
        lows = [arms[ADAPTIVE]["min_speedup"] for arms in cats.values() if ADAPTIVE in arms]
        values[name] = min(lows) if lows else None
    best = [arms[ADAPTIVE].get("vs_mlx_lm_best") for arms in greedy.values() if ADAPTIVE in arms]
    best = [v for v in best if v is not None]
    values["vs mlx-lm best k"] = min(best) if best else None
    same = [v.get("vs_mlx_lm_same_k") for arms in sampled.values() for name, v in arms.items()
            if name.startswith(FIXED)]
    same = [v for v in same if v is not None]
    values["same k at 0.7"] = statistics.fmean(same) if same else None
    return values


def bar_row(label: str, result: dict) -> list[str]:
    values = bar_values(result)
    judged = [(values[key], bar) for key, _, bar in BARS]
    met = sum(_met(value, bar) for value, bar in judged if value is not None)
    counted = sum(value is not None for value, _ in judged)
    return [label] + [_cell(value, bar) for value, bar in judged] + [f"{met}/{counted}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--labels", default="", help="comma-separated, one per result (default: file names)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [p.stem for p in args.results]
    if len(labels) != len(args.results):
        parser.error(f"{len(labels)} labels for {len(args.results)} results")
    rows = [bar_row(label, json.loads(path.read_text())) for label, path in zip(labels, args.results)]
    table = markdown_table(HEADER, rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
