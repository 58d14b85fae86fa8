"""`mlx-spec doctor`: the report's fields, its rendering, and which models it finds locally."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mlx_spec.cli import app
from mlx_spec.doctor import collect
from mlx_spec.platform import source_commit

PAIR_TOML = """
default = "tiny"
[pairs."tiny"]
target = "test-org/tiny-target"
draft = "test-org/tiny-draft"
memory_gb = 1
good_for = ["chat"]
k = 4
description = "stories260K as both models"
[pairs."absent"]
target = "test-org/absent-target"
draft = "test-org/tiny-draft"
memory_gb = 1
good_for = ["chat"]
k = 4
description = "target never downloaded"
"""


def run(*args):
    return CliRunner().invoke(app, ["doctor", *args])


def test_report_has_backend_machine_versions_and_paths():
    report = collect()
    assert report["backend"] in {"metal", "cuda", "cpu", "gpu"}
    machine = report["machine"]
    for key in ("chip", "cpu_cores", "memory_gb", "gpu_cores", "bandwidth_gbs", "os", "arch"):
        assert key in machine
    assert report["versions"]["mlx"] and "mlx-lm" in report["versions"]
    assert "models home ($MLX_SPEC_HOME)" in report["paths"]
    if sys.platform == "linux":
        assert report["blas"]


def test_models_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPEC_HOME", str(tmp_path / "home"))
    assert collect()["paths"]["models home ($MLX_SPEC_HOME)"] == str(tmp_path / "home")


def test_doctor_prints_every_section():
    result = run()
    assert result.exit_code == 0, result.output
    for field in ("backend", "memory", "mlx", "mlx-lm", "models home", "calibration",
                  "hugging face cache", "models.toml", "qwen2.5-7b (default)"):
        assert field in result.stdout
    if sys.platform == "linux":
        assert "BLAS" in result.stdout and "CPU" in result.stdout
    assert "Traceback" not in result.output


def test_doctor_json_is_the_collected_report():
    result = run("--json")
    data = json.loads(result.stdout)
    assert {"backend", "machine", "versions", "paths", "models", "problems"} <= set(data)


def test_local_pairs_and_converted_models_are_listed(stories_path, tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name in ("test-org--tiny-target", "test-org--tiny-draft", "my-converted"):
        (home / "models").mkdir(parents=True, exist_ok=True)
        (home / "models" / name).symlink_to(stories_path)
    toml = tmp_path / "models.toml"
    toml.write_text(PAIR_TOML)
    monkeypatch.setenv("MLX_SPEC_HOME", str(home))
    monkeypatch.setenv("MLX_SPEC_MODELS", str(toml))
    models = {row.get("pair") or row.get("model"): row for row in collect()["models"]}
    assert models["tiny"]["target_path"] and models["tiny"]["draft_path"]
    assert models["absent"]["target_path"] is None and models["absent"]["draft_path"]
    assert "my-converted" in models
    out = run().stdout
    assert "tiny (default)" in out and "present" in out and "draft only" in out


def test_pairs_calibrated_on_this_machine_are_listed_with_their_ceiling(tmp_path, monkeypatch):
    from mlx_spec.policy import Costs, calibration_key

    monkeypatch.setenv("MLX_SPEC_HOME", str(tmp_path))
    assert collect()["calibrated"] == []  # no calibration file yet
    ours = {"draft_step": 0.25, "verify": [1.0, 1.2, 1.2, 1.3] + [1.5] * 12}
    elsewhere = {"draft_step": 0.1, "verify": [1.0] * 16}
    ngram = {"draft_step": 0.0, "verify": [1.0] * 16}
    table = {calibration_key("org/big", "org/small", 123): ours,
             "0123456789ab|org/big|org/small|123": elsewhere,  # another machine's entry
             calibration_key("org/big", "ngram", 123): ngram}  # nothing drafts: no ceiling
    (tmp_path / "calibration.json").write_text(json.dumps(table))
    report = json.loads(run("--json").stdout)
    [entry] = report["calibrated"]
    assert (entry["target"], entry["draft"]) == ("org/big", "org/small")
    costs = Costs(**ours)
    assert entry["draft_step"] == pytest.approx(0.25) and entry["verify"]["15"] == pytest.approx(1.5)
    assert entry["ceiling"]["0.9"] == pytest.approx(list(costs.ceiling(0.9)))
    out = " ".join(run().stdout.split())  # the table wraps at the terminal's width
    assert "calibrated pairs" in out and "big + small" in out
    ceilings = "/".join(f"{costs.ceiling(a)[0]:.2f}×" for a in (1.0, 0.9, 0.8))
    assert f"ceiling {ceilings} at α 1/0.9/0.8" in out


def test_one_model_calibrated_from_two_paths_reads_as_two_rows_and_a_short_ladder_has_no_k15(
        tmp_path, monkeypatch):
    from mlx_spec.policy import calibration_key

    monkeypatch.setenv("MLX_SPEC_HOME", str(tmp_path))
    short = {"draft_step": 0.2, "verify": [1.0, 1.1, 1.2, 1.3, 1.4]}  # k_max = 4: no k = 15
    table = {calibration_key("/a/tiny", "/a/tiny", 1): short, calibration_key("/b/tiny", "/b/tiny", 1): short}
    (tmp_path / "calibration.json").write_text(json.dumps(table))
    report = json.loads(run("--json").stdout)
    assert [c["verify"]["15"] for c in report["calibrated"]] == [None, None]
    assert [c["verify"]["3"] for c in report["calibrated"]] == [pytest.approx(1.3)] * 2
    out = " ".join(run().stdout.split())
    assert "/a/tiny + /a/tiny" in out and "/b/tiny + /b/tiny" in out and "verify(15) —" in out


def test_a_broken_models_toml_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    toml = tmp_path / "models.toml"
    toml.write_text("default = [")
    monkeypatch.setenv("MLX_SPEC_MODELS", str(toml))
    result = run()
    assert result.exit_code == 0 and "not valid TOML" in result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_source_commit_is_read_from_the_packages_own_checkout(tmp_path):
    def git(*args, cwd=tmp_path):
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    package = tmp_path / "repo" / "mlx_spec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    repo = package.parent
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=repo)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert source_commit(package) == head
    (repo / "notes.txt").write_text("untracked\n")
    assert source_commit(package) == head  # untracked files do not make it dirty
    (package / "__init__.py").write_text("x = 2  # changed\n")
    assert source_commit(package) == head + "+dirty"
    nested = package / "vendored" / "mlx_spec"  # inside a repository that is not its own
    nested.mkdir(parents=True)
    assert source_commit(nested) is None
    assert source_commit(tmp_path / "elsewhere") is None
