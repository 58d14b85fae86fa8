"""The engine's verification as in another decode.py (A) against the current one (B), on the
same pair in one process, interleaved (the order alternating per repeat), the tokens checked
equal; with --rows, also the row scoring alone on random logits.

    python3 benchmarks/decode_ab.py TEMP PROMPT_IDS REPEATS --reference FILE [--plain] [--rows]

FILE: e.g. `git show a1ed1ca:mlx_spec/decode.py > /tmp/decode_a.py` (the verification before
it read the argmax of the logits). Swaps `Engine._verify` and `Engine._after_siblings` only;
prints each run's seconds and B's speed over A's, then the median per prompt and arm (the
adaptive pair, and plain decoding with --plain). --rows times, on rows of 151,936 random
logits (1, 4, 16), the greedy argmax of log-probabilities against that of the logits, and
invariant sampling's perturbed probabilities against `coupling.token_scores`. Needs
`mlx-spec models pull qwen2.5-coder-1.5b` first.
"""
import argparse
import importlib.util
import statistics
import sys
import time

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx

import mlx_spec.decode as current
from mlx_spec.bench import prompts_by_id
from mlx_spec.coupling import perturbed, position_noise, token_scores
from mlx_spec.pair import load_pair
from mlx_spec.sampling import SamplingParams, probabilities


def time_rows(repeats: int = 15) -> None:
    vocab = 151_936
    for rows in (1, 4, 16):
        x = mx.random.normal((rows, vocab)) * 3
        sampling = SamplingParams(temperature=0.7, seed=3)
        mx.eval(x, *[position_noise(3, p, vocab) for p in range(rows)])
        variants = {
            "greedy log-probs": lambda: mx.argmax(x - mx.logsumexp(x, axis=-1, keepdims=True), axis=-1),
            "greedy logits": lambda: mx.argmax(x, axis=-1),
            "invariant perturbed(probabilities)": lambda: mx.argmax(perturbed(probabilities(x, sampling), 3, range(rows)), axis=-1),
            "invariant token_scores": lambda: mx.argmax(token_scores(x, sampling, range(rows)), axis=-1),
        }
        seconds = {name: [] for name in variants}
        for _ in range(repeats):
            for name, f in variants.items():
                tic = time.perf_counter()
                mx.eval(f())
                seconds[name].append(time.perf_counter() - tic)
        print(rows, "rows:", ", ".join(f"{name} {statistics.median(v) * 1e3:.1f} ms" for name, v in seconds.items()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("temperature", type=float)
    parser.add_argument("prompts", help="prompt ids, comma-separated")
    parser.add_argument("repeats", type=int)
    parser.add_argument("--reference", required=True, help="another decode.py (arm A)")
    parser.add_argument("--plain", action="store_true", help="also plain decoding, A against B")
    parser.add_argument("--rows", action="store_true", help="also time the row scoring alone")
    args = parser.parse_args()
    if args.rows:
        time_rows()
    spec = importlib.util.spec_from_file_location("decode_reference", args.reference)
    reference = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = reference  # dataclasses look their module up
    spec.loader.exec_module(reference)
    arms = {name: (module.Engine._verify, staticmethod(module.Engine._after_siblings))
            for name, module in (("A", reference), ("B", current))}
    pairs = {"spec": load_pair("qwen2.5-coder-1.5b")}
    if args.plain:
        pairs["plain"] = load_pair("qwen2.5-coder-1.5b", draft="none", ngram=False)
    prompts = prompts_by_id()
    ratios: dict[tuple, list] = {}
    for pid in args.prompts.split(","):
        ids = pairs["spec"].encode(prompts[pid])
        for repeat in range(args.repeats):
            runs = {}
            for arm in ("A", "B") if repeat % 2 == 0 else ("B", "A"):
                current.Engine._verify, current.Engine._after_siblings = arms[arm]
                for name, pair in pairs.items():
                    pair.reset()
                    tic, tokens = time.perf_counter(), []
                    for step in pair.stream(ids, max_tokens=128, temperature=args.temperature, seed=7):
                        tokens += step.tokens
                    runs[name, arm] = (tokens, time.perf_counter() - tic)
            if len({tuple(tokens) for tokens, _ in runs.values()}) != 1:
                raise SystemExit(f"{pid}: the arms decoded different texts")
            for name in pairs:
                (_, a), (_, b) = runs[name, "A"], runs[name, "B"]
                ratios.setdefault((pid, name), []).append(a / b)
                print(f"{pid} {name} repeat {repeat}: A {a:.2f} s, B {b:.2f} s, B's speed over A's {a / b:.3f}", flush=True)
    for (pid, name), values in ratios.items():
        print(f"{pid} {name}: median {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
