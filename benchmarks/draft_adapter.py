"""Can a small adapter on the draft's last hidden state make it agree with the target more?

    python3 benchmarks/draft_adapter.py [--chunks 64] [--rank 4] [--lr 2e-4] [--epochs 2]

The target's greedy choice at every position of `--chunks` 256-token pieces of Python's standard
library (one random piece per file) is the label; the draft's last hidden state h (after its
final norm) is the input; an adapter h + (h A) B of rank `--rank` (B starts at zero, so the
draft starts unchanged) is fitted by cross-entropy through the draft's own output layer, the
draft frozen. Three quarters of the pieces train it; the rest, and the target's greedy replies
to 2 bench prompts per category (chat template, 128 tokens), measure the rate at which the
draft's first choice is the target's, before and after each epoch. A draft changed this way
stays lossless (the target verifies every token); the question is only whether it agrees more.
The hidden states and labels are cached in `--cache` (the target's forwards take minutes).
Needs `mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

import argparse
import glob
import os
import pickle
import random
import sys
import time

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_spec import load_pair
from mlx_spec.bench import CATEGORIES, load_prompts
from mlx_spec.draft_head import as_function, output_layer

PIECE = 256


class Adapter(nn.Module):
    """h + (h A) B: a low-rank correction of the draft's last hidden state."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.a = mx.random.normal((dim, rank)) * dim ** -0.5
        self.b = mx.zeros((rank, dim))

    def __call__(self, h: mx.array) -> mx.array:
        return h + (h @ self.a) @ self.b


def library_pieces(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """One random PIECE-token piece from each of `count` shuffled standard-library files."""
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True))
    random.Random(seed).shuffle(files)
    pick, pieces = random.Random(seed + 1), []
    for path in files:
        try:
            ids = tokenizer.encode(open(path, encoding="utf-8").read())
        except (OSError, UnicodeDecodeError):
            continue
        if len(ids) >= PIECE:
            start = pick.randrange(len(ids) - PIECE + 1)
            pieces.append(ids[start : start + PIECE])
        if len(pieces) == count:
            break
    return pieces


def read(pair, tokens: list[int], start: int) -> tuple[np.ndarray, np.ndarray]:
    """The draft's last hidden states and the target's greedy choices predicting tokens[start:]."""
    x = mx.array(tokens)[None]
    labels = mx.argmax(pair.target(x)[0, start - 1 : -1], -1)
    hidden = pair.draft.model(x)[0, start - 1 : -1]
    return np.array(hidden), np.array(labels)


def collect(pair, chunks: int) -> tuple[list, list]:
    library = [read(pair, piece, 1) for piece in library_pieces(pair.tokenizer, chunks)]
    replies = []
    for category, prompts in load_prompts(CATEGORIES, 2).items():
        for item in prompts:
            prompt = pair.encode(item["prompt"])
            tokens = prompt + list(pair.generate(prompt, temperature=0.0, max_tokens=128).tokens)
            replies.append((category, *read(pair, tokens, len(prompt))))
        print(f"  read {category}", file=sys.stderr, flush=True)
    return library, replies


def agreement(head, adapter, hidden: np.ndarray, labels: np.ndarray) -> float:
    hits = []
    for s in range(0, len(hidden), 512):
        h = mx.array(hidden[s : s + 512])
        h = adapter(h) if adapter is not None else h
        hits.append(np.array(mx.argmax(head(h), -1)) == labels[s : s + 512])
    return float(np.concatenate(hits).mean())


def fit(adapter: Adapter, head, hidden: np.ndarray, labels: np.ndarray, lr: float, epochs: int,
        batch: int = 256):
    """Fit the adapter by cross-entropy through `head`, the draft frozen; yields after each epoch."""
    optimizer = optim.Adam(learning_rate=lr)
    step = nn.value_and_grad(adapter, lambda m, h, y: nn.losses.cross_entropy(head(m(h)), y).mean())
    for epoch in range(epochs):
        order, started = np.random.default_rng(epoch).permutation(len(hidden)), time.time()
        for s in range(0, len(order), batch):
            chosen = order[s : s + batch]
            _, grads = step(adapter, mx.array(hidden[chosen]), mx.array(labels[chosen]))
            optimizer.update(adapter, grads)
            mx.eval(adapter.parameters(), optimizer.state)
        print(f"  epoch {epoch + 1}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        yield epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/mlx-spec-draft-adapter.pkl")
    args = parser.parse_args()
    pair = load_pair("qwen2.5-coder-1.5b")
    if os.path.exists(args.cache):
        library, replies = pickle.load(open(args.cache, "rb"))
    else:
        library, replies = collect(pair, args.chunks)
        pickle.dump((library, replies), open(args.cache, "wb"))
    split = len(library) * 3 // 4
    train_h, train_y = (np.concatenate([p[i] for p in library[:split]]) for i in (0, 1))
    held_h, held_y = (np.concatenate([p[i] for p in library[split:]]) for i in (0, 1))
    categories = list(dict.fromkeys(c for c, *_ in replies))
    by_category = {c: [np.concatenate([r[i] for r in replies if r[0] == c]) for i in (1, 2)]
                   for c in categories}
    head = as_function(output_layer(pair.draft))

    print("| adapter | train | held-out library | " + " | ".join(categories) + " |")
    print("|---|---|---|" + "---|" * len(categories))

    def row(adapter, name):
        cells = [agreement(head, adapter, train_h, train_y), agreement(head, adapter, held_h, held_y)]
        cells += [agreement(head, adapter, *by_category[c]) for c in categories]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in cells) + " |", flush=True)

    row(None, "none")
    mx.random.seed(0)
    adapter = Adapter(train_h.shape[1], args.rank)
    for epoch in fit(adapter, head, train_h, train_y, args.lr, args.epochs):
        row(adapter, f"rank {args.rank}, epoch {epoch + 1}")


if __name__ == "__main__":
    main()
