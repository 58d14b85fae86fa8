"""The chain cap of a generation in the red, measured: interleaved arms in one process, plain
decoding (unless `noplain`), adaptive mlx-spec without the cap (A) and as it is (B), on one
category's prompts. Prints measured and modeled speed-ups and the k chosen per run.

Usage: python3 benchmarks/red_cap.py TEMP PROMPT_IDS SEEDS CATEGORY [noplain]
(e.g. 0.7 story,poem,letter 7 open). Needs the pair: mlx-spec models pull qwen2.5-coder-1.5b.
"""
import json
import sys

from mlx_spec.bench import Bench, Arm, load_prompts
from mlx_spec.loading import load_model
from mlx_spec.registry import load_registry

temp = float(sys.argv[1]); wanted = sys.argv[2].split(","); seeds = [int(s) for s in sys.argv[3].split(",")]
cat = sys.argv[4] if len(sys.argv) > 4 else "open"
spec = load_registry().get("qwen2.5-coder-1.5b")
t, d = load_model(spec.target), load_model(spec.draft)
arms = ([] if "noplain" in sys.argv else [Arm("plain", "plain")]) + [Arm("A", "spec", None, ngram=True), Arm("B", "spec", None, ngram=True)]
bench = Bench(t, d, arms, max_tokens=128)
bench.pairs["A"].engine.policy.in_red = lambda: False  # A: no chain cap in the red
items = [p for p in load_prompts((cat,), None)[cat] if p["id"] in wanted]
first = bench.encode(items[0]["prompt"])
for arm in arms:
    bench.run(arm, first, 0.0, 0, max_tokens=8)
n = 0
for item in items:
    ids = bench.encode(item["prompt"])
    for seed in seeds:
        order = arms if n % 2 == 0 else arms[::-1]; n += 1
        runs = {a.name: bench.run(a, ids, temp, seed) for a in order}
        base = runs["plain"].tps if "plain" in runs else 1.0
        print(json.dumps({"prompt": item["id"], "seed": seed, **{name: {"tokens": len(r.tokens), "speedup": round(r.tps / base, 3),
              "modeled": round(r.stats.get("modeled_speedup") or 1.0, 3), "k": r.stats["k_counts"]} for name, r in runs.items()}}), flush=True)
