"""What the adaptive policy's planning costs a round on the host's Python: `plan` (every k,
every verification size) and `verify_tokens` (this round's size from the draft's confidences),
then an `update` as the round's outcome. On this CPU a target step takes about 0.5 s and none
of it shows; on Apple Silicon a step of the 1.5B target takes some 10-20 ms, where every
tenth of a millisecond a round spends planning is a percent.

    python3 benchmarks/plan_cost.py [--reference FILE] [--rounds N] [--repeats R]

Prices: the cached calibration of the first pair with a forward ladder (mlx-spec doctor lists
them), else a ladder shaped like host H's. FILE: another policy.py (e.g. `git show
c5aaf34:mlx_spec/policy.py > /tmp/policy_a.py`), timed interleaved with the current one on
the same rounds (A the reference, B the current); prints the median per-round time of each
repeat's median, and B over A.
"""
import argparse
import random
import statistics
import time

from policy_ab import reference_policy

from mlx_spec.policy import AdaptiveK, Costs, _cached_costs, _calibration_table

HOST_H = Costs(draft_step=0.35, verify=[1.0, 1.29] + [1.29] * 3 + [1.36] * 2 + [1.38] * 4 + [1.48] * 5,
               verify_tokens=[1, 4, 4, 4, 6, 6, 8, 8, 12, 16, 16, 16, 16, 16, 16, 16],
               ladder={1: 1.0, 4: 1.29, 6: 1.36, 8: 1.38, 12: 1.78, 16: 1.48, 24: 1.91, 32: 1.88})


def cached_or_host_h() -> Costs:
    cached = [c for c in (_cached_costs(e) for e in _calibration_table().values()) if c and c.ladder]
    return cached[0] if cached else HOST_H


def per_round_ms(make_policy, rounds: int, seed: int) -> float:
    """Median milliseconds of plan + verify_tokens over `rounds` rounds of made-up outcomes,
    on a fresh policy from `make_policy()`."""
    rng = random.Random(seed)
    policy = make_policy()
    policy.allow_siblings()
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        k = max(policy.plan("draft")[0], 1)
        confidences = [rng.random() for _ in range(k)]
        policy.verify_tokens(k, "draft", confidences)
        times.append(time.perf_counter() - tic)
        n = rng.randint(0, k)
        tried = rng.randint(1, 4) if n < k else 0
        hit = rng.randrange(tried) if tried and rng.random() < 0.5 else None
        policy.update("draft", k, n, tried, hit)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="another policy.py to time against the current one")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    costs = cached_or_host_h()
    arms = {"B (current)": lambda: AdaptiveK(costs, k_max=15)}
    if args.reference:  # policy_ab's adapters let an older policy.py answer the current calls
        arms = {"A (reference)": lambda: reference_policy(args.reference, AdaptiveK(costs, k_max=15)), **arms}
    medians = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, make_policy in arms.items():
            medians[name].append(per_round_ms(make_policy, args.rounds, seed=repeat))
    result = {name: statistics.median(ms) for name, ms in medians.items()}
    for name, ms in result.items():
        print(f"{name}: {ms:.3f} ms a round (plan + verify_tokens), median of {args.repeats} repeats")
    if args.reference:
        print(f"B over A: {result['B (current)'] / result['A (reference)']:.2f}")


if __name__ == "__main__":
    main()
