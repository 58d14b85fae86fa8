"""What the acceptance rule is worth at the same k: rejection sampling against mlx-lm's
sample-and-compare, on real replies of a pair at temperature T.

    python3 benchmarks/acceptance_rule.py [--pair qwen2.5-coder-1.5b] [--per-category 4]

For each prompt a reply is sampled from the target (through mlx-spec, which is lossless, so it
is a reply of the target), then each model reads prompt + reply in one forward. At every
position of the reply, sum min(p, q) is the chance that rejection sampling accepts the draft's
token, sum p * q the chance that the draft's and the target's samples agree (mlx-lm's rule),
and the chance that their argmaxes under the same Gumbel noise agree (drafter-invariant
sampling, `--invariant`: sum_i 1 / sum_j max(p_j / p_i, q_j / q_i), exact), p and q under the
same transform (temperature T, the draft's full output layer). A chain of k
drafts started at position t then yields 1 + sum_j prod_{i<j} a(t + i) tokens per round,
averaged over t (an estimate: it follows the sampled reply, where a real round follows its own
draws). Both rules pay the same k draft steps and the same verification, so the ratio of those
tokens per round is what the rule alone is worth at the same k. Needs
`mlx-spec models pull qwen2.5-coder-1.5b` first.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import mlx_spec  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx  # noqa: E402

from mlx_spec.bench_report import markdown_table  # noqa: E402
from mlx_spec.pair import load_pair  # noqa: E402
from mlx_spec.sampling import SamplingParams, probabilities  # noqa: E402

HERE = Path(__file__).resolve().parent
CATEGORIES = ("code", "math", "open", "edit")


def chain_tokens(rates: list[float], k: int) -> float:
    """Mean tokens per round of a k-draft chain started at each position of the reply."""
    starts = range(max(len(rates) - k + 1, 1))
    total = 0.0
    for t in starts:
        alive, tokens = 1.0, 1.0
        for a in rates[t : t + k]:
            alive *= a
            tokens += alive
        total += tokens
    return total / len(starts)


# tokens the invariant rule's sum runs over: the most likely under min(p, q); a token i adds at
# most min(p_i, q_i), so the others add at most what is reported as `invariant_missing`
COUPLED_TOP = 256


def coupled_agreement(p: mx.array, q: mx.array, top: int = COUPLED_TOP) -> tuple[mx.array, mx.array]:
    """Per row of p and q (rows, V): the chance that argmax(log p + G) = argmax(log q + G)
    for Gumbel noise G shared by both, and at most how much it misses. With E_j = exp(-G_j)
    exponential, token i wins both where E_j > E_i max(p_j / p_i, q_j / q_i) for every j,
    which has probability 1 / sum_j max(p_j / p_i, q_j / q_i); summed over the `top` tokens
    of min(p, q) (what the rest could add: their sum of min(p, q))."""
    rows, missing = [], []
    for t in range(p.shape[0]):
        both = mx.minimum(p[t], q[t])
        order = mx.argsort(-both)
        idx, rest = order[:top], order[top:]
        pi, qi = mx.maximum(p[t][idx][:, None], 1e-30), mx.maximum(q[t][idx][:, None], 1e-30)
        rows.append((1.0 / mx.maximum(p[t][None] / pi, q[t][None] / qi).sum(-1)).sum())
        missing.append(both[rest].sum() if rest.size else mx.array(0.0))
    return mx.stack(rows), mx.stack(missing)


def position_rates(pair, prompt_ids: list[int], reply: list[int], sampling: SamplingParams):
    """Per reply position: (sum min(p, q), sum p * q, the invariant rule's agreement, at most
    how much that misses)."""
    ids = mx.array(prompt_ids + reply)[None]
    rows = slice(len(prompt_ids) - 1, len(prompt_ids) + len(reply) - 1)
    p = probabilities(pair.target(ids)[0, rows], sampling)
    q = probabilities(pair.draft(ids)[0, rows], sampling)
    width = min(p.shape[-1], q.shape[-1])  # vocabulary padding may differ
    p, q = p[:, :width], q[:, :width]
    ours, theirs = mx.minimum(p, q).sum(-1), (p * q).sum(-1)
    coupled, missing = coupled_agreement(p, q)
    mx.eval(ours, theirs, coupled, missing)
    return ours.tolist(), theirs.tolist(), coupled.tolist(), missing.tolist()


def measure(pair, prompts: dict, temperature: float, ks: list[int], max_tokens: int, seed: int) -> list[dict]:
    sampling = SamplingParams(temperature=temperature)
    rows = []
    total = sum(len(items) for items in prompts.values())
    for category, items in prompts.items():
        for item in items:
            prompt_ids = pair.encode(item["prompt"])
            reply = pair.generate(prompt_ids, temperature=temperature, max_tokens=max_tokens, seed=seed).tokens
            ours, theirs, coupled, missing = position_rates(pair, prompt_ids, reply, sampling)
            row = {"category": category, "prompt": item["id"], "tokens": len(reply),
                   "rejection": statistics.fmean(ours), "sample_compare": statistics.fmean(theirs),
                   "invariant": statistics.fmean(coupled), "invariant_missing": max(missing)}
            for k in ks:
                row[f"tau_rejection_k{k}"] = chain_tokens(ours, k)
                row[f"tau_sample_compare_k{k}"] = chain_tokens(theirs, k)
                row[f"tau_invariant_k{k}"] = chain_tokens(coupled, k)
            rows.append(row)
            print(f"[{len(rows)}/{total}] {category}/{item['id']}: {len(reply)} tokens, "
                  f"sum min(p,q) {row['rejection']:.3f}, sum p*q {row['sample_compare']:.3f}, "
                  f"invariant {row['invariant']:.3f}", flush=True)
    return rows


def summary_markdown(rows: list[dict], ks: list[int], temperature: float) -> str:
    head = ["category", "prompts", "Σ min(p, q)", "Σ p·q", "invariant"]
    for k in ks:
        head += [f"τ k={k} ours", f"τ k={k} mlx-lm", f"ratio k={k}", f"τ k={k} invariant"]
    rows_out = []
    ratios = {k: [] for k in ks}
    for category in dict.fromkeys(r["category"] for r in rows):
        mine = [r for r in rows if r["category"] == category]
        cells = [category, str(len(mine)), f"{statistics.fmean(r['rejection'] for r in mine):.3f}",
                 f"{statistics.fmean(r['sample_compare'] for r in mine):.3f}",
                 f"{statistics.fmean(r['invariant'] for r in mine):.3f}"]
        for k in ks:
            ours = statistics.fmean(r[f"tau_rejection_k{k}"] for r in mine)
            theirs = statistics.fmean(r[f"tau_sample_compare_k{k}"] for r in mine)
            coupled = statistics.fmean(r[f"tau_invariant_k{k}"] for r in mine)
            ratios[k].append(ours / theirs)
            cells += [f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.3f}×", f"{coupled:.2f}"]
        rows_out.append(cells)
    tail = ", ".join(f"k={k} {statistics.fmean(v):.3f}×" for k, v in ratios.items())
    return (f"Temperature {temperature}: tokens per round at the same k, rejection sampling over "
            f"sample-and-compare, averaged over categories: {tail}. The invariant columns: the draft's and "
            f"the target's argmax under shared Gumbel noise (`--invariant`), without the tree's siblings\n\n"
            + markdown_table(head, rows_out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="qwen2.5-coder-1.5b", help="a pair name, or a target path with --draft")
    parser.add_argument("--draft", default=None, help="the draft (default: the pair's)")
    parser.add_argument("--per-category", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(HERE / "results" / "acceptance-rule-cpu.json"))
    args = parser.parse_args()
    pair = load_pair(args.pair, draft=args.draft, ngram=False)
    if pair.draft is None:
        raise SystemExit(f"{args.pair} has no draft model to compare rules with")
    prompts = {c: json.loads((HERE / "prompts" / f"{c}.json").read_text())[: args.per_category] for c in CATEGORIES}
    rows = measure(pair, prompts, args.temperature, args.ks, args.max_tokens, args.seed)
    table = summary_markdown(rows, args.ks, args.temperature)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out = Path(args.out)
    out.write_text(json.dumps({"settings": settings, "target": pair.target_name, "draft": pair.draft_name,
                               "prompts": rows}, indent=1))
    out.with_suffix(".md").write_text(
        f"# Acceptance rule at the same k: {pair.target_name} + {pair.draft_name}\n\n"
        f"`python3 benchmarks/acceptance_rule.py --pair {args.pair} --per-category {args.per_category} "
        f"--temperature {args.temperature}`\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
