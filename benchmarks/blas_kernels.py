"""OpenBLAS's kernels (its core types) on this CPU: are their products right, and what do they cost?

    python3 benchmarks/blas_kernels.py [CORE ...]     e.g. Haswell SkylakeX default

OpenBLAS picks its kernels when it loads (or takes OPENBLAS_CORETYPE), so each core type runs
in a process of its own; "default" is OpenBLAS's own pick (OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset). Each child checks `x @ W.T` in float32 against float64 numpy for the
shapes of the Qwen2.5-Coder pair (rows 1 to 48) and times, with MLX, a target MLP matrix
(8960 x 1536, eight in turn) and the output layer (151,936 x 1536) at 1 to 32 rows; medians in
ms, and each cost as a share of the one-row product. Needs no model.
"""

import statistics
import subprocess
import sys
import time

from mlx_spec._blas import unpinned_environ

SHAPES = [(8960, 1536), (1536, 8960), (256, 1536), (1536, 1536), (4864, 896), (896, 4864), (32768, 896)]
CHECK_ROWS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 24, 32, 48)
TIMED = {"mlp 8960x1536": (8960, 1536, 8), "output 151936x1536": (151936, 1536, 1)}
TIMED_ROWS = (1, 2, 4, 8, 16, 32)


def child() -> None:
    import numpy as np

    import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
    import mlx.core as mx
    from mlx_spec._blas import describe

    rng = np.random.default_rng(0)
    worst = 0.0
    for n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        for rows in CHECK_ROWS:
            x = rng.standard_normal((rows, k)).astype(np.float32)
            want = x.astype(np.float64) @ w.astype(np.float64).T
            got = np.array(mx.array(x) @ mx.array(w).T).astype(np.float64)
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    print(f"{describe()}: worst relative error against float64 {worst:.1e}", flush=True)

    def seconds(fn) -> float:
        tic = time.perf_counter()
        mx.eval(fn())
        return time.perf_counter() - tic

    for name, (n, k, count) in TIMED.items():
        weights = [mx.random.normal((n, k)) for _ in range(count)]
        mx.eval(weights)
        cells, one = [], None
        for rows in TIMED_ROWS:
            x = mx.random.normal((rows, k))
            product = lambda: [x @ w.T for w in weights]  # noqa: E731
            seconds(product)
            ms = statistics.median(seconds(product) / count for _ in range(7)) * 1e3
            one = one or ms
            cells.append(f"{rows}: {ms:6.2f} ({ms / one:.2f})")
        print(f"  {name:20s} " + "  ".join(cells), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child()
    for core in sys.argv[1:] or ["Haswell", "SkylakeX", "default"]:
        env = unpinned_environ()
        if core != "default":
            env["OPENBLAS_CORETYPE"] = core
        print(f"== {core}", flush=True)
        subprocess.run([sys.executable, __file__, "--child"], env=env, check=False)


if __name__ == "__main__":
    main()
