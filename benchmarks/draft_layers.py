"""Would a draft with a layer left out pay? Its agreement with the target, and the ceiling.

    python3 benchmarks/draft_layers.py [--prompts-per-category 2]

A draft with fewer layers costs less per step and stays lossless (the target verifies every
token), but agrees with the target less often. For each prompt the target's greedy reply is
decoded, then the draft reads prompt + reply in one forward, once whole and once with each of
its layers left out, and the rate at which its first choice is the target's is counted per
category. Prints a markdown table: per layer left out, the draft step's price (a share of the
whole draft's) and per category the agreement with the drafting ceiling at it. The draft's step
cost with a layer left out is priced by the weights it reads (the layers and the subset output
layer), and the drafting ceiling of this machine's calibration (`Costs.ceiling`, the best k at
an acceptance rate) is compared at each category's rate. Needs `mlx-spec models pull
qwen2.5-coder-1.5b` first.
"""

import argparse

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_spec import load_pair
from mlx_spec.bench import CATEGORIES, load_prompts
from mlx_spec.draft_head import ascii_token_ids, output_layer
from mlx_spec.policy import Costs


def weights(module) -> int:
    return sum(v.size for _, v in tree_flatten(module.parameters()))


def agreement(draft, layers, skip, replies) -> dict[str, float]:
    """Per category: the share of reply positions where the draft's first choice is the target's."""
    draft.model.layers = [layer for i, layer in enumerate(layers) if i != skip]
    hits: dict[str, list] = {}
    try:
        for category, tokens, start, target in replies:
            choice = mx.argmax(draft(mx.array(tokens)[None])[0, start - 1 : -1], -1)
            hits.setdefault(category, []).append(np.array(choice) == target)
    finally:
        draft.model.layers = layers
    return {c: float(np.concatenate(h).mean()) for c, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-per-category", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    pair = load_pair("qwen2.5-coder-1.5b")
    draft, layers = pair.draft, list(pair.draft.model.layers)
    costs = pair.engine.policy.calibration  # the pair's, its draft timed as it runs
    rows, width = output_layer(draft).weight.shape
    read = [weights(layer) for layer in layers]
    total = sum(read) + len(ascii_token_ids(pair.tokenizer, rows)) * width

    replies = []
    for category, prompts in load_prompts(CATEGORIES, args.prompts_per_category).items():
        for item in prompts:
            prompt = pair.encode(item["prompt"])
            tokens = prompt + list(pair.generate(prompt, temperature=0.0, max_tokens=args.max_tokens).tokens)
            target = mx.argmax(pair.target(mx.array(tokens)[None])[0, len(prompt) - 1 : -1], -1)
            replies.append((category, tokens, len(prompt), np.array(target)))

    categories = list(dict.fromkeys(c for c, *_ in replies))
    print("| layer left out | draft step | " + " | ".join(categories) + " |")
    print("|---|---|" + "---|" * len(categories))
    for skip in [None, *range(len(layers))]:
        rate = agreement(draft, layers, skip, replies)
        step = 1.0 if skip is None else 1 - read[skip] / total
        priced = Costs(costs.draft_step * step, costs.verify, costs.verify_tokens)
        cells = " | ".join(f"{rate[c]:.3f} ({priced.ceiling(rate[c])[0]:.2f}×)" for c in categories)
        print(f"| {'none' if skip is None else skip} | {step:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
