"""The round-by-round trace: one record per round that adds up to the generation, each
round's price in plain steps at the calibrated costs, and `generate --trace`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mlx_spec.cli import app
from mlx_spec.pair import load_pair
from mlx_spec.policy import Costs
from mlx_spec.trace import source_totals, totals_lines, trace_records

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def self_drafting(stories_path):
    return load_pair(str(stories_path), draft=str(stories_path), ngram=True, k=3)


def test_a_traced_generation_has_one_record_per_round_that_adds_up(self_drafting):
    pair = self_drafting
    pair.reset()
    tokens = []
    for step in pair.stream(PROMPT, chat=False, max_tokens=30, trace=True):
        tokens += step.tokens
    stats = pair.last_stats
    trace = stats.trace
    assert len(trace) == stats.rounds and sum(r["emitted"] for r in trace) == len(tokens) == 30
    assert [t for r in trace for t in r["tokens"]] == tokens
    assert sum(r["k"] for r in trace) == stats.drafted and sum(r["accepted"] for r in trace) == stats.accepted
    for r in trace:
        assert 0 <= r["accepted"] <= r["k"] and r["verified"] >= r["k"] + 1
        assert r["propose_s"] >= 0 and r["verify_s"] > 0
        if r["source"] == "draft":  # a fixed k drafts one token per forward
            assert len(r["draft_forwards"]) == r["k"]


def test_each_record_keeps_what_was_proposed_and_where_the_target_parted_from_it(stories_path):
    pair = load_pair(str(stories_path), draft="ngram", k=3)  # its guesses land, in part or whole
    pair.generate("Lily had a red ball. Lily had a red ball. Lily had a", chat=False, max_tokens=60, trace=True)
    records = trace_records(pair.last_stats, pair.tokenizer, None)
    assert any(0 < r["k"] and r["accepted"] < r["k"] for r in records)
    assert any(0 < r["k"] == r["accepted"] for r in records)
    for i, r in enumerate(records):
        proposed, accepted, tokens = r["proposed"], r["accepted"], r["tokens"]
        assert len(proposed) == r["k"] and tokens[:accepted] == proposed[:accepted]
        if accepted < r["k"] and len(tokens) > accepted:  # the target's own token where it disagreed
            assert tokens[accepted] != proposed[accepted]
        assert r["rejected"] == pair.tokenizer.decode(proposed[accepted:])
        assert (r["rejected"] == "") == (accepted == r["k"])
        if i < len(records) - 1:  # the last round may be cut by max_tokens
            assert len(tokens) == accepted + 1 + r["sibling_hit"]


def test_without_trace_no_records_are_kept(self_drafting):
    self_drafting.reset()
    self_drafting.generate(PROMPT, chat=False, max_tokens=8)
    assert self_drafting.last_stats.trace is None


def test_a_rounds_price_is_its_verification_and_draft_forwards_in_plain_steps():
    costs = Costs(draft_step=0.25, verify=[2.0, 3.0, 3.0], verify_tokens=[1, 2, 4], draft_batch=0.5,
                  ladder={1: 2.0, 2: 3.0, 4: 3.0})
    assert costs.round_steps(1) == 1.0  # a plain round
    assert costs.round_steps(4, [1, 1]) == pytest.approx((3.0 + 0.25 + 0.25) / 2.0)


def test_records_carry_text_and_price_and_sum_per_source(self_drafting):
    pair = self_drafting
    pair.reset()
    pair.generate(PROMPT, chat=False, max_tokens=20, trace=True)
    costs = pair.engine.policy.costs
    records = trace_records(pair.last_stats, pair.tokenizer, costs)
    assert [r["round"] for r in records] == list(range(len(records)))
    # the rounds' texts make up the reply, spaces between rounds included
    assert "".join(r["text"] for r in records) == pair.tokenizer.decode([t for r in records for t in r["tokens"]])
    assert any(r["text"].startswith(" ") for r in records)
    for r in records:
        assert r["steps"] == pytest.approx(costs.round_steps(r["verified"], r["draft_forwards"]))
    totals = source_totals(records)
    assert sum(t["rounds"] for t in totals.values()) == len(records)
    for source, t in totals.items():
        mine = [r for r in records if r["source"] == source]
        assert t["tokens"] == sum(r["emitted"] for r in mine)
        assert t["steps"] == pytest.approx(sum(r["steps"] for r in mine))
        assert t["tokens_per_step"] == pytest.approx(t["tokens"] / t["steps"])
    assert any("tokens per step" in line for line in totals_lines(totals))
    # without costs (plain decoding) there is no price
    plain = source_totals(trace_records(pair.last_stats, pair.tokenizer, None))
    assert all(t["steps"] is None and t["tokens_per_step"] is None for t in plain.values())
    assert "steps" not in totals_lines(plain)[0]


def test_generate_writes_the_trace_and_reports_each_source(stories_path, tmp_path):
    path = tmp_path / "rounds.jsonl"
    result = CliRunner().invoke(app, ["generate", PROMPT, "--raw", "--json", "--target", str(stories_path),
                                      "--draft", str(stories_path), "--k", "3", "--max-tokens", "24",
                                      "--trace", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == data["stats"]["rounds"]
    assert [t for r in records for t in r["tokens"]] == data["tokens"]
    assert all(r["steps"] > 0 for r in records)
    assert f"trace: {len(records)} rounds written to" in result.stderr
    assert "draft: " in result.stderr and "tokens per step" in result.stderr


def test_generate_refuses_an_unwritable_trace_before_generating(stories_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["generate", PROMPT, "--raw", "--target", str(stories_path),
                                      "--trace", str(blocker / "rounds.jsonl")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot write the trace to") and "\nhint: " in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
