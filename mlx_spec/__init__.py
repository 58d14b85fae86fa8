"""mlx-spec: lossless speculative decoding on MLX.

OpenBLAS is loaded before anything imports `mlx.core` (Linux CPU backend only). The API
(`load_pair`, `Pair`, `Stats`, `SamplingParams`) is imported lazily so the CLI starts fast.
"""

from mlx_spec._blas import load_openblas

load_openblas()

from mlx_spec.errors import SpecError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SpecError", "load_pair", "Pair", "Stats", "SamplingParams", "__version__"]

_LAZY = {"load_pair": "mlx_spec.pair", "Pair": "mlx_spec.pair", "Stats": "mlx_spec.stats",
         "SamplingParams": "mlx_spec.sampling"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlx_spec' has no attribute {name!r}")
