"""Sanity figure of the decode engine on a real pair: plain vs mlx-spec vs mlx-lm, one prompt.

    python3 benchmarks/sanity_pair.py [--max-tokens 96] [--repeats 2]

Same process, arms interleaved after warm-up, greedy, outputs checked identical
(docs/benchmarking.md). Needs `mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

import argparse
import time

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
from mlx_spec.bench import Arm, Bench, run_suite, write_result
from mlx_spec.loading import load_model
from mlx_spec.pair import Pair

PROMPT = {"code": [{"id": "quicksort", "prompt": "Write a quicksort function in Python. Code only."}]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Qwen/Qwen2.5-Coder-1.5B-Instruct")
    parser.add_argument("--draft", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/sanity-qwen2.5-coder-1.5b-cpu.json")
    args = parser.parse_args()
    target, draft = load_model(args.target), load_model(args.draft)
    tic = time.perf_counter()
    Pair(target.model, target.tokenizer, draft=draft.model, target_name=target.name,
         draft_name=draft.name, target_bytes=target.nbytes)  # calibrates once (cached)
    print(f"calibration (or cache lookup): {time.perf_counter() - tic:.1f} s")
    arms = [
        Arm("plain", "plain"),
        Arm("mlx-lm plain", "mlx-lm", 0),
        Arm("mlx-spec adaptive", "spec", None, ngram=True),
        Arm("mlx-spec k=4", "spec", 4),
        Arm("mlx-lm k=3", "mlx-lm", 3),
    ]
    bench = Bench(target, draft, arms, max_tokens=args.max_tokens)
    result = run_suite(bench, PROMPT, temperatures=(0.0,), repeats=args.repeats, on_progress=print)
    write_result(result, args.out)
    for arm, v in result["summary"]["0.0"]["code"].items():
        print(f"{arm:20s} {v['tps']:.2f} tok/s  speed-up {v['speedup']:.2f}x  tau {v['tau'] or 0:.2f}")
    print("greedy mismatches:", result["greedy_mismatches"] or "none")


if __name__ == "__main__":
    main()
