"""One draft step with the full output layer vs the subset head (mlx_spec/draft_head.py).

    python3 benchmarks/bench_draft_head.py [--repeats 12]

Both arms in one process, interleaved (A B A B ...) after a warm-up, same cache length; the
figure is the median of the per-pair ratios. Also reports the subset's size and how many
tokens of the standard library's Python source it covers. Needs
`mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

import argparse
import json
import statistics
import sysconfig
import time
from pathlib import Path

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from mlx_spec.loading import load_model
from mlx_spec.pair import draft_head, vocab_size


def step_seconds(model, cache, head=None) -> float:
    tic = time.perf_counter()
    token = mx.ones((1, 1), dtype=mx.int32)
    if head is None:
        logits = model(token, cache=cache)[:, -1]
    else:
        logits = head.logits(model.model(token, cache=cache)[:, -1])
    mx.eval(mx.argmax(logits, axis=-1))
    for c in cache:
        c.trim(1)
    return time.perf_counter() - tic


def stdlib_coverage(tokenizer, ids: set[int], limit_chars: int = 2_000_000) -> float:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    text = "".join(f.read_text(errors="ignore") for f in files)[:limit_chars]
    tokens = tokenizer.encode(text)
    return sum(t in ids for t in tokens) / len(tokens)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--draft", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/draft-head-cpu.json")
    args = parser.parse_args()
    draft = load_model(args.draft)
    vocab = vocab_size(draft.model)
    head = draft_head(draft.model, draft.tokenizer, vocab)
    if head is None:
        raise SystemExit("this draft gets no subset head (structure, or the subset saves too little)")
    cache = make_prompt_cache(draft.model)
    mx.eval(draft.model(mx.zeros((1, args.context), dtype=mx.int32), cache=cache))
    for _ in range(2):  # warm-up
        step_seconds(draft.model, cache), step_seconds(draft.model, cache, head)
    full, subset = [], []
    for _ in range(args.repeats):
        full.append(step_seconds(draft.model, cache))
        subset.append(step_seconds(draft.model, cache, head))
    ratios = [s / f for f, s in zip(full, subset)]
    result = {
        "draft": draft.name, "dtype": draft.dtype, "vocab": vocab, "subset": len(head.base_ids),
        "stdlib_coverage": stdlib_coverage(draft.tokenizer, set(head.base_ids)),
        "full_step_ms": 1000 * statistics.median(full), "subset_step_ms": 1000 * statistics.median(subset),
        "subset_over_full": statistics.median(ratios), "repeats": args.repeats, "context": args.context,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
