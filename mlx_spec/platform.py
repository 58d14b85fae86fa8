"""Where we run: the MLX backend, the machine (chip, cores, memory, bandwidth) and its BLAS.

Used to pick weight dtypes (float32 on the CPU backend, the checkpoint's dtype on Metal/CUDA),
to set the wired memory limit on macOS, and to stamp benchmark results.
"""

from __future__ import annotations

import os
import platform as _py_platform
import subprocess
from functools import lru_cache
from pathlib import Path

from mlx_spec._blas import BLAS, describe as describe_blas

# Memory bandwidth (GB/s) of Apple chips, longest name first so "M3 Pro" wins over "M3".
# Where a chip ships in two bandwidth bins (M3 Max, M4 Max) the GPU core count decides.
CHIP_BANDWIDTH_GBS = {
    "M1 Ultra": 800, "M2 Ultra": 800, "M3 Ultra": 819,
    "M1 Max": 400, "M2 Max": 400, "M3 Max": (300, 400), "M4 Max": (410, 546),
    "M1 Pro": 200, "M2 Pro": 200, "M3 Pro": 150, "M4 Pro": 273,
    "M1": 68, "M2": 100, "M3": 100, "M4": 120, "M5": 153,
}
# GPU core counts at or above which the high-bandwidth bin applies.
_HIGH_BIN_GPU_CORES = {"M3 Max": 40, "M4 Max": 40}


def backend() -> str:
    """'metal', 'cuda' or 'cpu': the backend MLX's default device runs on."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    try:
        if mx.cuda.is_available():
            return "cuda"
    except AttributeError:
        pass
    return "gpu"


def default_dtype(checkpoint_dtype: str | None = None) -> str:
    """float32 on the CPU backend (BLAS path); the checkpoint's own dtype elsewhere."""
    if backend() == "cpu":
        return "float32"
    return checkpoint_dtype or "bfloat16"


def chip_bandwidth(chip: str, gpu_cores: int | None = None) -> float | None:
    """Memory bandwidth in GB/s for an Apple chip name such as 'Apple M3 Pro'."""
    for name, bw in CHIP_BANDWIDTH_GBS.items():
        if name in chip.replace("Apple ", ""):
            if isinstance(bw, tuple):
                high = gpu_cores is not None and gpu_cores >= _HIGH_BIN_GPU_CORES[name]
                return float(bw[1] if high else bw[0])
            return float(bw)
    return None


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _linux_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _py_platform.processor() or "unknown CPU"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _mac_gpu_cores() -> int | None:
    out = _run(["system_profiler", "SPDisplaysDataType"])
    for line in out.splitlines():
        if "Total Number of Cores" in line:
            try:
                return int(line.split(":")[1])
            except ValueError:
                return None
    return None


def source_commit(package_dir: Path | None = None) -> str | None:
    """The git commit mlx-spec runs from ("abc1234", "+dirty" when tracked files differ
    from it), or None when the package is not a git checkout of its own (an installed wheel;
    a site-packages folder inside some other repository does not count)."""
    package_dir = Path(package_dir or Path(__file__).parent).resolve()
    root = _run(["git", "-C", str(package_dir), "rev-parse", "--show-toplevel"])
    if not root or Path(root).resolve() != package_dir.parent:
        return None
    commit = _run(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    if not commit:
        return None
    dirty = _run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    return commit + ("+dirty" if dirty else "")


def software() -> dict:
    """mlx-spec's version and the commit it runs from, for benchmark result files."""
    from mlx_spec import __version__

    return {"version": __version__, "commit": source_commit()}


@lru_cache(maxsize=1)
def machine() -> dict:
    """A stamp of this machine, for `doctor` and benchmark result files."""
    import mlx.core as mx

    info = {
        "os": f"{_py_platform.system()} {_py_platform.release()}",
        "arch": _py_platform.machine(),
        "backend": backend(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": round((_memory_bytes() or 0) / 1e9, 1),
        "mlx_version": mx.__version__,
    }
    try:  # from the package metadata: importing mlx_lm itself takes seconds
        from importlib.metadata import PackageNotFoundError, version

        info["mlx_lm_version"] = version("mlx-lm")
    except PackageNotFoundError:
        info["mlx_lm_version"] = None
    if _py_platform.system() == "Darwin":
        chip = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "Apple silicon"
        cores = _mac_gpu_cores()
        info.update(chip=chip, gpu_cores=cores, bandwidth_gbs=chip_bandwidth(chip, cores))
    else:
        info.update(chip=_linux_cpu_model(), gpu_cores=None, bandwidth_gbs=None)
        info.update(blas=describe_blas(), blas_core=BLAS["core"])
    if info["backend"] == "cuda":
        try:
            info["gpu"] = mx.device_info().get("device_name")
        except Exception:  # device_info is best-effort across MLX versions
            pass
    return info


def set_wired_limit(nbytes: int) -> int | None:
    """On Metal keep `nbytes` of weights resident (target + draft); returns the old limit."""
    import mlx.core as mx

    if backend() != "metal":
        return None
    limit = min(nbytes, mx.device_info()["max_recommended_working_set_size"])
    return mx.set_wired_limit(limit)
