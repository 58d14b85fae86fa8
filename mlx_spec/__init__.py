"""mlx-spec: lossless speculative decoding on MLX.

OpenBLAS is loaded before anything imports `mlx.core` (Linux CPU backend only).
"""

from mlx_spec._blas import load_openblas

load_openblas()

from mlx_spec.errors import SpecError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SpecError", "__version__"]
