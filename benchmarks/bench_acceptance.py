"""Micro-benchmark: time of the acceptance step per round, custom kernel vs the MLX reference.

V = 151,936 (Qwen2.5), k in {4, 8, 16}, greedy and sampled (with and without q). Every draft
matches the target's argmax, so the greedy kernel reads all k + 1 rows (its slowest case).
Usage: python3 benchmarks/bench_acceptance.py [--runs N] [--out FILE]; writes
results/acceptance-<backend>.json (the recorded result) unless --out names another file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx_spec  # noqa: F401  (loads OpenBLAS before MLX does any work)

import mlx.core as mx  # noqa: E402

from mlx_spec import kernels, platform  # noqa: E402
from mlx_spec.acceptance import accept_greedy, accept_sampled  # noqa: E402

VOCAB = 151_936
KS = (4, 8, 16)
RESULTS = Path(__file__).resolve().parent / "results"


def round_inputs(k: int, dtype: mx.Dtype) -> dict:
    """One round's verify outputs: target logits/probs, draft probs, argmax drafts, uniforms."""
    logits = mx.random.normal((k + 1, VOCAB), key=mx.random.key(k)) * 3
    draft_logits = logits[:k] + mx.random.normal((k, VOCAB), key=mx.random.key(100 + k))
    inputs = {
        "logits": logits.astype(dtype),
        "p": mx.softmax(logits, axis=-1).astype(dtype),
        "q": mx.softmax(draft_logits, axis=-1).astype(dtype),
        "drafts": mx.argmax(logits[:k], axis=-1).astype(mx.int32),
        "u": mx.random.uniform(shape=(k + 1,), key=mx.random.key(200 + k)),
    }
    mx.eval(*inputs.values())
    return inputs


def time_call(fn, runs: int, warmup: int = 10) -> dict:
    """Median / p10 / p90 microseconds of fn() including evaluation of its (n, extra)."""
    for _ in range(warmup):
        mx.eval(*fn())
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        mx.eval(*fn())
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 1),
        "p10_us": round(samples[len(samples) // 10], 1),
        "p90_us": round(samples[(9 * len(samples)) // 10], 1),
        "runs": runs,
    }


def cases(x: dict) -> dict:
    """The acceptance step's variants, each as (reference call, kernel call or None)."""
    greedy_kernel, sampled_kernel = kernels.get_kernel(True), kernels.get_kernel(False)

    def pair(ref, kern, *args):
        return (lambda: ref(*args)), (None if kern is None else (lambda: kern(*args)))

    return {
        "greedy": pair(accept_greedy, greedy_kernel, x["logits"], x["drafts"]),
        "sampled": pair(accept_sampled, sampled_kernel, x["p"], x["q"], x["drafts"], x["u"]),
        "sampled_no_q": pair(accept_sampled, sampled_kernel, x["p"], None, x["drafts"], x["u"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, help="result JSON (default: results/acceptance-<backend>.json)")
    args = parser.parse_args()

    backend = platform.backend()
    dtype = getattr(mx, platform.default_dtype())
    rows = []
    for k in KS:
        x = round_inputs(k, dtype)
        for variant, (ref, kern) in cases(x).items():
            row = {"variant": variant, "k": k, "vocab": VOCAB, "dtype": str(dtype),
                   "reference": time_call(ref, args.runs)}
            if kern is not None:
                row["kernel"] = time_call(kern, args.runs)
                assert [a.item() for a in kern()] == [a.item() for a in ref()], "kernel != ref"
            rows.append(row)

    print(f"acceptance step per round, V = {VOCAB:,}, {dtype}, backend {backend}: "
          f"{kernels.backend_kernel_name()}")
    print(f"{'variant':<14}{'k':>4}{'reference µs':>15}{'kernel µs':>12}{'speed-up':>10}")
    for r in rows:
        ref_us = r["reference"]["median_us"]
        kern_us = r.get("kernel", {}).get("median_us")
        if kern_us:
            kern_txt = f"{kern_us:>12.1f}{ref_us / kern_us:>9.1f}x"
        else:
            kern_txt = f"{'—':>12}{'—':>10}"
        print(f"{r['variant']:<14}{r['k']:>4}{ref_us:>15.1f}{kern_txt}")

    out = args.out or RESULTS / f"acceptance-{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "acceptance", "machine": platform.machine(),
              "implementation": kernels.backend_kernel_name(), "results": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
