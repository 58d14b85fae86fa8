"""The BLAS line of the machine stamp, and calibrations kept apart per BLAS kernel."""

import pytest

from mlx_spec import _blas, platform, policy


@pytest.fixture
def blas(monkeypatch):
    state = dict(_blas.BLAS)
    monkeypatch.setattr(_blas, "BLAS", state)
    return state


def test_the_blas_line_names_the_kernels_openblas_runs(blas):
    blas.update(library="libopenblas.so.0", loaded=True, core="Haswell")
    assert _blas.describe() == "libopenblas.so.0 (Haswell kernels)"


def test_the_blas_line_is_the_library_when_openblas_cannot_name_its_kernels(blas):
    blas.update(library="libopenblas.so.0", loaded=True, core=None)
    assert _blas.describe() == "libopenblas.so.0"


def test_the_blas_line_says_when_the_reference_blas_runs(blas):
    blas.update(library=None, loaded=False, core=None)
    assert _blas.describe() == "bundled reference BLAS"


def test_a_library_without_a_core_name_gives_none():
    class NoOpenBLAS:  # a BLAS that is not OpenBLAS has no openblas_get_corename
        pass

    assert _blas.core_name(NoOpenBLAS()) is None


def stamped(blas_line):
    stamp = {"chip": "AMD EPYC", "backend": "cpu", "cpu_cores": 2}
    if blas_line is not None:
        stamp["blas"] = blas_line
    return lambda: stamp


def test_a_calibration_made_with_one_blas_kernel_is_not_reused_with_another(monkeypatch):
    keys = {}
    for line in ("libopenblas.so.0 (Haswell kernels)", "libopenblas.so.0 (Cooperlake kernels)", None):
        monkeypatch.setattr(platform, "machine", stamped(line))
        keys[line] = policy.calibration_key("org/big", "org/small", 123)
    assert len(set(keys.values())) == 3
    monkeypatch.setattr(platform, "machine", stamped("libopenblas.so.0 (Haswell kernels)"))
    assert policy.calibration_key("org/big", "org/small", 123) == keys["libopenblas.so.0 (Haswell kernels)"]


@pytest.fixture
def openblas_haswell(blas, monkeypatch):
    """OpenBLAS loaded with its Haswell kernels, named by OPENBLAS_CORETYPE."""
    blas.update(library="libopenblas.so.0", loaded=True, core="Haswell")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    return blas


def test_doctor_shows_kernels_named_by_the_environment_beside_openblass_own_pick(openblas_haswell, monkeypatch):
    from mlx_spec import doctor

    monkeypatch.setattr(_blas, "own_pick", lambda library: "Cooperlake")
    pinned = doctor._pinned_kernels()
    assert pinned == {"named": "Haswell", "own_pick": "Cooperlake"}
    rows = dict(doctor._machine_rows({"machine": {"os": "Linux", "arch": "x86_64", "chip": "AMD EPYC",
                                                  "cpu_cores": 2, "memory_gb": 25.3},
                                      "backend_name": "CPU", "versions": {}, "blas_pinned": pinned}))
    assert rows["BLAS kernels"] == "Haswell, named by OPENBLAS_CORETYPE; OpenBLAS alone would run Cooperlake here"


def test_doctor_says_nothing_of_kernels_the_environment_names_as_openblas_would(openblas_haswell, monkeypatch):
    from mlx_spec import doctor

    monkeypatch.setattr(_blas, "own_pick", lambda library: "HASWELL")
    assert doctor._pinned_kernels() is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setattr(_blas, "own_pick", lambda library: pytest.fail("no pin: nothing to ask"))
    assert doctor._pinned_kernels() is None


@pytest.mark.skipif(not _blas.BLAS["loaded"], reason="OpenBLAS is not loaded here")
def test_openblass_own_pick_is_asked_of_a_fresh_process_and_names_a_core_type():
    pick = _blas.own_pick(_blas.BLAS["library"])
    assert pick and pick.isprintable() and " " not in pick


def test_own_pick_of_a_library_that_does_not_load_is_none():
    assert _blas.own_pick("libno-such-blas.so.0") is None
