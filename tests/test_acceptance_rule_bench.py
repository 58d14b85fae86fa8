"""benchmarks/acceptance_rule.py: what rejection sampling is worth over sample-and-compare."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def rule():
    return load_benchmark("acceptance_rule")


def test_chain_tokens_follow_the_per_position_rates(rule):
    assert rule.chain_tokens([1.0] * 6, 3) == 4.0
    assert rule.chain_tokens([0.0] * 6, 3) == 1.0
    assert rule.chain_tokens([0.5] * 10, 2) == pytest.approx(1 + 0.5 + 0.25)
    # a chain started at t reads the rates of positions t, t+1, ...
    assert rule.chain_tokens([1.0, 0.0, 1.0], 2) == pytest.approx(((1 + 1 + 0) + (1 + 0)) / 2)


def test_coupled_agreement_is_the_chance_shared_noise_picks_one_token(rule):
    """Against a Monte Carlo of argmax(log p + G) = argmax(log q + G), and its bounds:
    (1 - TV) / (1 + TV) <= agreement <= 1 - TV."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    agreement, missing = rule.coupled_agreement(mx.array(p[None], dtype=mx.float32), mx.array(q[None], dtype=mx.float32))
    g = rng.gumbel(size=(200_000, 6))
    empirical = np.mean(np.argmax(np.log(p) + g, 1) == np.argmax(np.log(q) + g, 1))
    assert agreement.item() == pytest.approx(empirical, abs=0.005) and missing.item() == 0.0
    one_minus_tv = np.minimum(p, q).sum()
    assert (one_minus_tv / (2 - one_minus_tv)) <= agreement.item() <= one_minus_tv + 1e-6


def test_a_model_drafting_for_itself_is_always_accepted_by_rejection_sampling_only(
        rule, stories_path, tmp_path, monkeypatch):
    out = tmp_path / "rule.json"
    monkeypatch.setattr(sys, "argv", ["acceptance_rule.py", "--pair", str(stories_path), "--draft",
                                      str(stories_path), "--per-category", "1", "--max-tokens", "8",
                                      "--ks", "3", "--out", str(out)])
    rule.main()
    rows = json.loads(out.read_text())["prompts"]
    assert [r["category"] for r in rows] == ["code", "math", "open", "edit"]
    for r in rows:
        # q = p: sum min(p, p) = 1, while two independent samples agree with sum p^2 < 1
        assert r["rejection"] == pytest.approx(1.0, abs=1e-4)
        assert r["tau_rejection_k3"] == pytest.approx(4.0, abs=1e-3)
        assert r["sample_compare"] < 0.999 and r["tau_sample_compare_k3"] < r["tau_rejection_k3"]
        # and under shared Gumbel noise both argmaxes are the same token: they always agree
        assert r["invariant"] + r["invariant_missing"] == pytest.approx(1.0, abs=1e-4)
        assert r["invariant"] > 0.99
    table = out.with_suffix(".md").read_text()
    assert "| code | 1 | 1.000 |" in table and "ratio k=3" in table
