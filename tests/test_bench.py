"""The benchmark: arms interleaved, greedy outputs checked identical, result file schema,
summary ratios, and compare."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import pytest
from typer.testing import CliRunner

import mlx_spec
import mlx_spec.bench as bench_module
from mlx_spec.bench import (SCHEMA, Bench, Run, default_arms, first_round_tokens, load_prompts, merge_results, mlx_lm_rounds,
                             prompts_by_id, read_result, run_suite, summarize, write_result)
from mlx_spec.bench_report import compare_markdown, plot_result, prompt_rows, prompts_markdown, summary_markdown
from mlx_spec.cli import app
from mlx_spec.errors import SpecError

PROMPTS = {"code": [{"id": "a", "prompt": "Once upon a time"}], "edit": [{"id": "b", "prompt": "Tom and Lily"}]}


@pytest.fixture(scope="module")
def result(stories_path):
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    bench = Bench(loaded, loaded, default_arms(k_fixed=3, mlx_lm_ks=(3,)), max_tokens=12, chat=False)
    return run_suite(bench, PROMPTS, temperatures=(0.0, 0.7))


def test_result_is_stamped_and_complete(result):
    assert result["schema"] == SCHEMA
    assert result["machine"]["backend"] == "cpu" and result["machine"]["chip"]
    assert result["models"]["target"]["dtype"] == "float32"
    assert result["settings"]["mlx_spec"]["version"] == mlx_spec.__version__
    assert f"mlx-spec: {mlx_spec.__version__}" in summary_markdown(result)
    arms = {a["name"] for a in result["settings"]["arms"]}
    assert arms == {"plain", "mlx-spec adaptive", "mlx-spec k=3", "mlx-lm k=3"}
    # every arm ran every prompt at every temperature, with the same token budget
    assert len(result["runs"]) == 4 * 2 * 2
    assert all(r["tokens"] == 12 for r in result["runs"])


def test_greedy_outputs_are_identical_across_arms(result):
    greedy = [r for r in result["runs"] if r["temperature"] == 0.0]
    assert all(r["identical"] for r in greedy)
    assert result["greedy_mismatches"] == []


def test_summary_reports_ratios_and_tau(result):
    code = result["summary"]["0.0"]["code"]
    assert code["plain"]["speedup"] == 1.0
    assert code["mlx-spec k=3"]["tau"] == 4.0  # the model drafts for itself: all accepted
    assert code["mlx-spec k=3"]["vs_mlx_lm_same_k"] == pytest.approx(
        code["mlx-spec k=3"]["speedup"] / code["mlx-lm k=3"]["speedup"]
    )
    assert code["mlx-lm k=3"]["tau"] == 4.0


def test_spec_runs_carry_their_modeled_speedup_from_counted_forwards(result):
    from mlx_spec.policy import Costs
    from mlx_spec.stats import Stats

    costs = Costs(**result["calibration"])
    for r in result["runs"]:
        stats = r["stats"]
        if r["kind"] != "spec":
            assert "modeled_speedup" not in (stats or {})
            continue
        # a fixed k drafts one token per forward; the adaptive chain may jump (fewer forwards),
        # or not draft at all: the model drafting for itself costs as much as it saves
        forwards = sum(stats["draft_forwards"].values())
        assert forwards == stats["drafted"] > 0 if r["k"] else forwards <= stats["drafted"]
        counted = Stats(generated_tokens=stats["generated_tokens"],
                        k_counts=Counter({int(k): n for k, n in stats["k_counts"].items()}),
                        draft_forwards=Counter({int(t): n for t, n in stats["draft_forwards"].items()}),
                        verify_sizes=Counter({int(t): n for t, n in stats["verify_sizes"].items()}))
        assert sum(stats["verify_sizes"].values()) == stats["rounds"]
        assert stats["modeled_speedup"] == pytest.approx(costs.modeled_speedup(counted))
    v = result["summary"]["0.0"]["code"]["mlx-spec k=3"]
    assert v["modeled_speedup"] > 0 and result["summary"]["0.0"]["code"]["plain"]["modeled_speedup"] is None
    assert "| modeled |" in summary_markdown(result)


def test_mlx_lm_rounds_are_read_from_the_stream_including_a_round_cut_short():
    d, t = True, False
    # two whole rounds of k = 3, all accepted, then the budget of 10 cut the third after 2 drafts
    assert mlx_lm_rounds([d, d, d, t, d, d, d, t, d, d], k=3, max_tokens=10) == (3, 3 + 3 + 2)
    # a rejection at the first draft: the round emits only the target's token
    assert mlx_lm_rounds([t, d, t, t], k=3, max_tokens=128) == (3, 9)
    # an end-of-sequence token drafted and accepted ends the stream inside its round
    assert mlx_lm_rounds([d, t, d], k=2, max_tokens=128) == (2, 4)
    assert mlx_lm_rounds([], k=3, max_tokens=8) == (1, 0)


def test_mlx_lm_arm_counts_its_rounds_and_drafts_exactly(stories_path):
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    bench = Bench(loaded, loaded, [default_arms(mlx_lm_ks=(3,))[-1]], max_tokens=10, chat=False)
    ids = loaded.tokenizer.encode("Once upon a time")
    stats = bench.run(bench.arms[0], ids, 0.0, 0).stats
    # the model drafts for itself: every draft is accepted, the last round drafts only 2
    assert (stats["rounds"], stats["drafted"], stats["accepted"]) == (3, 8, 8)
    assert stats["acceptance_rate"] == 1.0 and stats["tau"] == pytest.approx(10 / 3)


def test_an_mlx_lm_plain_arm_decodes_as_our_baseline_and_is_no_best_k(stories_path):
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    arms = default_arms(mlx_lm_ks=(3,), mlx_lm_plain=True)
    assert arms[-1].name == "mlx-lm plain" and arms[-1].kind == "mlx-lm" and arms[-1].k == 0
    assert "mlx-lm plain" not in [a.name for a in default_arms(mlx_lm_ks=(3,))]
    bench = Bench(loaded, loaded, [arms[0], arms[-1]], max_tokens=10, chat=False)
    ids = loaded.tokenizer.encode("Once upon a time")
    ours, theirs = bench.run(arms[0], ids, 0.0, 0), bench.run(arms[-1], ids, 0.0, 0)
    assert theirs.tokens == ours.tokens
    assert (theirs.stats["rounds"], theirs.stats["accepted"], theirs.stats["tau"]) == (10, 0, 1.0)
    # a plain mlx-lm arm faster than every speculative one is still not "mlx-lm's best k"
    runs = [{"temperature": 0, "category": "c", "prompt": "a", "arm": arm, "tps": s, "speedup": s,
             "stats": None} for arm, s in (("x", 2.0), ("mlx-lm k=3", 1.25), ("mlx-lm plain", 1.6))]
    v = summarize(runs, ["x", "mlx-lm k=3", "mlx-lm plain"])["0"]["c"]
    assert v["x"]["vs_mlx_lm_best"] == pytest.approx(2.0 / 1.25)


def test_mlx_lm_first_round_is_read_from_the_stream():
    assert first_round_tokens([True, True, False, True, False]) == 3  # two accepted drafts, then its own
    assert first_round_tokens([False, True, False]) == 1
    assert first_round_tokens([True, True]) == 2  # the stream stopped inside the first round


def test_speed_after_the_first_round_leaves_out_the_prefill_and_the_first_rounds_tokens():
    run = Run(list(range(10)), 2.0, None, (0.5, 4))
    assert run.first_token == 0.5 and run.decode_tps == pytest.approx(6 / 1.5)
    assert Run([1, 2, 3], 1.0, None, (0.9, 3)).decode_tps is None  # nothing after the first round
    assert Run([1, 2, 3], 1.0).decode_tps is None and Run([1, 2, 3], 1.0).first_token is None


def test_runs_record_their_first_round_and_the_speed_after_it(result):
    for r in result["runs"]:
        assert 0 < r["first_token"] < r["seconds"]
        if r["first_round_tokens"] == r["tokens"]:  # a reply whose first round was all of it
            assert r["decode_tps"] is None
            continue
        assert r["decode_tps"] == pytest.approx((r["tokens"] - r["first_round_tokens"]) / (r["seconds"] - r["first_token"]))
    greedy = {r["arm"]: r for r in result["runs"] if r["temperature"] == 0.0 and r["prompt"] == "a"}
    # plain emits one token a round; the model drafting for itself at k = 3 gets all 3 and one more
    assert greedy["plain"]["first_round_tokens"] == 1 and greedy["plain"]["decode_speedup"] == 1.0
    assert greedy["mlx-spec k=3"]["first_round_tokens"] == 4 and greedy["mlx-lm k=3"]["first_round_tokens"] == 4
    spec = greedy["mlx-spec k=3"]
    assert spec["decode_speedup"] == pytest.approx(spec["decode_tps"] / greedy["plain"]["decode_tps"])
    code = result["summary"]["0.0"]["code"]
    assert code["plain"]["decode_speedup"] == 1.0
    assert code["mlx-spec k=3"]["decode_speedup"] == pytest.approx(spec["decode_speedup"])
    assert code["mlx-lm k=3"]["first_token"] == greedy["mlx-lm k=3"]["first_token"]
    assert "| after 1st round | 1st token s |" in summary_markdown(result)


def test_summary_takes_median_of_per_prompt_ratios():
    runs = [
        {"temperature": 0, "category": "c", "prompt": p, "arm": "x", "tps": t, "speedup": s, "stats": None}
        for p, t, s in [("a", 1, 1.0), ("a", 3, 3.0), ("b", 5, 5.0), ("c", 7, 0.5)]
    ]
    v = summarize(runs, ["x"])["0"]["c"]["x"]
    assert v["speedup"] == 2.0  # prompts a (median 2.0), b (5.0), c (0.5) -> 2.0
    assert v["min_speedup"] == 0.5
    # results recorded before the first round was timed have no speed after it: shown as "—"
    assert v["decode_speedup"] is None and v["first_token"] is None
    for run, decode in zip(runs, (1.0, 2.0, 4.0, None)):
        run["decode_speedup"] = decode
    assert summarize(runs, ["x"])["0"]["c"]["x"]["decode_speedup"] == 2.75  # prompts a 1.5, b 4.0 -> 2.75


def test_result_files_round_trip_and_compare(result, tmp_path):
    a = write_result(result, tmp_path / "a.json")
    loaded = read_result(a)
    table = compare_markdown([loaded, loaded], ["M3 Pro", "M4"])
    assert "M3 Pro tok/s" in table and "M4 speed-up" in table and "M4 1st token s" in table
    assert "| 0.0 | code | mlx-spec k=3 |" in table
    assert "Machine:" in summary_markdown(loaded)
    png = plot_result(loaded, tmp_path / "plot.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_reports_show_the_machine_costs_and_drafting_ceiling_from_the_calibration(result):
    from mlx_spec.policy import Costs

    costs = Costs(**result["calibration"])
    step = costs.verify[0]
    summary = summary_markdown(result)
    assert "| target step | draft step | verify k=3 |" in summary
    assert f"| {step:.3f} s | {costs.draft_step / step:.2f}× |" in summary
    speedup, k = costs.ceiling(0.9)
    assert f"{speedup:.2f}× (k {k})" in summary
    # compare puts one row of costs per machine
    table = compare_markdown([result, result], ["M3 Pro", "M4"])
    assert f"| M3 Pro | {step:.3f} s |" in table and f"| M4 | {step:.3f} s |" in table
    # a result without a speculative arm has no calibration and no costs table
    plain = {**result, "calibration": None}
    assert "draft step" not in summary_markdown(plain)
    assert "Machine costs" not in compare_markdown([plain], ["M4"])


def test_reports_show_where_each_spec_arms_tokens_came_from(result):
    summary = summary_markdown(result)
    assert "| source | rounds | τ | accepted | drafted |" in summary
    # k=3 with a model drafting for itself: every greedy round is a draft round of 4 tokens
    runs = [r for r in result["runs"] if r["arm"] == "mlx-spec k=3" and r["temperature"] == 0.0
            and r["category"] == "code"]
    draft = runs[0]["stats"]["by_source"]["draft"]
    assert draft["tau"] == 4.0 and draft["acceptance_rate"] == 1.0
    assert f"| 0.0 | code | mlx-spec k=3 | draft | {draft['rounds']} (100%) | 4.00 | 100% | {draft['drafted']} |" in summary
    rows = [r for r in summary.splitlines() if r.startswith("| 0.0 | code | mlx-spec adaptive |") and "(" in r]
    shares = [int(r.split("(")[1].split("%")[0]) for r in rows]
    assert rows and 99 <= sum(shares) <= 101  # the sources' shares of the rounds add up
    assert not any("| plain |" in r or "mlx-lm" in r for r in summary.split("tokens came from")[1].splitlines())
    # results recorded before per-source statistics have no such table
    old = {**result, "runs": [{**r, "stats": {k: v for k, v in (r["stats"] or {}).items() if k != "by_source"}}
                              for r in result["runs"]]}
    assert "tokens came from" not in summary_markdown(old)
    # a fixed k's free tail gets a row of its own, summed over the category's prompts
    assert "free tail" not in summary
    tailed = {**result, "runs": [{**r, "stats": {**r["stats"], "tail_proposed": 10, "tail_accepted": 4}}
                                 if r in runs else r for r in result["runs"]]}
    assert f"| 0.0 | code | mlx-spec k=3 | free tail | — | — | 40% | {10 * len(runs)} |" in summary_markdown(tailed)


def test_summary_table_shows_the_worst_prompt_beside_the_median(result):
    table = summary_markdown(result)
    assert "| speed-up | worst prompt |" in table
    worst = result["summary"]["0.0"]["code"]["mlx-spec k=3"]["min_speedup"]
    assert "| mlx-spec k=3 | " in table and f"{worst:.2f}×" in table


def test_a_foreign_json_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SpecError, match="not an mlx-spec benchmark result"):
        read_result(path)


def test_skipping_prompts_extends_an_earlier_run_over_the_next_ones(tmp_path):
    items = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(1, 7)]
    (tmp_path / "code.json").write_text(json.dumps(items))
    ids = lambda prompts: [p["id"] for p in prompts["code"]]  # noqa: E731
    assert ids(load_prompts(["code"], 2, tmp_path)) == ["p1", "p2"]
    assert ids(load_prompts(["code"], 3, tmp_path, skip=2)) == ["p3", "p4", "p5"]
    assert ids(load_prompts(["code"], None, tmp_path, skip=4)) == ["p5", "p6"]
    with pytest.raises(SpecError, match="no prompts left .* after skipping 6 of 6"):
        load_prompts(["code"], 2, tmp_path, skip=6)


def test_prompts_picked_by_id_come_from_any_category(tmp_path):
    (tmp_path / "code.json").write_text(json.dumps([{"id": "sort", "prompt": "a"}, {"id": "fib", "prompt": "b"}]))
    (tmp_path / "open.json").write_text(json.dumps([{"id": "poem", "prompt": "c"}, {"id": "story", "prompt": "d"}]))
    (tmp_path / "math.json").write_text(json.dumps([{"id": "sum", "prompt": "e"}]))
    picked = load_prompts(["code", "math", "open"], root=tmp_path, ids=["poem", "fib"])
    assert {c: [p["id"] for p in items] for c, items in picked.items()} == {"code": ["fib"], "open": ["poem"]}
    assert prompts_by_id(["code", "open"], tmp_path) == {"sort": "a", "fib": "b", "poem": "c", "story": "d"}
    with pytest.raises(SpecError, match="no prompt with id sonnet"):
        load_prompts(["code", "open"], root=tmp_path, ids=["poem", "sonnet"])


def test_bench_cli_prompt_ids_checked_before_any_model_loads():
    unknown = CliRunner().invoke(app, ["bench", "--prompt-ids", "sonnet", "--target", "x", "--draft", "y"])
    assert unknown.exit_code == 1 and "no prompt with id sonnet" in unknown.output
    both = CliRunner().invoke(app, ["bench", "--prompt-ids", "poem", "--skip-prompts", "2", "--target", "x", "--draft", "y"])
    assert both.exit_code == 1 and "not both" in both.output
    assert "Traceback" not in unknown.output + both.output


def test_bench_cli_runs_and_compare_prints_a_table(stories_path, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r.json"
    args = ["bench", "--target", str(stories_path), "--draft", str(stories_path), "--categories", "code",
            "--prompts-per-category", "1", "--max-tokens", "8", "--raw", "--temps", "0",
            "--mlx-lm-k", "2", "--out", str(out), "--plot", str(tmp_path / "p.png")]
    run = runner.invoke(app, args)
    assert run.exit_code == 0, run.output
    assert read_result(out)["settings"]["max_tokens"] == 8
    compared = runner.invoke(app, ["bench", "compare", str(out), str(out), "--labels", "A,B"])
    assert compared.exit_code == 0 and "A tok/s" in compared.output


def test_bench_show_prints_a_recorded_result_whole_and_writes_its_markdown(result, tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # output to a pipe, as in a log
    path = tmp_path / "r.json"
    write_result(result, path)
    md = tmp_path / "r.md"
    shown = CliRunner().invoke(app, ["bench", "show", str(path), "--md", str(md)])
    assert shown.exit_code == 0, shown.output
    # no column is cut to an ellipsis in a log: arm names and the sources table come out whole
    assert "mlx-spec adaptive" in shown.output and "mlx-lm k=3" in shown.output and "…" not in shown.output
    assert "where the mlx-spec arms' tokens came from" in shown.output
    assert md.read_text() == summary_markdown(result).rstrip("\n") + "\n"


def test_bench_show_prompts_gives_every_prompt_a_row_of_its_arms(result, tmp_path):
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    write_result(result, path)
    shown = CliRunner().invoke(app, ["bench", "show", str(path), "--prompts", "--md", str(md)])
    assert shown.exit_code == 0, shown.output
    header, rows = prompt_rows(result)
    assert header == ["temp", "category", "prompt", "tokens", "mlx-spec adaptive", "mlx-spec k=3", "mlx-lm k=3"]
    prompts = [p["id"] for items in PROMPTS.values() for p in items]
    assert [(r[0], r[2]) for r in rows] == [(t, p) for t in ("0.0", "0.7") for p in prompts]
    for row in rows:
        runs = {r["arm"]: r for r in result["runs"]
                if str(r["temperature"]) == row[0] and r["prompt"] == row[2]}
        assert row[3] == str(runs["plain"]["tokens"])
        fixed = runs["mlx-spec k=3"]
        assert row[5] == f"{fixed['speedup']:.2f}× (τ {fixed['stats']['tau']:.1f})"
    assert rows[0][2] in shown.output and "per prompt" in shown.output
    assert md.read_text().endswith(prompts_markdown(result))


def test_bench_show_refuses_a_missing_file_in_one_line(tmp_path):
    shown = CliRunner().invoke(app, ["bench", "show", str(tmp_path / "none.json")])
    assert shown.exit_code == 1 and "cannot read benchmark result" in shown.output
    assert "Traceback" not in shown.output


def test_bench_cli_rejects_unknown_category():
    run = CliRunner().invoke(app, ["bench", "--categories", "poetry", "--target", "x", "--draft", "y"])
    assert run.exit_code == 1
    assert "unknown categories: poetry" in run.output


class RecordingBench:
    """Bench stand-in that records the order in which arms run and returns fixed outputs."""

    def __init__(self, arms):
        self.arms, self.max_tokens, self.chat = arms, 4, False
        self.target = self.draft = None
        self.calls: list[str] = []

    def encode(self, prompt, chat=False):
        return [1, 2, 3]

    def run(self, arm, ids, temperature, seed, max_tokens=None):
        self.calls.append(arm.name)
        return Run([5, 6, 7, 8], 1.0, None)

    def costs(self, arm):
        return None


def test_the_arm_order_turns_round_from_one_prompt_to_the_next():
    arms = default_arms(k_fixed=3, mlx_lm_ks=(3,))
    bench = RecordingBench(arms)
    prompts = {"code": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], "edit": [{"id": "c", "prompt": "z"}]}
    result = run_suite(bench, prompts, temperatures=(0.0,))
    names = [a.name for a in arms]
    measured = bench.calls[len(arms):]  # after the warm-up, which runs every arm once
    assert measured == names + names[::-1] + names
    # each record says where its arm ran; the baseline is still the reference of every ratio
    by_prompt = {(r["prompt"], r["arm"]): r for r in result["runs"]}
    assert [by_prompt[("b", n)]["position"] for n in names] == list(range(len(names)))[::-1]
    assert all(r["speedup"] == 1.0 and r["identical"] for r in result["runs"])


def test_the_result_keeps_the_stamp_taken_when_the_code_was_loaded(monkeypatch):
    """A checkout edited while the models load must not mark the run's code as dirty: the
    stamp given (taken at import) is the one recorded, not one taken when the suite starts."""
    import mlx_spec.bench as bench_module

    monkeypatch.setattr(bench_module, "software", lambda: {"version": "0.1.0", "commit": "abc1234+dirty"})
    bench = RecordingBench(default_arms(k_fixed=3, mlx_lm_ks=()))
    prompts = {"code": [{"id": "a", "prompt": "x"}]}
    loaded = {"version": "0.1.0", "commit": "abc1234"}
    assert run_suite(bench, prompts, temperatures=(0.0,), stamp=loaded)["settings"]["mlx_spec"] == loaded
    assert run_suite(bench, prompts, temperatures=(0.0,))["settings"]["mlx_spec"]["commit"] == "abc1234+dirty"


def part(result: dict, temperature: float) -> dict:
    """The result as if only `temperature` had been run."""
    runs = [r for r in result["runs"] if r["temperature"] == temperature]
    arms = [a["name"] for a in result["settings"]["arms"]]
    return {**result, "settings": {**result["settings"], "temperatures": [temperature]},
            "runs": runs, "summary": summarize(runs, arms)}


def test_the_parts_of_a_suite_merge_into_the_whole(result, tmp_path):
    merged = merge_results([part(result, 0.0), part(result, 0.7)])
    assert merged["summary"] == result["summary"]
    assert merged["runs"] == result["runs"]
    assert merged["settings"]["temperatures"] == [0.0, 0.7]
    assert [p["temperatures"] for p in merged["settings"]["parts"]] == [[0.0], [0.7]]
    paths = [write_result(part(result, t), tmp_path / f"{t}.json") for t in (0.0, 0.7)]
    out = tmp_path / "merged.json"
    cli = CliRunner().invoke(app, ["bench", "merge", *map(str, paths), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert read_result(out)["summary"] == result["summary"]


def test_a_merged_result_keeps_the_commit_each_part_ran_at(result):
    greedy, sampled = part(result, 0.0), part(result, 0.7)
    greedy["settings"] = {**greedy["settings"], "mlx_spec": {"version": "0.1.0", "commit": "aaaaaaa"}}
    sampled["settings"] = {**sampled["settings"], "mlx_spec": {"version": "0.1.0", "commit": "bbbbbbb+dirty"}}
    merged = merge_results([greedy, sampled])
    assert [p["mlx_spec"]["commit"] for p in merged["settings"]["parts"]] == ["aaaaaaa", "bbbbbbb+dirty"]
    assert merged["settings"]["mlx_spec"] is None  # no single commit ran the whole
    assert "mlx-spec: 0.1.0 (commit aaaaaaa) at T=0.0; 0.1.0 (commit bbbbbbb+dirty) at T=0.7" in summary_markdown(merged)
    same = merge_results([greedy, {**sampled, "settings": {**sampled["settings"], "mlx_spec": greedy["settings"]["mlx_spec"]}}])
    assert same["settings"]["mlx_spec"] == {"version": "0.1.0", "commit": "aaaaaaa"}
    assert "mlx-spec 0.1.0 (commit aaaaaaa)" in compare_markdown([same], ["here"])


def prompts_part(result: dict, prompts: set[str], commit: str) -> dict:
    """The result as if only `prompts` had been run, by the code at `commit`."""
    runs = [r for r in result["runs"] if r["prompt"] in prompts]
    arms = [a["name"] for a in result["settings"]["arms"]]
    return {**result, "runs": runs, "summary": summarize(runs, arms),
            "settings": {**result["settings"], "mlx_spec": {"version": "0.1.0", "commit": commit}}}


def test_a_suite_run_over_some_prompts_and_then_others_merges_into_the_whole(result):
    names = list(dict.fromkeys(r["prompt"] for r in result["runs"]))
    assert len(names) >= 2
    first, later = prompts_part(result, set(names[:1]), "aaaaaaa"), prompts_part(result, set(names[1:]), "bbbbbbb")
    merged = merge_results([first, later])
    assert merged["summary"] == result["summary"]
    assert sorted(map(str, merged["runs"])) == sorted(map(str, result["runs"]))
    assert [p["prompts"] for p in merged["settings"]["parts"]] == [names[:1], names[1:]]
    # two parts at the same temperatures are told apart by their prompts
    line = summary_markdown(merged)
    assert f"(commit aaaaaaa) at T=0.0,0.7 on {names[0]};" in line
    assert f"(commit bbbbbbb) at T=0.0,0.7 on {', '.join(names[1:])}" in line


def test_a_prompt_run_again_replaces_its_earlier_runs_when_asked(result, tmp_path):
    names = list(dict.fromkeys(r["prompt"] for r in result["runs"]))
    whole = prompts_part(result, set(names), "aaaaaaa")
    again = prompts_part(result, {names[0]}, "bbbbbbb")
    again["runs"] = [{**r, "seconds": r["seconds"] / 2, "again": True} for r in again["runs"]]
    with pytest.raises(SpecError, match="the same run"):
        merge_results([whole, again])
    merged = merge_results([whole, again], replace=True)
    assert len(merged["runs"]) == len(result["runs"])
    assert all(r.get("again", False) == (r["prompt"] == names[0]) for r in merged["runs"])
    assert merged["summary"] == summarize(merged["runs"], [a["name"] for a in result["settings"]["arms"]])
    assert [(p["mlx_spec"]["commit"], p["prompts"]) for p in merged["settings"]["parts"]] == \
        [("aaaaaaa", names[1:]), ("bbbbbbb", names[:1])]
    # run again at one temperature only: the earlier part keeps the prompt for the other
    greedy_again = part(again, 0.0)
    merged = merge_results([whole, greedy_again], replace=True)
    assert len(merged["runs"]) == len(result["runs"])
    assert {r["temperature"] for r in merged["runs"] if r.get("again")} == {0.0}
    assert {r["temperature"] for r in merged["runs"] if r["prompt"] == names[0] and not r.get("again")} == {0.7}
    assert merged["settings"]["parts"][0]["prompts"] == names
    paths = [write_result(r, tmp_path / f"{i}.json") for i, r in enumerate((whole, again))]
    out = tmp_path / "merged.json"
    cli = CliRunner().invoke(app, ["bench", "merge", *map(str, paths), "--out", str(out), "--replace"])
    assert cli.exit_code == 0, cli.output
    assert sum(bool(r.get("again")) for r in read_result(out)["runs"]) == len(again["runs"])


def test_merging_refuses_a_run_held_twice_and_other_models(result):
    greedy = part(result, 0.0)
    with pytest.raises(SpecError, match="the same run: T=0.0"):
        merge_results([greedy, greedy])
    other = part(result, 0.7)
    other["models"] = {**other["models"], "target": {**other["models"]["target"], "name": "another"}}
    with pytest.raises(SpecError, match="different machines or models"):
        merge_results([greedy, other])


def with_kernels(result: dict, core: str | None) -> dict:
    return {**result, "machine": {**result["machine"], "blas_core": core}}


def test_merging_refuses_parts_run_with_different_blas_kernels(result):
    greedy, sampled = part(result, 0.0), part(result, 0.7)
    with pytest.raises(SpecError, match=r"different BLAS kernels \(Cooperlake and Haswell\)"):
        merge_results([with_kernels(greedy, "Haswell"), with_kernels(sampled, "Cooperlake")])
    # the same kernels, or a part recorded before results named them, merge
    assert merge_results([with_kernels(greedy, "Haswell"), with_kernels(sampled, "Haswell")])["runs"]
    assert merge_results([with_kernels(greedy, "Haswell"), with_kernels(sampled, None)])["runs"]


def test_the_machine_line_names_the_blas_and_its_kernels(result):
    stamped = {**result, "machine": {**result["machine"], "blas": "libopenblas.so.0 (Haswell kernels)"}}
    assert "BLAS libopenblas.so.0 (Haswell kernels)" in summary_markdown(stamped)


def test_a_chain_arm_measures_the_suite_without_the_token_tree(stories_path):
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    arms = default_arms(k_fixed=3, mlx_lm_ks=(), chain=True)
    assert [a.name for a in arms] == ["plain", "mlx-spec adaptive", "mlx-spec k=3", "mlx-spec adaptive chain"]
    bench = Bench(loaded, loaded, arms, max_tokens=8, chat=False)
    assert bench.pairs["mlx-spec adaptive"].engine.tree
    assert not bench.pairs["mlx-spec adaptive chain"].engine.tree
    assert bench.run(arms[3], bench.encode("Once upon a time", chat=False), 0.0, 0).stats["sibling_hits"] == 0


def test_a_quick_arm_opens_plain_and_emits_the_same_tokens(stories_path):
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    arms = default_arms(k_fixed=3, mlx_lm_ks=(), quick=True)
    assert arms[-1].name == "mlx-spec adaptive quick" and arms[-1].quick_start
    bench = Bench(loaded, loaded, arms, max_tokens=24, chat=False)
    ids = bench.encode("Once upon a time", chat=False)
    slow, quick = bench.run(arms[1], ids, 0.0, 0), bench.run(arms[-1], ids, 0.0, 0)
    assert quick.tokens == slow.tokens
    assert quick.first_round[1] == 1  # the plain first round emits one token
    assert quick.stats["first_token_time"] > 0


def test_the_software_stamp_is_taken_before_the_first_run(monkeypatch):
    """A suite runs for an hour; the checkout may move on meanwhile, the loaded code does not."""
    bench = RecordingBench(default_arms(k_fixed=3, mlx_lm_ks=()))
    monkeypatch.setattr(bench_module, "software", lambda: {"version": "v", "commit": f"after {len(bench.calls)} runs"})
    result = run_suite(bench, {"code": [{"id": "a", "prompt": "x"}]}, temperatures=(0.0,))
    assert bench.calls and result["settings"]["mlx_spec"]["commit"] == "after 0 runs"


def test_bench_recalibrates_before_its_arms_and_keeps_the_new_costs(stories_path, monkeypatch):
    from mlx_spec import policy
    from mlx_spec.loading import load_model

    loaded = load_model(str(stories_path))
    arms = default_arms(k_fixed=3, mlx_lm_ks=())
    Bench(loaded, loaded, arms, max_tokens=8, chat=False)  # measures once: nothing cached yet
    key = policy.calibration_key(loaded.name, loaded.name, loaded.nbytes)
    cached = policy._calibration_table()[key]
    measured = []
    # a new reading on a host that became 10% slower alike for both models (the same ratios)
    slower = policy.Costs(**{**cached, "draft_step": cached["draft_step"] * 1.1, "verify": [s * 1.1 for s in cached["verify"]],
                             "draft_batch": cached["draft_batch"] * 1.1, "ladder": {t: s * 1.1 for t, s in cached["ladder"].items()}})
    monkeypatch.setattr(policy, "calibrate", lambda *a, **kw: measured.append(1) or slower)
    Bench(loaded, loaded, arms, max_tokens=8, chat=False)
    assert measured == []  # the cached costs serve
    bench = Bench(loaded, loaded, arms, max_tokens=8, chat=False, recalibrate=True)
    assert measured == [1]  # measured once for all arms: it agrees with the cached ratios
    kept = policy._calibration_table()[key]
    assert kept != cached
    costs = bench.pairs["mlx-spec adaptive"].engine.policy.costs
    assert costs.draft_step == kept["draft_step"]


def _reading(plain: float, draft: float, sixteen: float):
    """Costs as a calibration reads them: a plain step of `plain` seconds, a draft step and a
    16-token forward as `draft` and `sixteen` plain steps (2 tokens: 1.2; k_max 3)."""
    from mlx_spec.policy import _costs

    return _costs({1: plain, 2: 1.2 * plain, 4: 1.4 * plain, 16: sixteen * plain}, draft * plain, 0.5 * plain, 3)


@pytest.mark.parametrize("second, third, kept", [
    # agrees with the cached reading (within 15%): kept as read, no third reading
    ((0.70, 0.30, 1.60), None, (0.70, 0.30, 1.60)),
    # a misread draft step (host G's 0.48): read once more, the median of the three kept
    ((0.556, 0.48, 1.73), (0.66, 0.34, 1.67), (0.637, 0.34, 1.67)),
])
def test_a_fresh_calibration_that_disagrees_with_the_cached_one_is_read_once_more(second, third, kept, monkeypatch):
    from mlx_spec import policy

    key = "machine|t|d|1"
    policy.calibration_path().parent.mkdir(parents=True, exist_ok=True)
    policy.calibration_path().write_text(json.dumps({key: asdict(_reading(0.637, 0.34, 1.51))}))
    readings = [_reading(*second)] + ([_reading(*third)] if third else [])
    calls = []
    monkeypatch.setattr(policy, "calibrate", lambda *a, **kw: calls.append(1) or readings[len(calls) - 1])
    costs = policy.cached_calibration(key, None, None, k_max=3, fresh=True)
    assert len(calls) == len(readings)
    plain, draft, sixteen = kept
    assert costs.verify[0] == pytest.approx(plain)
    assert costs.draft_step / costs.verify[0] == pytest.approx(draft)
    assert costs.ladder[16] / costs.verify[0] == pytest.approx(sixteen)
    assert costs.verify_tokens == [1, 2, 4, 4]  # sizes chosen again from the kept ladder
    assert json.loads(policy.calibration_path().read_text())[key]["draft_step"] == pytest.approx(costs.draft_step)
