"""Put OpenBLAS in front of MLX's bundled reference BLAS on the Linux CPU backend.

Must run before `mlx.core` is first imported: MLX's `cblas_sgemm` calls then resolve to
OpenBLAS (../shared/docs/platform.md: 4-6x faster, and batched matmuls stop costing linearly in T).
Which kernels OpenBLAS runs (its core type: its own pick for the CPU, or OPENBLAS_CORETYPE's)
is recorded too: on one CPU they change what a verification costs against a plain step.
"""

import ctypes
import ctypes.util
import os
import subprocess
import sys

BLAS = {"library": None, "loaded": False, "core": None}


def load_openblas() -> None:
    if sys.platform != "linux" or os.environ.get("MLX_SPEC_NO_OPENBLAS"):
        return
    if "mlx.core" in sys.modules:
        # Too late to interpose; record what happened so `doctor` can say so.
        BLAS["library"] = "mlx imported before mlx_spec: bundled reference BLAS"
        return
    candidates = [ctypes.util.find_library("openblas"), "libopenblas.so.0", "libopenblas.so"]
    for name in filter(None, candidates):
        try:
            library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        BLAS.update(library=name, loaded=True, core=core_name(library))
        return
    BLAS["library"] = "reference BLAS (install libopenblas0-pthread for speed)"


def core_name(library) -> str | None:
    """OpenBLAS's core type (the kernels it runs, e.g. "Haswell"), None if it cannot say."""
    try:
        library.openblas_get_corename.restype = ctypes.c_char_p
        return library.openblas_get_corename().decode() or None
    except (AttributeError, UnicodeDecodeError):
        return None


def describe() -> str:
    """The BLAS in one line, e.g. "libopenblas.so.0 (Haswell kernels)"."""
    if not BLAS["loaded"]:
        return BLAS["library"] or "bundled reference BLAS"
    return f"{BLAS['library']} ({BLAS['core']} kernels)" if BLAS["core"] else BLAS["library"]


PIN = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # what this workplace sets to pin the kernels


def unpinned_environ() -> dict:
    """This process's environment without the variables that pin OpenBLAS's kernels."""
    return {k: v for k, v in os.environ.items() if k not in PIN}


def own_pick(library: str) -> str | None:
    """The kernels OpenBLAS picks for this CPU by itself (PIN unset), asked of a fresh process
    running this file: it picks once, when it loads."""
    try:
        done = subprocess.run([sys.executable, __file__, library], env=unpinned_environ(),
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


if __name__ == "__main__":  # own_pick's child: the core type of the library named
    print(core_name(ctypes.CDLL(sys.argv[1])) or "")
