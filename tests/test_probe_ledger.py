"""Probes are paid from a ledger: what drafting saved over plain decoding, in plain steps."""

from __future__ import annotations

import pytest
from conftest import random_llama

from mlx_spec.decode import Engine
from mlx_spec.policy import AdaptiveK, Costs
from mlx_spec.proposers import DraftModelProposer
from mlx_spec.stats import Stats

# prices as on this CPU: a draft step is 0.35 of a target step, a 9-token draft batch 0.55
COSTS = Costs(draft_step=0.35, verify=[1.0, 1.28, 1.5] + [1.53] * 6, draft_batch=0.55)
PROMPT = "Once upon a time"


def benched(**kwargs) -> AdaptiveK:
    """A policy whose draft failed its first two rounds (k = 0 wins now), both settled."""
    policy = AdaptiveK(COSTS, **kwargs)
    for k in (6, 1):
        policy.update("draft", k, 0)
        policy.settle(1, k + 1, (1,) * k)
    return policy


def rounds_to_probe(policy: AdaptiveK, limit: int = 400) -> int | None:
    """Plain rounds (one token each, settled) until the policy probes the draft."""
    for rounds in range(1, limit + 1):
        if policy.choose("draft") == 1:
            return rounds
        policy.settle(1, 1)
    return None


def test_a_round_enters_its_tokens_less_its_price_in_plain_steps():
    policy = AdaptiveK(COSTS)
    policy.settle(4, 4, (1, 1, 1))  # 3 drafts accepted + the target's token, verified in 4 rows
    assert policy.saved == pytest.approx(4 - (1.53 + 3 * 0.35))
    policy.settle(1, 1)  # a plain round costs what it emits
    assert policy.saved == pytest.approx(4 - (1.53 + 3 * 0.35)) and policy.emitted == 5
    policy.reset()
    assert (policy.saved, policy.emitted) == (0.0, 0)


def test_a_failed_probe_costs_the_wider_verification_and_the_drafts_catch_up():
    policy = AdaptiveK(COSTS)
    assert policy.probe_price("ngram:3") == pytest.approx(0.28)  # free: the wider verification only
    policy.idle["draft"] = 7  # 8 tokens to catch up on
    assert policy.probe_price("draft") == pytest.approx(0.28 + COSTS.draft_forward(8))


def test_a_drafts_first_probe_comes_on_schedule_even_when_the_ledger_cannot_pay():
    """A failed opening (a reply's first word chosen otherwise) must not bench the draft for
    the rest of the reply: its first probe is made on schedule."""
    lost = benched()
    assert lost.saved < -3 and lost.in_red()  # the two failed rounds cost over 3 plain steps
    assert rounds_to_probe(lost) == rounds_to_probe(benched(explore=None)) == 4
    lost.reset()
    assert lost.probed == set()  # a new conversation gets its first probe again


def test_after_its_first_probe_a_draft_that_lost_is_probed_only_once_the_budget_can_pay():
    lost = benched()
    first = rounds_to_probe(lost)
    lost.update("draft", 1, 0)  # the probe failed too
    lost.settle(1, 2, (first + 1,))
    loss = -lost.saved
    emitted = lost.emitted
    waited = rounds_to_probe(lost)
    assert waited is not None and lost.saved == -loss  # plain rounds cost what they emit
    assert waited > 8  # longer than the schedule's doubled wait: the ledger decides
    # the probe came once 3% of the tokens + 1 step of grace covered the loss and a failed
    # probe (0.28 for the wider verification, 0.35 .. 0.55 for the draft's catch-up)
    tokens = emitted + waited - 1
    assert (loss + 0.63 - 1.0) / 0.03 <= tokens <= (loss + 0.83 - 1.0) / 0.03 + 1


def test_a_draft_that_saved_steps_is_probed_on_schedule():
    policy = benched()
    policy.settle(12, 16, (1,) * 11)  # an earlier stretch of accepted drafting paid for probes
    assert policy.saved > 0
    assert rounds_to_probe(policy) == 4


def test_free_sources_are_scored_every_round_and_never_probed():
    policy = AdaptiveK(COSTS)
    for _ in range(6):
        policy.update("ngram:2", 8, 0)
    assert [policy.choose("ngram:2") for _ in range(40)] == [0] * 40


def generation(stories, explore):
    """160 greedy tokens of the stories model with a random (useless) draft, traced."""
    model, tok = stories
    draft = DraftModelProposer(random_llama(vocab=512, dim=32, layers=1, seed=3), 512)
    policy = AdaptiveK(COSTS, k_max=8, explore=explore)
    engine = Engine(model, tok, [draft], policy=policy, tree=False)
    stats = Stats(trace=[])
    tokens = [t for step in engine.decode(tok.encode(PROMPT), max_tokens=160, stats=stats) for t in step.tokens]
    return tokens, stats, policy


def test_with_a_useless_draft_exploring_costs_at_most_the_budget(stories):
    tokens, stats, policy = generation(stories, explore=0.03)
    plain_tokens, scheduled, _ = generation(stories, explore=None)
    assert tokens == plain_tokens  # the policy changes the price, never the output
    steps = [COSTS.round_steps(r["verified"], r["draft_forwards"]) for r in stats.trace]
    # the engine settles every round: the ledger is the trace's tokens less their prices
    assert policy.saved == pytest.approx(sum(r["emitted"] for r in stats.trace) - sum(steps))
    assert policy.emitted == len(tokens)
    # after the draft was first benched, what the probes lost stays within the budget
    first_plain = next(i for i, r in enumerate(stats.trace) if r["k"] == 0)
    explored = sum(r["emitted"] - s for r, s in zip(stats.trace[first_plain:], steps[first_plain:]))
    assert explored >= -(0.03 * len(tokens) + 1.0)
    probes = lambda s: sum(1 for r in s.trace[first_plain:] if r["k"] > 0)  # noqa: E731
    assert 0 < probes(stats) < probes(scheduled)
    assert COSTS.modeled_speedup(stats) > COSTS.modeled_speedup(scheduled)


def test_a_generation_in_the_red_drafts_its_plan_and_no_further():
    policy = AdaptiveK(COSTS, k_max=8)
    assert policy.chain("draft", 2) == (6, policy.stop_below)  # three times the plan
    policy.settle(1, 9, (1,) * 8)  # a chain of 8, none accepted: 3.3 plain steps lost
    assert policy.in_red()
    assert policy.chain("draft", 2) == (2, policy.stop_below)  # a failed round loses no more than its plan
    for _ in range(2):
        policy.settle(9, 9, (1,) * 8)  # chains accepted whole pay the loss back
    assert not policy.in_red() and policy.chain("draft", 2)[0] == 6
    assert not AdaptiveK(COSTS, explore=None).in_red()
