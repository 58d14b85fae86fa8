"""Choosing k: the expected-throughput model, online acceptance tracking, calibration cache."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mlx_spec.policy import AdaptiveK, Costs, FixedK, cached_calibration, calibration_path
from mlx_spec.stats import Stats
from mlx_spec.tree import RANK_WORTH, SIBLINGS, plan_tree, rejection_chances


def test_expected_tokens_with_equal_acceptance_is_the_geometric_formula():
    policy = AdaptiveK(Costs(draft_step=0.1, verify=[1.0] * 9), prior=0.5)
    assert policy.alphas("draft") == [0.5] * 8
    for k in range(9):
        assert policy.expected("draft", k) == pytest.approx((1 - 0.5 ** (k + 1)) / (1 - 0.5))


# verify cost grows slowly with k (the regime where drafting pays), as on this CPU
CHEAP_VERIFY = Costs(draft_step=0.37, verify=[1.0, 1.2, 1.3, 1.33, 1.35, 1.37, 1.4, 1.42, 1.45])


def feed(policy, source, alpha_pattern, rounds=40):
    """Report rounds where exactly the first n of k were accepted."""
    for _ in range(rounds):
        k = max(policy.choose(source), 1)
        policy.update(source, k, min(alpha_pattern, k))


def test_high_acceptance_drafts_more_than_low_acceptance():
    good, bad = AdaptiveK(CHEAP_VERIFY), AdaptiveK(CHEAP_VERIFY)
    feed(good, "draft", alpha_pattern=8)  # everything accepted
    feed(bad, "draft", alpha_pattern=0)  # nothing accepted
    assert good.choose("draft") >= 5
    assert bad.alpha("draft") < 0.25 < 0.95 < good.alpha("draft")


def test_useless_draft_falls_back_to_plain_decoding_with_probes():
    policy = AdaptiveK(CHEAP_VERIFY, probe_every=4, explore=None)  # the schedule alone
    feed(policy, "draft", alpha_pattern=0)
    choices = [policy.choose("draft") for _ in range(8)]
    assert choices.count(0) == 6 and choices.count(1) == 2


def test_free_proposals_are_worth_more_tokens():
    policy = AdaptiveK(CHEAP_VERIFY)
    for _ in range(10):
        policy.update("draft", 4, 2)
        policy.update("ngram", 4, 2)
    assert policy.choose("ngram") > policy.choose("draft")


def test_calibration_is_measured_once_and_cached(stories):
    model, _ = stories
    first = cached_calibration("machine|stories", model, model, k_max=4)
    assert len(first.verify) == 5 and first.draft_step > 0
    assert all(a <= b for a, b in zip(first.verify, first.verify[1:]))
    assert all(t >= k + 1 for k, t in enumerate(first.verify_tokens))
    stored = json.loads(calibration_path().read_text())
    assert stored["machine|stories"]["verify"] == first.verify
    again = cached_calibration("machine|stories", None, None, k_max=4)  # no model needed now
    assert again == first


def test_sources_are_ranked_by_expected_rate():
    policy = AdaptiveK(CHEAP_VERIFY)
    for _ in range(20):
        policy.update("ngram", 4, 0)  # n-gram proposals keep failing
        policy.update("draft", 4, 4)  # the draft model's are accepted
    assert policy.plan("draft")[1] > policy.plan("ngram")[1]


def test_acceptance_that_falls_with_position_limits_k():
    policy = AdaptiveK(CHEAP_VERIFY)
    chosen = []
    for _ in range(40):
        k = max(policy.choose("draft"), 1)
        chosen.append(k)
        policy.update("draft", k, min(2, k))  # the first two drafts land, the third never does
    alphas = policy.alphas("draft")
    assert alphas[0] > 0.9 and alphas[1] > 0.9 and alphas[2] < 0.7
    assert set(chosen[-20:]) <= {2, 3} and chosen[-20:].count(2) >= 14  # k = 3 only as a probe


def test_reset_returns_to_the_prior():
    policy = AdaptiveK(CHEAP_VERIFY)
    fresh = policy.choose("draft")
    feed(policy, "draft", alpha_pattern=0)
    assert policy.alpha("draft") < 0.5
    policy.reset()
    assert policy.alpha("draft") == pytest.approx(0.9)
    assert policy.choose("draft") == fresh


def test_free_sources_start_pessimistic_and_earn_their_place():
    policy = AdaptiveK(CHEAP_VERIFY)
    assert policy.alpha("ngram:4") == policy.free_prior < policy.alpha("draft") == policy.prior
    for _ in range(6):
        policy.update("ngram:4", 8, 8)  # shadow-scored guesses that were right
    assert policy.alpha("ngram:4") > 0.8
    assert policy.alpha("ngram:2") == policy.free_prior  # each matched length learns on its own


def test_a_draft_forward_costs_between_one_step_and_the_measured_batch():
    costs = Costs(draft_step=0.3, verify=[1.0] + [1.4] * 15, draft_batch=0.6)  # batch: 16 tokens
    prices = [costs.draft_forward(t) for t in (1, 2, 4, 8, 16, 32)]
    assert prices[0] == 0.3 and prices[4] == pytest.approx(0.6) and prices[5] == pytest.approx(0.6)
    assert prices == sorted(prices)


def test_the_modeled_speedup_prices_counted_rounds_and_forwards():
    costs = Costs(draft_step=0.3, verify=[1.0, 1.3] + [1.4] * 14, draft_batch=0.6)
    stats = Stats(generated_tokens=12, k_counts=Counter({0: 2, 1: 1, 4: 2}),
                  draft_forwards=Counter({1: 8, 16: 1}))
    seconds = 2 * 1.0 + 1.3 + 2 * 1.4 + 8 * 0.3 + 0.6  # 2 plain rounds, 3 verified, 9 forwards
    assert costs.modeled_speedup(stats) == pytest.approx(12 * 1.0 / seconds)
    assert costs.modeled_speedup(Stats()) is None
    # counted by tokens fed, a verification is priced at the size it really had
    ladder = Costs(draft_step=0.3, verify=[1.0, 1.3] + [1.4] * 14, draft_batch=0.6,
                   ladder={"1": 1.0, "2": 1.3, "4": 1.35, "16": 1.4})
    stats.verify_sizes = Counter({1: 2, 4: 1, 16: 2})  # the k = 1 round fed 4 tokens
    seconds = 2 * 1.0 + 1.35 + 2 * 1.4 + 8 * 0.3 + 0.6
    assert ladder.modeled_speedup(stats) == pytest.approx(12 * 1.0 / seconds)


def test_the_drafting_ceiling_is_the_best_k_at_a_given_acceptance():
    # plain step 1.0, draft step 0.2, verifying k drafts costs 1.2 up to k = 3, then 2.0
    costs = Costs(draft_step=0.2, verify=[1.0, 1.2, 1.2, 1.2, 2.0, 2.0])
    # full acceptance: k = 3 gives 4 tokens for 0.6 + 1.2 = 1.8 s; k = 5 gives 6 for 3.0 s
    assert costs.ceiling(1.0) == (pytest.approx(4 / 1.8), 3)
    # alpha = 0.5: k = 2 gives 1.75 tokens for 1.6 s, better than k = 1 (1.5 for 1.4 s),
    # k = 3 (1.875 for 1.8 s) and plain decoding
    assert costs.ceiling(0.5) == (pytest.approx(1.75 / 1.6), 2)
    # a draft that is never accepted: plain decoding (k = 0) is the ceiling
    assert costs.ceiling(0.0) == (1.0, 0)
    # a dearer draft or a steeper verification lowers the ceiling at the same acceptance
    dear = Costs(draft_step=0.4, verify=[1.0, 1.2, 1.2, 1.2, 2.0, 2.0])
    steep = Costs(draft_step=0.2, verify=[1.0, 1.5, 1.6, 1.7, 2.0, 2.0])
    for alpha in (1.0, 0.9, 0.7):
        assert dear.ceiling(alpha)[0] < costs.ceiling(alpha)[0]
        assert steep.ceiling(alpha)[0] < costs.ceiling(alpha)[0]


def test_a_larger_verification_is_chosen_where_its_siblings_pay_for_it():
    # 4 tokens verify k = 3; 6 or 8 cost 0.15 more (7.5% of the round) and hold 2 or 4 siblings
    costs = Costs(draft_step=0.2, verify=[1.0, 1.2, 1.3, 1.4, 1.55, 1.55, 1.55, 1.55],
                  verify_tokens=[1, 2, 3, 4, 6, 6, 8, 8], draft_batch=0.4,
                  ladder={1: 1.0, 2: 1.2, 3: 1.3, 4: 1.4, 6: 1.55, 8: 1.55})
    hits, misses = AdaptiveK(costs, k_max=7), AdaptiveK(costs, k_max=7)
    for policy in (hits, misses):
        policy.allow_siblings()
        for _ in range(10):  # rejected at the second draft, where 4 runners-up were tried
            policy.update("draft", 3, 1, 4, 0 if policy is hits else None)
    assert hits.verify_tokens(3, "draft") == 8 and hits.expected("draft", 3, 8) > hits.expected("draft", 3, 4)
    assert misses.verify_tokens(3, "draft") == 4  # siblings that never hit are not worth it
    assert hits.verify_tokens(3, "ngram:4") == 4  # a free guess has no runners-up to add
    assert hits.verify_tokens(3) == 4  # without a source: the cheapest
    assert hits.rate("draft", 3) == pytest.approx(hits.expected("draft", 3, 8) / (3 * 0.2 + 1.55))
    fixed = FixedK(3, costs)
    fixed.allow_siblings()
    for _ in range(10):
        fixed.update("draft", 3, 1, 1, 0)
    assert fixed.verify_tokens(3, "draft") == 8


def test_each_runner_up_rank_learns_its_own_rate():
    policy = AdaptiveK(Costs(draft_step=0.2, verify=[1.0, 1.2, 1.3, 1.4]), k_max=3)
    prior = policy.sibling_rates("draft")
    assert prior[0] == pytest.approx(policy.sibling_prior)
    assert prior[1:] == pytest.approx([prior[0] * w for w in RANK_WORTH[1:]])  # priors follow rank 0
    for _ in range(8):  # the correction is always the draft's third choice (rank 1 of its runners-up)
        policy.update("draft", 3, 0, 2, 1)
    rates = policy.sibling_rates("draft")
    assert rates[1] > prior[1] and rates[0] < prior[0]
    assert rates[3] < prior[3]  # untried ranks follow rank 0's rate down
    assert policy.sibling_rates("other") == prior  # learned per source
    policy.update("draft", 3, 3, 0, None)  # all accepted: nothing tried, nothing learned
    assert policy.sibling_rates("draft") == rates


def test_siblings_are_valued_where_the_tree_would_place_them():
    # k = 1 verified in 4 rows: the root, the draft and its two best runners-up at depth 1
    costs = Costs(draft_step=0.2, verify=[1.0, 1.2], verify_tokens=[1, 4], ladder={1: 1.0, 4: 1.2})
    policy = AdaptiveK(costs, k_max=1)
    policy.allow_siblings()
    policy.update("draft", 1, 0, 2, 0)
    alpha, rates = policy.alphas("draft")[0], policy.sibling_rates("draft")
    assert policy.sibling_gains("draft", 1) == pytest.approx([(1 - alpha) * r for r in rates])
    assert policy.expected("draft", 1, 4) == pytest.approx(1 + alpha + (1 - alpha) * (rates[0] + rates[1]))
    assert policy.expected("draft", 1, 2) == pytest.approx(1 + alpha)  # no row past the chain
    assert policy.sibling_gains("ngram:3", 1) == []  # a free guess has no runners-up


def test_a_verification_grows_past_one_sibling_per_depth_where_further_ranks_land():
    # k = 1: 4 rows hold the draft's two best runners-up, 8 rows all four, for 0.1 more
    costs = Costs(draft_step=0.2, verify=[1.0, 1.2], verify_tokens=[1, 2], ladder={1: 1.0, 2: 1.2, 4: 1.3, 8: 1.4})
    deep, shallow = AdaptiveK(costs, k_max=1), AdaptiveK(costs, k_max=1)
    for policy in (deep, shallow):
        policy.allow_siblings()
        for _ in range(10):  # rejected with 4 runners-up tried
            policy.update("draft", 1, 0, 4, 3 if policy is deep else 0)
    assert deep.verify_tokens(1, "draft") == 8  # the draft's fifth choice keeps being the target's
    assert shallow.verify_tokens(1, "draft") == 4  # its second choice is: two rows are enough


def test_a_round_whose_draft_was_unsure_is_verified_with_more_siblings():
    costs = Costs(draft_step=0.2, verify=[1.0, 1.2, 1.3], verify_tokens=[1, 2, 3],
                  ladder={1: 1.0, 2: 1.2, 3: 1.3, 8: 1.45})
    policy = AdaptiveK(costs, k_max=2)
    policy.allow_siblings()
    assert policy.verify_tokens(2, "draft", [0.99, 0.99]) == 3  # siblings would hardly be needed
    assert policy.verify_tokens(2, "draft", [0.4, 0.5]) == 8  # likely rejected: try the runners-up
    unsure = policy.sibling_gains("draft", 2, [0.4])  # the second token unread: its alpha stands in
    assert unsure[0] == pytest.approx(0.6 * policy.sibling_rate("draft"))
    assert policy.sibling_gains("draft", 2, []) == policy.sibling_gains("draft", 2)


def test_what_the_planner_remembers_between_updates_never_goes_stale():
    # plan weighs every k and size from alphas, sibling rates and sibling rows it keeps until
    # the next update; a twin that forgets them before every question must answer the same
    costs = Costs(draft_step=0.3, verify=[1.0, 1.2, 1.3, 1.35, 1.4, 1.45, 1.5],
                  verify_tokens=[1, 2, 3, 4, 6, 6, 8], ladder={1: 1.0, 2: 1.2, 4: 1.3, 8: 1.4, 16: 1.6})
    kept, fresh = AdaptiveK(costs, k_max=6), AdaptiveK(costs, k_max=6)
    rng = np.random.default_rng(5)
    asked = set()
    for round_ in range(60):
        if round_ == 3:
            for policy in (kept, fresh):
                policy.allow_siblings()
        regime = "code" if round_ % 20 >= 10 else "prose"
        answers = []
        for policy in (kept, fresh):
            policy.enter(regime)
            if policy is fresh:
                policy._memo.clear()
            plan = policy.plan("draft")
            k = max(plan[0], 1)
            gains = [policy.sibling_gains("draft", j) for j in range(7)]
            answers.append((plan, gains, policy.verify_tokens(k, "draft"),
                            policy.expected("draft", k, 8), policy.alphas("draft")))
        assert answers[0] == answers[1]
        asked.add(answers[0][2])
        n = int(rng.integers(0, k + 1))
        tried = int(rng.integers(1, 5)) if n < k else 0
        hit = int(rng.integers(0, tried)) if tried and rng.random() < 0.5 else None
        for policy in (kept, fresh):
            policy.update("draft", k, n, tried, hit)
    assert len(asked) > 1  # the updates moved the answers


def test_sibling_gains_for_every_k_follow_the_tree_of_that_k():
    policy = AdaptiveK(Costs(draft_step=0.3, verify=[1.0] * 9), k_max=8)
    policy.allow_siblings()
    for n in (5, 2, 7, 0, 3):
        policy.update("draft", 8, n, 3, 1 if n % 2 else None)
    alphas, rates = policy.alphas("draft"), policy.sibling_rates("draft")
    for k in range(1, 9):
        chances = rejection_chances(k, alphas[:k])
        tree = plan_tree(k, [SIBLINGS] * k, k + 1 + k * SIBLINGS, alphas[:k])
        assert policy.sibling_gains("draft", k) == pytest.approx([chances[d - 1] * rates[r] for d, r in tree.siblings])
    # past k_max (a caller's longer chain) the positions not tracked are unread
    chances, tree = rejection_chances(10, alphas), plan_tree(10, [SIBLINGS] * 10, 11 + 10 * SIBLINGS, alphas)
    assert policy.sibling_gains("draft", 10) == pytest.approx([chances[d - 1] * rates[r] for d, r in tree.siblings])


def test_fixed_k_pads_verification_and_ranks_sources_by_rate_at_its_k():
    costs = Costs(draft_step=0.3, verify=[1.0, 1.3, 1.2, 1.2], verify_tokens=[1, 2, 4, 4], draft_batch=0.5)
    policy = FixedK(2, costs)
    assert policy.verify_tokens(2) == 4 and policy.verify_tokens(1) == 2  # padded where cheaper
    for _ in range(10):
        policy.update("ngram:3", 2, 0)  # guesses keep failing
        policy.update("draft", 2, 2)
    assert [policy.plan(s)[0] for s in ("draft", "ngram:3")] == [2, 2]  # k never changes
    assert policy.plan("draft")[1] > policy.plan("ngram:3")[1]
    for _ in range(10):
        policy.update("ngram:3", 2, 2)  # now they land, and cost no draft steps
    assert policy.plan("ngram:3")[1] > policy.plan("draft")[1]
    policy.reset()
    assert policy.plan("draft")[1] > policy.plan("ngram:3")[1]  # back to the priors


def test_fixed_k_without_costs_keeps_the_sources_order_and_pads_nothing():
    policy = FixedK(3)
    assert policy.plan("draft") == policy.plan("ngram:2") == (3, 0.0)
    assert policy.verify_tokens(3) == 4


def rounds_to_probe(policy, source):
    """Rounds until the policy, which would not draft from `source`, probes it with k = 1."""
    for rounds in range(1, 100):
        if policy.choose(source) == 1:
            return rounds
    raise AssertionError("never probed")


def test_a_benched_draft_is_probed_soon_and_less_often_while_it_keeps_failing():
    policy = AdaptiveK(CHEAP_VERIFY, explore=None)
    policy.update("draft", 6, 0)
    policy.update("draft", 1, 0)  # two unlucky rounds: k = 0 wins now
    gaps = [rounds_to_probe(policy, "draft")]
    for _ in range(5):  # every probe fails: the waits double, up to probe_every
        policy.update("draft", 1, 0)
        gaps.append(rounds_to_probe(policy, "draft"))
    assert gaps == [4, 8, 16, 16, 16, 16]
    policy.update("draft", 1, 1)  # a probe lands: the next comes soon again
    if policy.choose("draft") == 0:
        assert rounds_to_probe(policy, "draft") < 4


def test_a_probe_that_lands_brings_a_good_draft_back():
    policy = AdaptiveK(CHEAP_VERIFY, explore=None)
    policy.update("draft", 6, 0)
    policy.update("draft", 1, 0)
    ks = []
    for _ in range(30):
        k = policy.choose("draft")
        ks.append(k)
        if k:
            policy.update("draft", k, k)  # the draft is in fact right
    assert ks[-1] >= 4 and ks.index(1) < 8


def test_drafting_that_barely_beats_plain_decoding_is_left_alone():
    costs = Costs(draft_step=0.2, verify=[1.0, 1.0])
    # k = 1 would make (1 + 0.23) / 1.2 = 1.025 tokens per second, plain decoding 1.0
    assert AdaptiveK(costs, k_max=1, prior=0.23, margin=0.0).choose("draft") == 1
    assert AdaptiveK(costs, k_max=1, prior=0.23, margin=0.05).choose("draft") == 0
    assert AdaptiveK(costs, k_max=1, prior=0.5, margin=0.05).choose("draft") == 1


class _Clocked:
    """A stand-in model whose forward of T tokens takes `cost[T]` seconds on a fake clock that
    runs slower with every forward (a host drifting during the calibration)."""

    def __init__(self, clock, cost):
        self.clock, self.cost = clock, cost

    def make_cache(self):
        from mlx_lm.models.cache import KVCache

        return [KVCache()]

    def __call__(self, tokens, cache):
        import mlx.core as mx

        n = tokens.shape[1]
        keys = mx.zeros((1, 1, n, 2))
        cache[0].update_and_fetch(keys, keys)
        if n in self.cost:
            self.clock.now += self.cost[n] * self.clock.drift
            self.clock.drift *= 1.03
        return mx.zeros((1, n, 4))


def test_calibration_interleaves_the_sizes_so_a_drifting_host_keeps_the_ratios(monkeypatch):
    import mlx_spec.policy as policy_module

    class Clock:
        now, drift = 0.0, 1.0

    clock = Clock()
    monkeypatch.setattr(policy_module.time, "perf_counter", lambda: clock.now)
    target_cost = {1: 1.0, 2: 1.2, 3: 1.3, 4: 1.4, 6: 1.5, 8: 1.6}
    target, draft = _Clocked(clock, target_cost), _Clocked(clock, {1: 0.3, 4: 0.6})
    costs = policy_module.calibrate(target, draft, k_max=3, context=4, repeats=5)
    # the host got 1.03x slower per forward (about 4x over the calibration), yet each ratio
    # stays within what one pass of drift moves it; measured one model after the other, the
    # draft would look three times as dear against the target's step as it is
    assert costs.draft_step / costs.verify[0] == pytest.approx(0.3, rel=0.25)
    assert costs.verify[3] / costs.verify[0] == pytest.approx(1.4, rel=0.25)
    assert costs.draft_batch / costs.draft_step == pytest.approx(2.0, rel=0.1)


class _ClockedDraft(_Clocked):
    """A clocked draft whose forward is a body (`model`) and an output layer: the whole layer
    costs `full` seconds a row more, a subset head (`_ClockedHead`) `subset`."""

    def __init__(self, clock, cost, full):
        super().__init__(clock, cost)
        self.full = full
        self.model = _Clocked(clock, cost)

    def __call__(self, tokens, cache):
        self.clock.now += self.full * tokens.shape[1]
        return super().__call__(tokens, cache)


class _ClockedHead:
    def __init__(self, clock, subset):
        self.clock, self.subset, self.rows = clock, subset, []

    def logits(self, hidden):
        self.rows.append(hidden.shape[1])
        self.clock.now += self.subset * hidden.shape[1]
        return hidden


def test_the_draft_is_timed_through_the_subset_head_it_runs(monkeypatch):
    import mlx_spec.policy as policy_module

    class Clock:
        now, drift = 0.0, 1.0

    clock = Clock()
    monkeypatch.setattr(policy_module.time, "perf_counter", lambda: clock.now)
    target = _Clocked(clock, {1: 1.0, 2: 1.2, 3: 1.3, 4: 1.4, 6: 1.5, 8: 1.6})
    draft = _ClockedDraft(clock, {1: 0.2, 4: 0.3}, full=0.1)

    def steps(head):
        clock.now, clock.drift = 0.0, 1.0
        costs = policy_module.calibrate(target, draft, k_max=3, context=4, repeats=3, head=head)
        return costs, costs.draft_step / costs.verify[0]

    whole, whole_step = steps(None)
    head = _ClockedHead(clock, subset=0.02)
    subset, subset_step = steps(head)
    assert whole.draft_head is None and subset.draft_head == "subset"
    assert set(head.rows) == {1, 4}  # the step and the batch (k_max + 1 rows) both go through it
    # the drift makes the ratio approximate; the 0.08 s a step the subset saves stands out of it
    assert subset_step < whole_step * 0.85
    assert subset.draft_batch < whole.draft_batch


def test_a_calibration_of_the_other_output_layer_is_measured_again(stories):
    from mlx_spec.pair import Pair

    model, tok = stories
    pair = Pair(model, tok, draft=model, target_name="t", draft_name="d")
    assert pair.engine.proposers[0].head is not None
    subset = pair.engine.policy.calibration
    assert subset.draft_head == "subset"
    ((key, entry),) = json.loads(calibration_path().read_text()).items()
    assert entry["draft_head"] == "subset"
    whole = Pair(model, tok, draft=model, target_name="t", draft_name="d", subset_vocab=False)
    assert whole.engine.policy.calibration.draft_head is None  # not the subset's price
    assert json.loads(calibration_path().read_text())[key]["draft_head"] is None
    # an entry written before the field existed was timed with the whole layer
    table = json.loads(calibration_path().read_text())
    del table[key]["draft_head"]
    calibration_path().write_text(json.dumps(table))
    assert Pair(model, tok, draft=model, target_name="t", draft_name="d").engine.policy.calibration.draft_head == "subset"
    assert cached_calibration(key, None, None, k_max=15).draft_head == "subset"  # kept: no model needed now
