"""Would a draft tree pay here? Replay greedy replies through a chain and through best-first
draft trees at host H's prices.

    python3 benchmarks/draft_tree_sim.py collect story,letter,quicksort --out DIR   # ~40 s a prompt
    python3 benchmarks/draft_tree_sim.py replay DIR

`collect` decodes each prompt greedily with the pair (the target's reply) and runs the draft
once over prompt + reply (teacher-forced): per reply position, the draft's 8 most likely
tokens and their probabilities, saved as DIR/PROMPT.npz. `replay` walks each reply round by
round from those rows:

- chain: the draft drafts its best token while the product of its top probabilities stays at
  or above the stop (t_draft / t_plain, as the engine's `AdaptiveK.stop_below`), up to 15; the
  target accepts the prefix that matches its reply; the rows past the chain hold the runners-up
  `tree.plan_tree` picks, and a round whose correction is one of them gets one more token;
- tree wW/S: best-first, each draft forward expands the W unexpanded nodes of highest path
  probability that is at least S (a batched forward of W rows, priced by the draft's forward
  ladder), up to 15 expansions; a node's children are the draft's 4 best tokens; the 15 nodes
  of highest path probability are verified, and the round takes the deepest one on the
  reply's path, plus the target's token after it.

Along the reply the draft's rows are exact; off it (a child of a wrong token) the row of the
same depth on the reply stands in, which only decides how wrong branches compete for rows. No
n-gram jumps, no adaptive k, no probes: a comparison of shapes at one machine's prices, not a
forecast of the engine. Needs `mlx-spec models pull qwen2.5-coder-1.5b` for `collect`.
"""

from __future__ import annotations

import argparse
import heapq
from pathlib import Path

import numpy as np

from mlx_spec.proposers import padded_batch
from mlx_spec.tree import SIBLINGS, plan_tree

# host H (2-core Xeon, OpenBLAS SkylakeX): a draft forward of n tokens in draft steps (medians
# of 12 at a 300-token cache), a draft step and a 16-row verification in plain steps
DRAFT_LADDER = {1: 1.00, 2: 1.11, 3: 1.22, 4: 1.34, 6: 1.40, 8: 1.45, 16: 1.67}
T_DRAFT, T_VERIFY = 0.34, 1.48
ROWS = 15  # verified nodes besides the root
CHILDREN = 4  # a tree node's children: the draft's 4 most likely tokens


def draft_forward(rows: int) -> float:
    """A draft forward over `rows` tokens, in draft steps (padded as the engine pads it)."""
    return DRAFT_LADDER[padded_batch(rows)]


def collect(prompt_ids: list[str], out: Path) -> None:
    import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
    import mlx.core as mx

    from mlx_spec.bench import prompts_by_id
    from mlx_spec.pair import load_pair

    pair = load_pair("qwen2.5-coder-1.5b")
    draft = next(p for p in pair.engine.proposers if not p.free).model
    prompts = prompts_by_id()
    out.mkdir(parents=True, exist_ok=True)
    for pid in prompt_ids:
        ids = pair.encode(prompts[pid])
        pair.reset()
        reply = [t for step in pair.stream(ids, max_tokens=128, temperature=0.0) for t in step.tokens]
        logits = draft(mx.array(ids + reply[:-1])[None])[0, len(ids) - 1 :, :]
        probs = mx.softmax(logits.astype(mx.float32), axis=-1)
        top = mx.argsort(-probs, axis=-1)[:, :8]
        mx.eval(top, probs)
        np.savez(out / f"{pid}.npz", reply=np.array(reply), top=np.array(top),
                 topp=np.array(mx.take_along_axis(probs, top, axis=-1)))
        print(f"{pid}: {len(reply)} tokens", flush=True)


def chain_round(reply, top, topp, j: int, stop: float = T_DRAFT, k_max: int = 15) -> tuple[int, float]:
    """(tokens, price in plain steps) of one chain round starting at reply position j."""
    n = len(reply)
    k, accepted, reach, matching, confidence = 0, 0, 1.0, True, []
    while k < k_max and j + k < n:
        p = topp[j + k, 0]
        if matching and top[j + k, 0] == reply[j + k]:
            accepted += 1
        else:
            matching = False
        confidence.append(p)
        k += 1
        reach *= p
        if reach < stop:
            break
    tokens = accepted + 1
    if accepted < k and j + accepted < n:  # a sibling at the rejected depth?
        rank = np.flatnonzero(top[j + accepted, 1 : SIBLINGS + 1] == reply[j + accepted])
        if rank.size:
            tree = plan_tree(k, [SIBLINGS] * k, ROWS + 1, confidence)
            tokens += (accepted + 1, int(rank[0])) in tree.siblings
    # the first forward also feeds the token the last round committed beyond the draft's
    price = (draft_forward(2) + (k - 1)) * T_DRAFT + T_VERIFY
    return min(tokens, n - j), price


def tree_round(reply, top, topp, j: int, width: int, stop: float, k_max: int = 15) -> tuple[int, float]:
    n = len(reply)
    nodes: list[tuple[float, int, bool]] = []  # (path probability, depth, on the reply's path)

    def expand(reach: float, depth: int, on_path: bool) -> None:
        if j + depth >= n:
            return
        for r in range(CHILDREN):
            nodes.append((reach * topp[j + depth, r], depth + 1, on_path and top[j + depth, r] == reply[j + depth]))

    expand(1.0, 0, True)
    price, expanded, done = draft_forward(2), 1, set()
    while expanded < k_max:
        open_nodes = heapq.nlargest(width, ((p, i) for i, (p, _, _) in enumerate(nodes) if i not in done))
        batch = [i for p, i in open_nodes if p >= stop][: k_max - expanded]
        if not batch:
            break
        for i in batch:
            done.add(i)
            expand(*nodes[i])
        expanded += len(batch)
        price += draft_forward(len(batch))
    verified = heapq.nlargest(ROWS, nodes)
    depth = max((d for _, d, on_path in verified if on_path), default=0)
    return min(depth + 1, n - j), price * T_DRAFT + T_VERIFY


def walk(data, round_fn, **options) -> tuple[float, float]:
    """(tokens per plain step, tokens per round) over the whole reply."""
    reply, top, topp = data["reply"], data["top"], data["topp"]
    j = tokens = rounds = 0
    price = 0.0
    while j < len(reply):
        got, cost = round_fn(reply, top, topp, j, **options)
        j, tokens, rounds, price = j + got, tokens + got, rounds + 1, price + cost
    return tokens / price, tokens / rounds


def replay(folder: Path) -> None:
    shapes = [("chain", chain_round, {})] + [
        (f"tree w{w}/{s}", tree_round, {"width": w, "stop": s}) for w in (1, 2, 3) for s in (0.32, 0.2)
    ]
    print("| reply | " + " | ".join(name for name, _, _ in shapes) + " |")
    print("|---" * (len(shapes) + 1) + "|")
    ratios = {name: [] for name, _, _ in shapes}
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        cells = []
        for name, fn, options in shapes:
            speed, tau = walk(data, fn, **options)
            ratios[name].append(speed)
            cells.append(f"{speed:.3f} (τ {tau:.2f})")
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    base = np.array(ratios["chain"])
    print("| geometric mean over the chain | " + " | ".join(
        f"{np.exp(np.mean(np.log(np.array(v) / base))):.3f}" for v in ratios.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("prompts", help="prompt ids, comma-separated")
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay")
    r.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.prompts.split(","), args.out)
    else:
        replay(args.folder)


if __name__ == "__main__":
    main()
