"""Where should a draft chain stop? Log the adaptive engine's draft chains, then replay them
cut by other stop rules.

    python3 benchmarks/chain_stop.py log --temp 0.7 --out chains-t07.json   # ~7 min on host C
    python3 benchmarks/chain_stop.py replay chains-t07.json

`log` runs the adaptive pair (2 prompts each of math, open-ended and code, seed 0, 128 tokens)
and records, for every round proposed by a draft chain, its length k, the tokens the target
accepted n, the draft's confidence per token (its probability of the token it drew, as the
chain's stop reads it; before bc77da9 a sampled chain read its top probability) and the draft
forwards it took. `replay` prints how the draft's confidence matched
what the target accepted, then cuts each logged chain where a rule would have
stopped it and prices the round at the calibrated costs: the accepted prefix is kept (n' =
min(n, j) for a chain cut after j tokens), the rounds after it are not replayed and siblings
are left out, so the figures approximate what the rule would do. Needs `mlx-spec models pull
qwen2.5-coder-1.5b` for `log`.
"""

import argparse
import json
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "prompts"
CATEGORIES = ("math", "open", "code")
# host C's calibration in target steps: a draft step, a 16-row verification, a batched draft forward
T_DRAFT, T_VERIFY, T_BATCH = 0.35, 1.53, 0.55


def log(temperature: float, out: Path) -> None:
    import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
    from mlx_spec import load_pair
    from mlx_spec.proposers import DraftModelProposer

    pair = load_pair("qwen2.5-coder-1.5b")
    chains, where = [], {}
    observe = DraftModelProposer.observe

    def logged(self, proposal, n_accepted, committed):
        if proposal is not None and proposal.source == "draft" and proposal.k > 0:
            chains.append(dict(where, k=proposal.k, n=n_accepted, conf=list(proposal.confidences or []),
                               forwards=list(proposal.forwards or [])))
        return observe(self, proposal, n_accepted, committed)

    DraftModelProposer.observe = logged
    for category in CATEGORIES:
        for item in json.loads((PROMPTS / f"{category}.json").read_text())[:2]:
            where.update(cat=category, prompt=item["id"])
            pair.reset()
            result = pair.generate(item["prompt"], temperature=temperature, seed=0, max_tokens=128)
            print(category, item["id"], result.stats.summary(), flush=True)
    out.write_text(json.dumps(chains))


def draft_cost(chain: dict, j: int) -> float:
    """The draft's cost of the chain's first j tokens (its forwards, pro rata)."""
    forwards = chain["forwards"] or [1] * chain["k"]
    return sum(T_DRAFT if f == 1 else T_BATCH for f in forwards) * j / chain["k"]


def below(bar: float):
    """Stop after the token at which the chain's confidence falls below `bar` (the engine's
    rule with bar = a draft step's price)."""
    def rule(chain):
        reach = 1.0
        for j, c in enumerate(chain["conf"][: chain["k"]], 1):
            reach *= c
            if reach < bar:
                return j
        return chain["k"]
    return rule


def below_rate(chain) -> int:
    """Stop once the chain's confidence falls below a draft step's price times the round's
    expected tokens per target step so far."""
    reach, tokens, cost = 1.0, 1.0, T_VERIFY
    for j, c in enumerate(chain["conf"][: chain["k"]], 1):
        reach *= c
        tokens, cost = tokens + reach, cost + T_DRAFT
        if reach < T_DRAFT * tokens / cost:
            return j
    return chain["k"]


RULES = {"as run": lambda chain: chain["k"], "bar 0.4": below(0.4), "bar 0.5": below(0.5),
         "bar 0.6": below(0.6), "price x rate": below_rate,
         "k <= 6": lambda chain: min(chain["k"], 6), "k <= 3": lambda chain: min(chain["k"], 3)}


def calibration(chains: list[dict]) -> None:
    """The draft's confidence against what the target accepted, over the positions a round
    reached (up to and including the first rejected one)."""
    reached = [(chain["conf"][i], i < chain["n"]) for chain in chains
               for i in range(min(chain["n"] + 1, chain["k"], len(chain["conf"])))]
    mean = sum(c for c, _ in reached) / len(reached)
    print(f"{len(reached)} reached tokens: confidence {mean:.3f}, accepted {sum(a for _, a in reached) / len(reached):.3f}")
    print("| confidence | tokens | mean confidence | accepted |\n|---|---|---|---|")
    edges = (0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)
    for lo, hi in zip(edges, edges[1:]):
        cell = [(c, a) for c, a in reached if lo <= c < hi]
        if cell:
            print(f"| [{lo}, {min(hi, 1)}) | {len(cell)} | {sum(c for c, _ in cell) / len(cell):.3f} | "
                  f"{sum(a for _, a in cell) / len(cell):.3f} |")


def replay(path: Path) -> None:
    chains = json.loads(path.read_text())
    calibration(chains)
    print(f"{len(chains)} draft chains;", ", ".join(f"{c} {sum(x['cat'] == c for x in chains)}" for c in CATEGORIES))
    print("tokens per target step of the draft chains' rounds (tokens per round)")
    print(f"| rule | {' | '.join(CATEGORIES)} | all |\n|---|---|---|---|---|")
    for name, rule in RULES.items():
        cells = []
        for category in (*CATEGORIES, "all"):
            picked = [x for x in chains if category in ("all", x["cat"])]
            tokens = cost = 0.0
            for chain in picked:
                j = rule(chain)
                tokens += min(chain["n"], j) + 1
                cost += draft_cost(chain, j) + T_VERIFY
            cells.append(f"{tokens / cost:.3f} ({tokens / len(picked):.2f})")
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("log")
    run.add_argument("--temp", type=float, default=0.7)
    run.add_argument("--out", type=Path, required=True)
    again = sub.add_parser("replay")
    again.add_argument("chains", type=Path)
    args = parser.parse_args()
    if args.command == "log":
        log(args.temp, args.out)
    else:
        replay(args.chains)


if __name__ == "__main__":
    main()
