"""The costs learned from the rounds: the calibration holds on a steady host and is repriced
where the rounds contradict it."""

from __future__ import annotations

import pytest

from mlx_spec.policy import AdaptiveK, Costs, FixedK
from mlx_spec.round_costs import RoundCosts

# a plain step of 0.5 s, a draft step 0.3 of it, verifications that grow slowly with the tokens
CALIBRATED = Costs(draft_step=0.15, verify=[0.5, 0.6, 0.65, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8],
                   draft_batch=0.3, ladder={1: 0.5, 2: 0.6, 3: 0.65, 4: 0.7, 9: 0.8})
ROUNDS = [(1, ()), (5, (2, 1, 1, 1)), (9, (1,) * 8), (3, (2, 1)), (1, ()), (9, (3, 1, 1, 1, 1, 1, 1, 1))]


def timed(costs: Costs, draft: float = 1.0, verify: float = 1.0, rounds=ROUNDS, repeat: int = 10):
    """Rounds as a host would time them whose drafting costs `draft` and whose verifying costs
    `verify` times what `costs` say."""
    for _ in range(repeat):
        for verified, forwards in rounds:
            seconds = draft * sum(costs.draft_forward(t) for t in forwards) + verify * costs.forward(verified)
            yield verified, forwards, seconds


def learned(draft: float = 1.0, verify: float = 1.0, rounds=ROUNDS) -> RoundCosts:
    learner = RoundCosts(CALIBRATED)
    for round_ in timed(CALIBRATED, draft, verify, rounds):
        learner.observe(*round_)
    return learner


def test_rounds_timed_as_calibrated_keep_the_calibration():
    learner = learned()
    assert learner.draft_price == pytest.approx(1.0, abs=1e-6)
    assert learner.costs is CALIBRATED


def test_a_draft_dearer_than_calibrated_is_repriced_from_the_rounds():
    learner = learned(draft=1.4)
    assert learner.draft_price == pytest.approx(1.4, rel=0.05)
    assert learner.costs.draft_step == pytest.approx(0.15 * learner.draft_price)
    assert learner.costs.draft_batch == pytest.approx(0.3 * learner.draft_price)
    assert learner.costs.verify == CALIBRATED.verify and learner.costs.ladder == CALIBRATED.ladder
    assert CALIBRATED.draft_step == 0.15  # the calibration itself is left as measured


def test_a_draft_cheaper_than_calibrated_is_repriced_too():
    assert learned(draft=0.6).draft_price == pytest.approx(0.6, rel=0.05)


def test_a_host_that_slows_as_a_whole_changes_no_price():
    learner = learned(draft=1.3, verify=1.3)
    assert learner.scales[0] == pytest.approx(1.3, rel=0.03) and learner.scales[1] == pytest.approx(1.3, rel=0.03)
    assert learner.costs is CALIBRATED


def test_rounds_that_never_draft_say_nothing_of_the_drafts_price():
    learner = learned(verify=1.5, rounds=[(1, ()), (4, ())])  # plain rounds and n-gram guesses
    assert learner.draft_price == pytest.approx(1.0, rel=0.01)
    assert learner.costs is CALIBRATED


def test_a_drift_within_the_band_keeps_the_calibration():
    learner = learned(draft=1.1)
    assert learner.draft_price == pytest.approx(1.1, rel=0.03)
    assert learner.costs is CALIBRATED
    # a steady draft run at 0.8 of its calibrated price (host H: the subset head, the
    # acceptance step) plans as calibrated
    assert learned(draft=0.8).costs is CALIBRATED


def test_one_stalled_round_moves_the_price_little():
    learner = learned()
    learner.observe(9, (1,) * 8, 60.0)  # a round that waited on something else for a minute
    assert learner.draft_price < 1.15 and learner.costs is CALIBRATED


def test_the_price_follows_a_host_whose_draft_turns_dear_and_back():
    learner = learned(draft=1.5)
    assert learner.draft_price > 1.3
    for round_ in timed(CALIBRATED, repeat=30):
        learner.observe(*round_)
    assert learner.draft_price == pytest.approx(1.0, abs=0.05)
    assert learner.costs is CALIBRATED


def test_a_misread_calibration_stops_benching_a_draft_once_the_rounds_show_its_price():
    # calibrated on a bad minute: a draft step read at 0.8 of a plain step (it costs 0.25)
    misread = Costs(draft_step=0.4, verify=[0.5, 0.6, 0.62, 0.64, 0.66], draft_batch=0.5)
    true_draft = 0.25 / 0.8
    policies = {learn: AdaptiveK(misread, k_max=4, learn_costs=learn, prior=0.7) for learn in (False, True)}
    for policy in policies.values():
        assert policy.plan("draft")[0] == 0  # at 0.8 a step, a chain at 70% does not pay
        for verified, forwards, seconds in timed(misread, draft=true_draft, rounds=[(5, (1, 1, 1, 1)), (1, ())], repeat=30):
            policy.settle(1, verified, forwards, seconds)
    assert policies[True].draft_price == pytest.approx(true_draft, rel=0.1)  # the prior holds it back a little
    assert policies[True].plan("draft")[0] > 0
    assert policies[False].plan("draft")[0] == 0 and policies[False].draft_price is None
    assert policies[True].calibration is misread  # reports still price at the calibration


def test_a_fixed_k_weighs_its_sources_and_tail_rows_at_the_learned_prices():
    policy = FixedK(3, CALIBRATED, learn_costs=True)
    for verified, forwards, seconds in timed(CALIBRATED, draft=1.6, rounds=[(4, (1, 1, 1)), (1, ())], repeat=30):
        policy.settle(4, verified, forwards, seconds)
    assert policy.draft_price == pytest.approx(1.6, rel=0.05)
    assert policy.costs is policy.estimates.costs and policy.costs.draft_step == pytest.approx(0.15 * policy.draft_price)
    assert policy.calibration is CALIBRATED
    assert FixedK(3, CALIBRATED).draft_price is None  # not learning unless asked


def test_a_pairs_policy_learns_from_every_round_it_decodes_and_reports_the_price(stories_path):
    from mlx_spec.pair import load_pair

    pair = load_pair(str(stories_path), draft=str(stories_path))
    plain = load_pair(str(stories_path), draft="none")
    result = pair.generate("Once upon a time", chat=False, max_tokens=40)
    policy = pair.engine.policy
    assert policy.round_costs.rounds == result.stats.rounds > 1
    assert result.stats.draft_price == policy.draft_price > 0
    assert result.stats.to_dict()["draft_price"] == policy.draft_price
    # whatever the prices, greedy output is the target's
    assert result.tokens == plain.generate("Once upon a time", chat=False, max_tokens=40).tokens
    fixed = load_pair(str(stories_path), draft=str(stories_path), k=3)
    fixed.generate("Once upon a time", chat=False, max_tokens=20)
    assert fixed.engine.policy.estimates.round_costs.rounds == fixed.last_stats.rounds  # a fixed k learns too
    calibrated = load_pair(str(stories_path), draft=str(stories_path), learn_costs=False)
    assert calibrated.generate("Once upon a time", chat=False, max_tokens=10).stats.draft_price is None


def test_the_statistics_block_shows_the_drafts_price_where_it_is_learned():
    from mlx_spec.render import stats_rows
    from mlx_spec.stats import Stats

    assert dict(stats_rows(Stats(draft_price=1.2)))["draft's price"].startswith("1.20× what the calibration said")
    assert dict(stats_rows(Stats()))["draft's price"] == "—"
    # nothing to learn where no draft model is priced (n-gram guesses are free)
    assert AdaptiveK(Costs(draft_step=0.0, verify=[0.5, 0.6]), k_max=1, learn_costs=True).draft_price is None
