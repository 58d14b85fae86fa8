"""`mlx-spec doctor`: what this machine offers and what mlx-spec will use on it.

collect() gathers the report as a plain dict (backend, machine, BLAS, versions, cache
locations, local models, the pairs calibrated on this machine and their drafting ceilings);
render() lays it out. Nothing here loads a model or downloads.
"""

from __future__ import annotations

import os
import platform as _py_platform
import sys
from pathlib import Path

from mlx_spec.errors import SpecError

BACKEND_NAMES = {"metal": "Metal (Apple GPU)", "cuda": "CUDA (NVIDIA GPU)", "cpu": "CPU", "gpu": "GPU"}


def _local_models(registry) -> list[dict]:
    """The models.toml pairs with each side's presence, then other converted models."""
    from mlx_spec.resolve import find_local, is_model_dir, models_home

    def where(ref: str) -> str | None:
        try:
            path = find_local(ref)
        except SpecError:
            return None
        return str(path) if path else None

    rows, seen = [], set()
    if registry is not None:
        for name, spec in registry.pairs.items():
            target, draft = where(spec.target), where(spec.draft)
            seen.update(p for p in (target, draft) if p)
            rows.append({"pair": name, "default": name == registry.default,
                         "target": spec.target, "target_path": target,
                         "draft": spec.draft, "draft_path": draft})
    own = models_home() / "models"
    if own.is_dir():
        for path in sorted(own.iterdir()):
            if is_model_dir(path) and str(path) not in seen:
                rows.append({"pair": None, "model": path.name, "path": str(path)})
    return rows


def collect() -> dict:
    """The doctor report as a JSON-able dict."""
    import mlx_spec
    from mlx_spec.platform import machine
    from mlx_spec.policy import calibrated_pairs, calibration_path
    from mlx_spec.registry import default_path, load_registry
    from mlx_spec.resolve import hf_cache_dir, models_home

    m = dict(machine())
    backend = m.pop("backend")
    report = {
        "backend": backend,
        "backend_name": BACKEND_NAMES.get(backend, backend),
        "machine": m,
        "versions": {
            "mlx-spec": mlx_spec.__version__,
            "mlx": m.pop("mlx_version"),
            "mlx-lm": m.pop("mlx_lm_version"),
            "python": _py_platform.python_version(),
        },
        "paths": {
            "models home ($MLX_SPEC_HOME)": str(models_home()),
            "converted models": str(models_home() / "models"),
            "calibration": str(calibration_path()),
            "hugging face cache": str(hf_cache_dir()),
            "models.toml ($MLX_SPEC_MODELS)": str(default_path()),
        },
        "problems": [],
    }
    if "blas" in m:
        report["blas"] = m.pop("blas")
        if "openblas" not in report["blas"].lower():
            report["problems"].append("MLX uses its slow reference BLAS: install OpenBLAS "
                                      "(apt install libopenblas0-pthread) for 4-6x faster CPU decoding")
        report["blas_pinned"] = _pinned_kernels()
    try:
        registry = load_registry()
    except SpecError as err:
        registry = None
        report["problems"].append(f"models.toml: {err.message}")
    report["models"] = _local_models(registry)
    report["calibrated"] = [{"target": target, "draft": draft, **costs.shares()}
                            for target, draft, costs in calibrated_pairs() if costs.draft_step > 0]
    return report


def _pinned_kernels() -> dict | None:
    """Where OPENBLAS_CORETYPE names kernels other than OpenBLAS's own pick for this CPU:
    both (a verification's cost against a plain step depends on them; README, "Set up").
    Not a problem: a pin may be there because a BLAS build computes wrongly on the CPU."""
    from mlx_spec._blas import BLAS, own_pick

    core = BLAS["core"]
    if not (os.environ.get("OPENBLAS_CORETYPE") and core and BLAS["loaded"]):
        return None
    pick = own_pick(BLAS["library"])
    return {"named": core, "own_pick": pick} if pick and pick.lower() != core.lower() else None


def _machine_rows(report: dict) -> list[tuple[str, str]]:
    m = report["machine"]
    chip_label = "chip" if sys.platform == "darwin" else "CPU"
    rows = [("backend", report["backend_name"]),
            ("os", f"{m['os']} ({m['arch']})"),
            (chip_label, f"{m['chip']}, {m['cpu_cores']} cores")]
    if m.get("gpu"):
        rows.append(("GPU", str(m["gpu"])))
    if m.get("gpu_cores"):
        rows.append(("GPU cores", str(m["gpu_cores"])))
    rows.append(("memory", f"{m['memory_gb']:g} GB"))
    if m.get("bandwidth_gbs"):
        rows.append(("memory bandwidth", f"{m['bandwidth_gbs']:g} GB/s (chip table)"))
    elif sys.platform == "darwin":
        rows.append(("memory bandwidth", "unknown chip (not in the table)"))
    if "blas" in report:
        rows.append(("BLAS", report["blas"]))
    pinned = report.get("blas_pinned")
    if pinned:
        rows.append(("BLAS kernels", f"{pinned['named']}, named by OPENBLAS_CORETYPE; "
                                     f"OpenBLAS alone would run {pinned['own_pick']} here"))
    rows += [(name, version or "not installed") for name, version in report["versions"].items()]
    return rows


def _pair_labels(calibrated: list[dict]) -> list[str]:
    """"target + draft" by folder name, or by full reference where two entries would read
    the same (one model calibrated from two paths)."""
    short = [f"{Path(c['target']).name} + {Path(c['draft']).name}" for c in calibrated]
    return [label if short.count(label) == 1 else f"{c['target']} + {c['draft']}"
            for label, c in zip(short, calibrated)]


def _calibrated(c: dict) -> str:
    alphas, ceilings = zip(*[(f"{a:g}", f"{s:.2f}×") for a, (s, _) in list(c["ceiling"].items())[:3]])
    verify = c["verify"][15]
    verify = "—" if verify is None else f"{verify:.2f}×"  # None: calibrated for a shorter k_max
    return (f"draft {c['draft_step']:.2f}×, verify(15) {verify} of a {c['target_step']:.3f} s "
            f"step; ceiling {'/'.join(ceilings)} at α {'/'.join(alphas)}")


def render(report: dict, console) -> None:
    """Print the report with rich: machine, paths, local models, problems."""
    from rich.table import Table

    def section(title: str, rows) -> None:
        table = Table(title=title, title_justify="left", title_style="bold", show_header=False,
                      box=None, padding=(0, 2))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print()

    section("machine", _machine_rows(report))
    section("locations", [(k, v + ("" if Path(v).exists() else "  (not created yet)"))
                          for k, v in report["paths"].items()])
    models = []
    for row in report["models"]:
        if row["pair"] is None:
            models.append((row["model"], f"converted: {row['path']}"))
            continue
        present = [role for role in ("target", "draft") if row[f"{role}_path"]]
        state = ("present" if len(present) == 2 else f"{present[0]} only" if present
                 else "not downloaded")
        label = row["pair"] + (" (default)" if row["default"] else "")
        models.append((label, state))
    section("models", models or [("-", "none")])
    if report.get("calibrated"):
        section("calibrated pairs (costs in target steps; drafting ceiling at acceptance α)",
                list(zip(_pair_labels(report["calibrated"]), map(_calibrated, report["calibrated"]))))
    if report["problems"]:
        section("problems", [("!", p) for p in report["problems"]])
