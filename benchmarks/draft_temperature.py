"""Would a draft sampled at another temperature be accepted more often? Measured, not guessed.

    python3 benchmarks/draft_temperature.py [--prompts-per-category 2] [--temperature 0.7]

Rejection sampling stays lossless for any proposal distribution q the draft really draws
from, so the draft could sample at a temperature T' of its own while the target samples at T.
A draft token is accepted with probability sum_x min(p(x), q(x)) (p: the target's
distribution). For each prompt the target's reply is sampled at T (by mlx-spec, which samples
as plain decoding does), then both models read prompt + reply in one forward and the expected
acceptance of every reply position is computed for each T'. Prints it per prompt and over all
positions, with the rate at which the draft's first choice is the target's (greedy). Needs
`mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

import argparse

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import numpy as np

from mlx_spec import load_pair
from mlx_spec.bench import CATEGORIES, load_prompts

DRAFT_TEMPERATURES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def reply_logits(model, tokens: list[int], start: int, vocab: int) -> mx.array:
    """Float32 logits predicting tokens[start:], cut or padded (-inf) to `vocab` columns."""
    logits = model(mx.array(tokens)[None])[0, start - 1 : -1].astype(mx.float32)
    width = logits.shape[-1]
    if width >= vocab:
        return logits[:, :vocab]
    return mx.concatenate([logits, mx.full((logits.shape[0], vocab - width), -mx.inf)], axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-per-category", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.7, help="the target's")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pair = load_pair("qwen2.5-coder-1.5b")
    header = " ".join(f"T'={t:<4}" for t in DRAFT_TEMPERATURES)
    print(f"{'category':9s} {'prompt':14s} {'tokens':>6s} {'greedy':>6s}  {header}")
    columns = {t: [] for t in DRAFT_TEMPERATURES}
    for category, prompts in load_prompts(CATEGORIES, args.prompts_per_category).items():
        for item in prompts:
            prompt = pair.encode(item["prompt"])
            reply = pair.generate(prompt, temperature=args.temperature, seed=args.seed,
                                  max_tokens=args.max_tokens).tokens
            tokens = prompt + list(reply)
            target = reply_logits(pair.target, tokens, len(prompt), pair.target.args.vocab_size)
            draft = reply_logits(pair.draft, tokens, len(prompt), target.shape[-1])
            p = mx.softmax(target / args.temperature, axis=-1)
            greedy = (mx.argmax(target, -1) == mx.argmax(draft, -1)).astype(mx.float32).mean().item()
            row = []
            for t in DRAFT_TEMPERATURES:
                accepted = np.array(mx.minimum(p, mx.softmax(draft / t, axis=-1)).sum(-1))
                columns[t].append(accepted)
                row.append(f"{accepted.mean():7.3f}")
            print(f"{category:9s} {item['id']:14s} {len(reply):6d} {greedy:6.2f}  {' '.join(row)}", flush=True)
    total = " ".join(f"{np.concatenate(columns[t]).mean():7.4f}" for t in DRAFT_TEMPERATURES)
    print(f"{'all':9s} {'':14s} {'':6s} {'':6s}  {total}")


if __name__ == "__main__":
    main()
