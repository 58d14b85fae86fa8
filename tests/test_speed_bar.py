"""benchmarks/speed_bar.py: issue #6's bars read off a recorded bench result."""

from __future__ import annotations

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bar():
    return load_benchmark("speed_bar")


def arms(adaptive: float, lowest: float, vs_best: float, same_k: float) -> dict:
    return {
        "plain": {"speedup": 1.0, "min_speedup": 1.0, "vs_mlx_lm_best": 0.8, "vs_mlx_lm_same_k": None},
        "mlx-spec adaptive": {"speedup": adaptive, "min_speedup": lowest, "vs_mlx_lm_best": vs_best,
                              "vs_mlx_lm_same_k": None},
        "mlx-spec k=3": {"speedup": 1.3, "min_speedup": 1.2, "vs_mlx_lm_best": 0.9, "vs_mlx_lm_same_k": same_k},
    }


def result(greedy: dict | None, sampled: dict | None) -> dict:
    summary = {}
    if greedy is not None:
        summary["0.0"] = greedy
    if sampled is not None:
        summary["0.7"] = sampled
    return {"summary": summary}


GREEDY = {
    "code": arms(2.1, 1.9, 1.3, 1.1),
    "math": arms(1.6, 1.4, 1.2, 1.1),
    "open": arms(1.5, 0.949, 1.4, 1.1),
    "edit": arms(2.5, 2.0, 1.1, 1.1),
}
SAMPLED = {
    "code": arms(1.8, 1.5, 1.3, 1.2),
    "math": arms(1.5, 1.4, 1.2, 1.4),
    "open": arms(1.0, 0.96, 1.3, 1.3),
    "edit": arms(1.9, 1.7, 1.2, 1.4),
}


def test_each_bar_reads_its_own_figure(bar):
    values = bar.bar_values(result(GREEDY, SAMPLED))
    assert [values[c] for c in ("code", "math", "open", "edit")] == [2.1, 1.6, 1.5, 2.5]
    assert values["lowest greedy"] == 0.949  # the lowest single prompt over the categories
    assert values["lowest 0.7"] == 0.96
    assert values["vs mlx-lm best k"] == 1.1  # greedy only, lowest category
    assert values["same k at 0.7"] == pytest.approx((1.2 + 1.4 + 1.3 + 1.4) / 4)  # the k=3 arm


def test_a_row_marks_the_bars_met_and_counts_them(bar):
    row = bar.bar_row("host", result(GREEDY, SAMPLED))
    assert row[0] == "host"
    # met: code 2.1, open 1.5, edit 2.5 (at the bar), lowest at 0.7, same k 1.325
    assert row[1:5] == ["2.10× ✓", "1.60×", "1.50× ✓", "2.50× ✓"]
    assert row[5] == "0.949×"  # a miss is not rounded onto the bar
    assert row[6:] == ["0.96× ✓", "1.10×", "1.32× ✓", "5/8"]


def test_a_greedy_only_result_leaves_the_sampled_bars_unjudged(bar):
    row = bar.bar_row("greedy half", result(GREEDY, None))
    assert row[6] == "—" and row[8] == "—"
    assert row[-1] == "3/6"
