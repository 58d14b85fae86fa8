"""Put OpenBLAS in front of MLX's bundled reference BLAS on the Linux CPU backend.

Must run before `mlx.core` is first imported: MLX's `cblas_sgemm` calls then resolve to
OpenBLAS (docs/platform.md: 4-6x faster, and batched matmuls stop costing linearly in T).
"""

import ctypes
import ctypes.util
import os
import sys

BLAS = {"library": None, "loaded": False}


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
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        BLAS.update(library=name, loaded=True)
        return
    BLAS["library"] = "reference BLAS (install libopenblas0-pthread for speed)"
