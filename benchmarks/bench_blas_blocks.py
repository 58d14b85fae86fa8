"""One matrix product against the same product split into blocks of rows, on this machine's BLAS.

    python3 benchmarks/bench_blas_blocks.py [--repeats 9] [--rows 2048]

A finding about the CPU backend, not a feature: MLX sends every product to `cblas_sgemm`, and
Debian's OpenBLAS 0.3.21 runs a product with few rows (plain decoding feeds one) below the
memory bandwidth; one product per block of weight rows runs faster, more so at one row than at
16. The shapes are Qwen2.5-Coder-1.5B's MLP matrices and output layer (random float32 weights,
eight MLP matrices in turn so that they stream from memory as in a forward). Both arms in one
process, interleaved after a warm-up; medians in milliseconds and the median of the per-pair
ratios. Needs no model.
"""

import argparse
import statistics
import time

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx

SHAPES = {"mlp 8960x1536": (8960, 1536, 8), "output 151936x1536": (151936, 1536, 1)}


def seconds(fn) -> float:
    tic = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rows", type=int, default=2048, help="weight rows per block")
    args = parser.parse_args()
    print(f"{'matrix':20s} {'tokens':>6s} {'one product':>12s} {'blocks':>8s} {'ratio':>6s}")
    for name, (out_dim, in_dim, count) in SHAPES.items():
        weights = [mx.random.normal((out_dim, in_dim)) for _ in range(count)]
        blocks = [[w[i:i + args.rows] for i in range(0, out_dim, args.rows)] for w in weights]
        blocks = [[mx.contiguous(b) for b in bs] for bs in blocks]
        mx.eval(weights, blocks)
        for tokens in (1, 4, 16):
            x = mx.random.normal((tokens, in_dim))
            one = lambda: [x @ w.T for w in weights]  # noqa: E731
            split = lambda: [mx.concatenate([x @ b.T for b in bs], axis=-1) for bs in blocks]  # noqa: E731
            seconds(one), seconds(split)
            a, b = [], []
            for _ in range(args.repeats):
                a.append(seconds(one) / count)
                b.append(seconds(split) / count)
            ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
            ratio = statistics.median(y / x for x, y in zip(a, b))
            print(f"{name:20s} {tokens:6d} {ma:10.2f}ms {mb:6.2f}ms {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
