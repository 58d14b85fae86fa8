"""A draft checking an n-gram's guess in one forward ("draft+ngram:n"): priced against plain
decoding, and starting from what the draft alone has shown."""

from __future__ import annotations

import pytest

from mlx_spec.policy import AdaptiveK, Costs

# prices as on this CPU: a draft step is 0.39 of a target step, a 16-token draft batch 0.56
COSTS = Costs(draft_step=0.39, verify=[1.0, 1.15, 1.22, 1.33, 1.34, 1.34, 1.4, 1.4, 1.61],
              verify_tokens=[1, 2, 3, 4, 6, 6, 8, 8, 16], draft_batch=0.56)


def test_a_draft_checking_a_guess_must_beat_plain_decoding_not_its_own_k0():
    """Its k = 0 would still pay the draft's batch forward; plain decoding does not."""
    policy = AdaptiveK(COSTS, margin=0.2)
    policy.allow_siblings()
    policy.update("draft", 4, 0)
    policy.update("draft", 1, 0)
    key = "draft+ngram:2"
    best = max(policy.rate(key, k) for k in range(1, 9))
    # the best k beats its own k = 0 by the margin, and plain decoding by less
    assert (1 + policy.margin) * policy.rate(key, 0) < best < (1 + policy.margin) / COSTS.verify[0]
    assert policy.choose(key) == 0


def test_a_draft_checking_a_guess_starts_from_the_drafts_sibling_rate():
    policy = AdaptiveK(COSTS)
    assert policy.sibling_rate("draft+ngram:2") == policy.sibling_rate("draft") == 0.5
    for _ in range(3):
        policy.update("draft", 3, 1, sibling=False)  # the runners-up never held the target's pick
    assert policy.sibling_rate("draft+ngram:2") == policy.sibling_rate("draft") < 0.3
    policy.update("draft+ngram:2", 3, 1, sibling=True)  # then its own rounds count
    assert policy.sibling_rate("draft+ngram:2") > policy.sibling_rate("draft")
