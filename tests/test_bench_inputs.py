"""Bad input to `mlx-spec bench` and its show/compare/merge: one error line and a hint, a
non-zero exit, no traceback, refused before any model loads, and nothing measured lost
(Ctrl-C keeps the prompts every arm finished)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import mlx_spec.bench as bench_module
from mlx_spec.bench import SuiteInterrupted, default_arms, read_result, run_suite, write_result
from mlx_spec.bench_cli import _check_output
from mlx_spec.cli import app
from mlx_spec.errors import SpecError

# a model that does not exist: an option refused before loading never gets to say so
NO_MODEL = ["-t", "/nonexistent/target", "-d", "/nonexistent/draft"]
TINY = ["--categories", "code", "--prompts-per-category", "1", "--max-tokens", "4", "--temps", "0",
        "--mlx-lm-k", "3", "--raw"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments, code=1):
    """Non-zero exit, 'error:' and 'hint:' lines on stderr, no traceback, nothing 'unexpected'."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "\nhint: " in result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


class StubBench:
    """Bench stand-in with fixed outputs; Ctrl-C arrives at its `interrupt_at`-th run."""

    def __init__(self, interrupt_at: int | None = None):
        self.arms, self.max_tokens, self.chat = default_arms(k_fixed=3, mlx_lm_ks=(3,)), 4, False
        self.target = SimpleNamespace(name="tiny", path="tiny", dtype="float32", nbytes=1)
        self.draft = None
        self.calls, self.interrupt_at = 0, interrupt_at

    def encode(self, prompt, chat=False):
        return [1, 2, 3]

    def run(self, arm, ids, temperature, seed, max_tokens=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return bench_module.Run([5, 6, 7, 8], 1.0, None)

    def costs(self, arm):
        return None


PROMPTS = {"code": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], "edit": [{"id": "c", "prompt": "z"}]}


@pytest.fixture
def good_result(tmp_path):
    """A valid result file, from the stub bench (no model needed)."""
    return write_result(run_suite(StubBench(), PROMPTS, temperatures=(0.0,)), tmp_path / "good.json")


# -- 1, 4: output paths are checked before the work ----------------------------------------
@pytest.mark.parametrize("option,where,message", [
    ("--out", "folder", "{option} {path} is a folder"),
    ("--out", "under-a-file", "cannot write {option} {path}: {path.parent} is not a folder"),
    ("--md", "folder", "{option} {path} is a folder"),
    ("--plot", "p.txt", "{option} {path}: matplotlib writes no .txt"),
    ("--plot", "p", "{option} {path}: matplotlib writes no file without an extension"),
])
def test_bench_refuses_an_output_path_before_loading_a_model(tmp_path, option, where, message):
    (tmp_path / "a-file").write_text("")
    path = {"folder": tmp_path, "under-a-file": tmp_path / "a-file" / "r.json"}.get(where, tmp_path / where)
    others = [] if option == "--out" else ["--out", tmp_path / "r.json"]
    result = run("bench", *NO_MODEL, *TINY, *others, option, path)
    assert_clean_error(result, "error: " + message.format(option=option, path=path))


def test_a_refused_output_path_creates_and_truncates_nothing(tmp_path):
    kept = tmp_path / "keep.json"
    kept.write_text("an earlier result")
    result = run("bench", *NO_MODEL, *TINY, "--out", kept, "--md", tmp_path / "new" / "r.md", "--plot", tmp_path / "p.txt")
    assert_clean_error(result, f"error: --plot {tmp_path / 'p.txt'}: matplotlib writes no .txt")
    assert kept.read_text() == "an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_an_accepted_output_path_is_left_as_it_was(tmp_path):
    kept = tmp_path / "keep.json"
    kept.write_text("an earlier result")
    _check_output(kept, "--out")
    _check_output(tmp_path / "new" / "deeper" / "r.json", "--out")  # folders are made at the end
    assert kept.read_text() == "an earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


@pytest.mark.parametrize("command", ["merge", "compare"])
def test_merge_and_compare_refuse_an_output_folder_before_reading(good_result, tmp_path, command):
    assert_clean_error(run("bench", command, good_result, "--out", tmp_path), f"--out {tmp_path} is a folder")


def test_bench_writes_into_folders_it_makes(stories_path, tmp_path):
    out, md = tmp_path / "new" / "r.json", tmp_path / "notes" / "r.md"
    result = run("bench", "-t", stories_path, "-d", stories_path, *TINY, "--out", out, "--md", md)
    assert result.exit_code == 0, result.output
    assert read_result(out)["runs"] and md.read_text().startswith("Machine:")


# -- 2: Ctrl-C keeps the comparisons every arm finished ------------------------------------
def test_ctrl_c_keeps_only_whole_comparisons_marked_interrupted():
    bench = StubBench()
    arms = len(bench.arms)
    bench.interrupt_at = arms + arms + 2  # warm-up, prompt a whole, then two runs into prompt b
    with pytest.raises(SuiteInterrupted) as stop:
        run_suite(bench, PROMPTS, temperatures=(0.0, 0.7))
    partial = stop.value.result
    assert partial["interrupted"] is True
    assert {(r["prompt"], r["temperature"]) for r in partial["runs"]} == {("a", 0.0)}
    assert len(partial["runs"]) == arms
    assert partial["settings"]["temperatures"] == [0.0]  # what it holds, for `bench merge`
    assert list(partial["summary"]["0.0"]["code"]) == [a.name for a in bench.arms]


def test_ctrl_c_before_any_whole_comparison_is_a_plain_interrupt():
    bench = StubBench(interrupt_at=2)  # in the warm-up
    with pytest.raises(KeyboardInterrupt) as stop:
        run_suite(bench, PROMPTS, temperatures=(0.0,))
    assert not isinstance(stop.value, SuiteInterrupted)


def test_ctrl_c_during_bench_writes_the_partial_result_that_show_and_compare_read(stories_path, tmp_path, monkeypatch):
    arms = len(default_arms(3, (3,)))
    calls, real_run = [], bench_module.Bench.run

    def interrupted_run(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * arms + 1:  # after the warm-up and one whole prompt
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(bench_module.Bench, "run", interrupted_run)
    out = tmp_path / "r.json"
    result = run("bench", "-t", stories_path, "-d", stories_path, *TINY, "--prompts-per-category", "2", "--out", out)
    assert result.exit_code == 130, result.output
    assert f"kept the 1 of 2 comparisons every arm finished ({arms} runs) in {out}" in result.stderr
    partial = read_result(out)
    assert partial["interrupted"] is True and len(partial["runs"]) == arms
    shown = run("bench", "show", out, "--md", tmp_path / "r.md")
    assert shown.exit_code == 0 and "interrupted" in shown.output, shown.output
    assert "**Interrupted:**" in (tmp_path / "r.md").read_text()
    compared = run("bench", "compare", out, out, "--labels", "A,B")
    assert compared.exit_code == 0 and "interrupted (partial)" in compared.output


# -- 3: result files of the wrong shape ----------------------------------------------------
def bad_documents(good: dict) -> dict:
    without_runs = {k: v for k, v in good.items() if k != "runs"}
    return {
        "a string": ("x", "the file holds a JSON string, not an object"),
        "null": (None, "the file holds a JSON null, not an object"),
        "a list": ([good], "the file holds a JSON list, not an object"),
        "schema only": ({"schema": bench_module.SCHEMA}, "missing created, machine, models"),
        "no runs": (without_runs, "missing runs"),
        "machine a string": ({**good, "machine": "x"}, "machine is a string, not an object"),
        "temperatures a string": ({**good, "settings": {**good["settings"], "temperatures": "0"}},
                                  "settings.temperatures is a string, not a list"),
    }


@pytest.mark.parametrize("case", ["a string", "null", "a list", "schema only", "no runs", "machine a string",
                                  "temperatures a string"])
@pytest.mark.parametrize("command", ["show", "compare", "merge"])
def test_a_result_of_the_wrong_shape_is_refused_naming_the_file(good_result, tmp_path, case, command):
    document, problem = bad_documents(json.loads(good_result.read_text()))[case]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    args = {"show": [bad], "compare": [good_result, bad], "merge": [good_result, bad, "--out", tmp_path / "m.json"]}
    assert_clean_error(run("bench", command, *args[command]), f"{bad} is not an mlx-spec benchmark result: {problem}")


def test_a_result_of_the_right_shape_is_read(good_result):
    assert read_result(good_result)["runs"]
    with pytest.raises(SpecError, match="schema null"):
        bench_module.check_result({"hello": 1}, "x.json")


# -- 5, 6: options bench shares with generate, checked before loading ----------------------
@pytest.mark.parametrize("options,message", [
    (["--categories", ","], "no categories given"),
    (["--pair", "nope"], "--pair and --target both given"),
    (["--k", "1000"], "--k must be from 1 to 16, got 1000"),
    (["--mlx-lm-k", "2.5"], "--mlx-lm-k takes positive whole numbers, got '2.5'"),
    (["--mlx-lm-k", "0"], "--mlx-lm-k takes positive whole numbers, got '0'"),
    (["--temps", ""], "no temperatures given"),
    (["--temps", "-1"], "--temps must be 0 or more"),
])
def test_bench_refuses_bad_options_before_loading_a_model(options, message):
    assert_clean_error(run("bench", *NO_MODEL, *TINY, *options), message)


def test_no_categories_lists_the_valid_ones():
    assert_clean_error(run("bench", *NO_MODEL, "--categories", ","), "hint: choose from code, math, open, edit")


def test_no_mlx_lm_arms_stays_allowed(tmp_path):
    # `--mlx-lm-k ""` (no mlx-lm arms) passes the check and meets the next one
    assert_clean_error(run("bench", *NO_MODEL, *TINY, "--mlx-lm-k", "", "--out", tmp_path), f"--out {tmp_path} is a folder")


@pytest.mark.parametrize("draft", ["ngram", "none"])
def test_bench_explains_that_it_compares_a_draft_model(draft):
    result = run("bench", "-t", "/nonexistent/target", "-d", draft, *TINY)
    assert_clean_error(result, f"bench compares a draft model, not --draft {draft}", "n-gram proposer")


def test_bench_refuses_a_draft_whose_tokenizer_differs(stories_path, cli_mismatched_model, tmp_path):
    out = tmp_path / "r.json"
    result = run("bench", "-t", stories_path, "-d", cli_mismatched_model, *TINY, "--out", out)
    assert_clean_error(result, "disagree", "stories-swapped")
    assert "ngram" not in result.stderr  # generate's hint; bench takes no --draft ngram
    assert not out.exists()


def test_a_merge_with_an_interrupted_part_is_marked_interrupted():
    whole = run_suite(StubBench(), PROMPTS, temperatures=(0.0,))
    bench = StubBench()
    bench.interrupt_at = 2 * len(bench.arms) + 1  # after the warm-up and one whole prompt
    with pytest.raises(SuiteInterrupted) as stop:
        run_suite(bench, PROMPTS, temperatures=(0.7,))
    assert bench_module.merge_results([whole, stop.value.result])["interrupted"] is True
    assert "interrupted" not in bench_module.merge_results([whole])
