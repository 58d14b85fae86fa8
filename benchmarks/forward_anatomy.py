"""Where one decoding forward's time goes: matrix products against attention and rotary embedding.

    python3 benchmarks/forward_anatomy.py [--context 300] [--repeats 15] [--md FILE]

For the draft and the target of a pair, at a cache of `--context` tokens: a forward of 1 token
(and of 16 for the target: a verification), the same forward with the attention kernel
(`scaled_dot_product_attention`) or the rotary embedding replaced by an identity (what each
costs is the difference), and the layers' matrix products alone at the same rows in one
graph. The variants run interleaved after a warm-up; each figure is a median. Ablated forwards
compute nonsense and are only timed; the model is restored after each. Needs
`mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from mlx_spec.loading import load_model

PARTS = ("attention", "rope")


def _attentions(model):
    return [layer.self_attn for layer in model.model.layers]


@contextmanager
def ablated(model, part: str | None):
    """`model` with `part` ("attention": the attention kernel returns its queries; "rope":
    the rotary embedding returns its input) replaced by an identity; restored on exit."""
    attentions = _attentions(model)
    if part is None:
        yield
    elif part == "attention":
        modules = {sys.modules[type(a).__module__] for a in attentions}
        saved = {m: m.scaled_dot_product_attention for m in modules}
        for m in modules:
            m.scaled_dot_product_attention = lambda queries, *args, **kwargs: queries
        try:
            yield
        finally:
            for m, function in saved.items():
                m.scaled_dot_product_attention = function
    elif part == "rope":
        saved = [a.rope for a in attentions]
        for a in attentions:
            a.rope = lambda x, offset=0: x
        try:
            yield
        finally:
            for a, rope in zip(attentions, saved):
                a.rope = rope
    else:
        raise ValueError(f"unknown part {part!r}: one of {PARTS}")


def layer_weights(model) -> list[mx.array]:
    """The weights of every linear layer inside the transformer blocks."""
    weights = []
    for layer in model.model.layers:
        for name, module in layer.named_modules():
            weight = getattr(module, "weight", None)
            if name and weight is not None and weight.ndim == 2:
                weights.append(weight)
    return weights


def forward_seconds(model, cache, rows: int) -> float:
    """One forward of `rows` tokens through the blocks (no output layer), the cache trimmed back."""
    tokens = mx.ones((1, rows), dtype=mx.int32)
    tic = time.perf_counter()
    mx.eval(model.model(tokens, cache=cache))
    seconds = time.perf_counter() - tic
    for c in cache:
        c.trim(rows)
    return seconds


def products_seconds(weights: list[mx.array], inputs: dict[int, mx.array]) -> float:
    """The blocks' matrix products at the given rows, in one graph."""
    tic = time.perf_counter()
    mx.eval([inputs[w.shape[1]] @ w.T for w in weights])
    return time.perf_counter() - tic


def anatomy(model, context: int, rows: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of the whole forward, of each ablated one, and of the products."""
    cache = make_prompt_cache(model)
    mx.eval(model.model(mx.ones((1, context), dtype=mx.int32), cache=cache))
    weights = layer_weights(model)
    inputs = {w.shape[1]: mx.random.normal((rows, w.shape[1])) for w in weights}
    mx.eval(list(inputs.values()))
    variants = [None, *PARTS]
    times: dict[str, list[float]] = {"whole": [], **{p: [] for p in PARTS}, "products": []}
    for rep in range(repeats + 2):  # two warm-up rounds
        for part in variants:
            with ablated(model, part):
                seconds = forward_seconds(model, cache, rows)
            if rep >= 2:
                times[part or "whole"].append(seconds)
        seconds = products_seconds(weights, inputs)
        if rep >= 2:
            times["products"].append(seconds)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| forward | whole | matrix products | attention kernel | rotary embedding | rest |",
             "|---|---|---|---|---|---|"]
    for label, ms in rows:
        attention, rope = ms["whole"] - ms["attention"], ms["whole"] - ms["rope"]
        rest = ms["whole"] - ms["products"] - attention - rope

        def cell(x):
            return f"{x:.1f} ms ({x / ms['whole']:.0%})"

        lines.append(f"| {label} | {ms['whole']:.1f} ms | {cell(ms['products'])} | "
                     f"{cell(attention)} | {cell(rope)} | {cell(rest)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Qwen/Qwen2.5-Coder-1.5B-Instruct")
    parser.add_argument("--draft", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--md", help="also write the table to this markdown file")
    args = parser.parse_args()
    rows = []
    for role, ref, sizes in (("draft", args.draft, (1,)), ("target", args.target, (1, 16))):
        loaded = load_model(ref)
        for size in sizes:
            label = f"{role}, {size} token{'s' if size > 1 else ''}"
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            rows.append((label, anatomy(loaded.model, args.context, size, args.repeats)))
        del loaded
    text = table(rows)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
