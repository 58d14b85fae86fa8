"""Two adaptive policies on the same prompts, measured: arms interleaved in one process (their
order alternating), plain decoding first when asked. A is the variant, B the policy as it is.
Prints, per prompt and seed, each arm's tokens, speed-up (over plain decoding, or its tok/s
without it), modeled speed-up (its counted forwards at the calibrated prices: free of the
host's drift, the figure to compare variants by) and the k of its rounds.

Usage: python3 benchmarks/policy_ab.py TEMP CATEGORY PROMPT_IDS SEEDS [--plain] VARIANT
VARIANT: --uncapped (no chain cap while the ledger is in the red), --no-regimes (a paid
source learned as one, not per prose and code regime), --no-renames (the n-gram learns no
renames), --no-follow (the n-gram takes the latest occurrence, not the one the copy goes on
from), --no-tail (a fixed k's spare verification rows get no free n-gram tail), --no-tail-rows
(a fixed k buys no verification rows for its tail: the tail gets only the rows its chain and
siblings are verified in), --tail-bar X (a
fixed k's tail wherever the n-gram's first-token acceptance reaches X; 0: always), --fresh-costs
(A plans with costs measured now, B with those cached by an earlier run; both arms are then also
priced at A's, "modeled_now"), --k-max N (A drafts and
verifies up to N tokens a round, calibrated up to N + 1; B the default 15), --reference FILE (the
AdaptiveK of another policy.py, e.g. `git show a033096:mlx_spec/policy.py > /tmp/policy_a.py`)
or --reference-proposers FILE (A's draft chain is the DraftModelProposer of another
proposers.py, e.g. `git show 813e88c:mlx_spec/proposers.py > /tmp/proposers_a.py`, whose
sampled chain read the draft's top probability); variants named together all apply to A.
--fixed-k N runs both arms at a fixed k (the suite's fixed-k arm) instead of adaptive; it goes
with --reference-proposers. --no-learned-costs: A plans with the calibration alone, B reprices
drafting by what its rounds take (round_costs.py). --misread-draft X: both arms start from a
calibration whose draft forwards are priced X times as measured (a misread, as host G's 0.48
for 0.33), both are then also priced at the true calibration ("modeled_true"); with
--no-learned-costs, A keeps the misread while B learns from its rounds. --whole-head-costs: A
plans with costs whose draft was timed with its whole output layer (as before the calibration
timed the subset head the draft runs), B with the subset head's, both measured now, one after
the other; both arms are then also priced at B's ("modeled_true"). --rejection: A samples
by rejection sampling, B drafter-invariantly (mlx_spec.coupling): different texts, so compare
modeled speed-ups and τ over several seeds. Otherwise every arm, plain included, samples
drafter-invariantly (the default), so at temperature > 0 too both arms decode the same text at
a seed (checked) and their modeled speed-ups compare as greedy ones do.
--trace DIR writes each arm's rounds to DIR/<prompt>-s<seed>-<A|B>.jsonl (as `mlx-spec generate
--trace`: source, k, accepted, verified, draft forwards, price in plain steps).
Example: python3 benchmarks/policy_ab.py 0.7 open story,poem 7,8 --plain --uncapped
Needs the pair: mlx-spec models pull qwen2.5-coder-1.5b.
"""
import dataclasses
import importlib.util
import inspect
import json
import sys
from pathlib import Path

from mlx_spec.bench import Arm, Bench, load_prompts
from mlx_spec.loading import load_model
from mlx_spec.policy import AdaptiveK, FixedK, calibrate
from mlx_spec.proposers import DraftModelProposer, NgramProposer
from mlx_spec.registry import load_registry
from mlx_spec.round_costs import scaled
from mlx_spec.trace import trace_records, write_trace


def load_reference(path: str, name: str):
    """Another version of one of the package's modules, loaded from a file."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def reference_policy(path: str, current):
    """An AdaptiveK (a FixedK where `current` is one) from another policy.py, with the current
    one's costs and k_max (or k), learning the draft's price from its rounds where the current
    one does (and the other can)."""
    module = load_reference(path, "policy_reference")
    known = {f.name for f in dataclasses.fields(module.Costs)}  # an older Costs has fewer fields
    costs = module.Costs(**{k: v for k, v in dataclasses.asdict(current.calibration).items() if k in known})
    learns = getattr(getattr(current, "estimates", None) or current, "round_costs", None) is not None
    can_learn = "learn_costs" in inspect.signature(module.AdaptiveK).parameters  # from round_costs.py on
    learn = {"learn_costs": True} if learns and can_learn else {}
    policy = (module.FixedK(current.k, costs, **learn) if isinstance(current, FixedK)
              else module.AdaptiveK(costs, current.k_max, **learn))
    if "seconds" not in inspect.signature(policy.settle).parameters:  # from before round_costs.py
        settle = policy.settle
        policy.settle = lambda tokens, verified, forwards=(), seconds=None: settle(tokens, verified, forwards)
    if "sibling" in inspect.signature(policy.update).parameters:  # from before per-rank sibling rates
        update = policy.update
        policy.update = lambda source, k, n, tried=0, hit=None: update(
            source, k, n, sibling=(hit is not None) if tried else None)
    if "confidences" not in inspect.signature(policy.verify_tokens).parameters:  # sized without the round's
        verify_tokens = policy.verify_tokens
        policy.verify_tokens = lambda k, source=None, confidences=None: verify_tokens(k, source)
    if not hasattr(policy, "calibration"):
        policy.calibration = costs  # what the bench prices its rounds at
    return policy


def draft_head_of(engine):
    """The subset output layer the engine's draft runs (None: the whole vocabulary)."""
    return next((p.head for p in engine.proposers if isinstance(p, DraftModelProposer)), None)


def rebuilt(engine, costs, learn: bool = True):
    """The engine's kind of policy (adaptive or its fixed k) planning from `costs`."""
    old = engine.policy
    policy = FixedK(old.k, costs, learn_costs=learn) if isinstance(old, FixedK) else AdaptiveK(
        costs, old.k_max, learn_costs=learn)
    if engine.tree:
        policy.allow_siblings()
    return policy


def main(argv: list[str]) -> None:
    if len(argv) < 5:
        sys.exit(__doc__)
    temp, category, wanted, seeds = float(argv[0]), argv[1], argv[2].split(","), [int(s) for s in argv[3].split(",")]
    options = argv[4:]
    variants = [o for o in options[:-1] if o in ("--reference", "--reference-proposers", "--k-max", "--tail-bar",
                                                  "--misread-draft")]
    fixed_k = int(options[options.index("--fixed-k") + 1]) if "--fixed-k" in options[:-1] else None
    if not {"--uncapped", "--no-regimes", "--no-renames", "--no-follow", "--no-tail", "--no-tail-rows",
            "--fresh-costs", "--no-learned-costs", "--whole-head-costs", "--rejection"} & set(options) and not variants:
        sys.exit("name the variant: --uncapped, --no-regimes, --no-renames, --no-follow, --no-tail, --no-tail-rows, "
                 "--fresh-costs, --no-learned-costs, --whole-head-costs, --rejection, --misread-draft X, "
                 "--reference FILE, --reference-proposers FILE, --k-max N or --tail-bar X")
    spec = load_registry().get("qwen2.5-coder-1.5b")
    target, draft = load_model(spec.target), load_model(spec.draft)
    same = "--rejection" not in options  # both arms decode the same text at a seed
    arms = ([Arm("plain", "plain")] if "--plain" in options else []) + [
        Arm(name, "spec", fixed_k, ngram=True, invariant=same or name == "B") for name in ("A", "B")]
    bench = Bench(target, draft, arms, max_tokens=128)
    engine = bench.pairs["A"].engine
    if "--reference" in variants:
        engine.policy = reference_policy(options[options.index("--reference") + 1], engine.policy)
    if "--k-max" in variants:  # longer chains and guesses, with costs measured up to k_max + 1
        k_max = int(options[options.index("--k-max") + 1])
        engine.policy = AdaptiveK(calibrate(target.model, draft.model, k_max=k_max, head=draft_head_of(engine)),
                                  k_max, learn_costs=True)
    now = None
    if "--fresh-costs" in options:  # the host drifts: what planning with today's prices is worth
        now = calibrate(target.model, draft.model, k_max=engine.policy.k_max, head=draft_head_of(engine))
        engine.policy = AdaptiveK(now, engine.policy.k_max, learn_costs=True)
    if engine.tree and ({"--reference", "--k-max"} & set(variants) or now):  # a policy of A's own
        engine.policy.allow_siblings()
    true = None
    if "--misread-draft" in variants:  # both arms start from the same misread
        true = engine.policy.calibration
        misread = scaled(true, float(options[options.index("--misread-draft") + 1]))
        for name in ("A", "B"):
            bench.pairs[name].engine.policy = rebuilt(bench.pairs[name].engine, misread)
    if "--whole-head-costs" in options:
        k_max = bench.pairs["B"].k_max
        whole = calibrate(target.model, draft.model, k_max=k_max)
        true = calibrate(target.model, draft.model, k_max=k_max, head=draft_head_of(engine))
        engine.policy = rebuilt(engine, whole)
        bench.pairs["B"].engine.policy = rebuilt(bench.pairs["B"].engine, true)
        print(json.dumps({"draft_step": {"whole": round(whole.draft_step / whole.verify[0], 3),
                                         "subset": round(true.draft_step / true.verify[0], 3)}}), flush=True)
    if "--no-learned-costs" in options:
        engine.policy = rebuilt(engine, engine.policy.calibration, learn=False)
    if "--no-tail" in options:
        engine.policy.tail = False
    if "--no-tail-rows" in options:
        engine.policy.tail_size = lambda source, k, size, key, room: size
    if "--tail-bar" in variants:
        engine.policy.tail_bar = float(options[options.index("--tail-bar") + 1])
    if "--uncapped" in options:
        engine.policy.in_red = lambda: False
    if "--no-regimes" in options:  # a fixed k's policy ranks its sources by an AdaptiveK's estimates
        (getattr(engine.policy, "estimates", None) or engine.policy).regimes = False
    for proposer in engine.proposers:
        if isinstance(proposer, NgramProposer):
            if "--no-renames" in options:
                proposer.renames = 0
            proposer.follow = "--no-follow" not in options
    if "--reference-proposers" in variants:
        module = load_reference(options[options.index("--reference-proposers") + 1], "proposers_reference")
        for proposer in engine.proposers:  # the same state, the other version's methods
            if isinstance(proposer, DraftModelProposer):
                proposer.__class__ = module.DraftModelProposer
    trace_dir = Path(options[options.index("--trace") + 1]) if "--trace" in options else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    arms_by_name = {arm.name: arm for arm in arms}
    items = [p for p in load_prompts((category,), None)[category] if p["id"] in wanted]
    for arm in arms:  # warm-up
        bench.run(arm, bench.encode(items[0]["prompt"]), 0.0, 0, max_tokens=8)
    for n, (item, seed) in enumerate((item, seed) for item in items for seed in seeds):
        ids = bench.encode(item["prompt"])
        runs = {arm.name: bench.run(arm, ids, temp, seed, trace=trace_dir is not None)
                for arm in (arms if n % 2 == 0 else arms[::-1])}
        for name in runs.keys() & {"A", "B"} if trace_dir is not None else ():
            pair = bench.pairs[name]
            write_trace(trace_records(pair.last_stats, pair.tokenizer, bench.costs(arms_by_name[name])),
                        trace_dir / f"{item['id']}-s{seed}-{name}.jsonl")
        base = runs["plain"].tps if "plain" in runs else 1.0
        if same:  # one text per prompt and seed: the arms' modeled speed-ups compare exactly
            assert runs["A"].tokens == runs["B"].tokens, f"{item['id']} seed {seed}: the arms' texts differ"
        print(json.dumps({"prompt": item["id"], "seed": seed, **{
            name: {"tokens": len(run.tokens), "speedup": round(run.tps / base, 3),
                   "modeled": round(run.stats.get("modeled_speedup") or 1.0, 3),
                   "k": dict(sorted(run.stats["k_counts"].items(), key=lambda kv: int(kv[0]))),
                   **({"sizes": run.stats["verify_sizes"]} if run.stats.get("verify_sizes") else {}),
                   **({"tau": round(run.stats["tau"], 2), "siblings": run.stats["sibling_hits"]}
                      if "tau" in run.stats else {}),
                   **({"modeled_now": round(now.modeled_speedup(bench.pairs[name].last_stats), 3)}
                      if now and name in ("A", "B") else {}),
                   **({"modeled_true": round(true.modeled_speedup(bench.pairs[name].last_stats), 3)}
                      if true and name in ("A", "B") else {}),
                   **({"draft_price": round(run.stats["draft_price"], 3)} if run.stats.get("draft_price") else {})}
            for name, run in runs.items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
