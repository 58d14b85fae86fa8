"""Prose and code: a paid source is learned per regime of the reply (inside a fenced code
block or not), so a draft benched on a reply's prose opening is drafted afresh on its code."""

from __future__ import annotations

from conftest import ByteTokenizer, random_llama

from mlx_spec.decode import Engine
from mlx_spec.policy import AdaptiveK, Costs, FixedK
from mlx_spec.sampling import SamplingParams
from mlx_spec.stats import Stats
from mlx_spec.text import CodeFences

# verifying costs little more than a plain step, so a draft the policy trusts is drafted
COSTS = Costs(draft_step=0.37, verify=[1.0, 1.2, 1.3, 1.33, 1.35, 1.37, 1.4, 1.42, 1.45])


def test_fences_switch_the_regime_even_when_split_across_pieces():
    fences = CodeFences()
    assert fences.regime == "prose"
    for piece, regime in [("Here is the code:\n\n`", "prose"), ("``python\n", "code"),
                          ("def f(x):\n    return x\n``", "code"), ("`\n\nIt returns x.", "prose"),
                          ("\n```js\nf()\n", "code")]:
        fences.feed(piece)
        assert fences.regime == regime, piece


def fail_openings(policy, rounds=6):
    for _ in range(rounds):
        policy.update("draft", 4, 0)


def test_a_draft_that_failed_on_prose_starts_from_the_prior_on_code():
    policy = AdaptiveK(COSTS)
    fail_openings(policy)
    prose = policy.alpha("draft")
    assert prose < 0.5 and policy.choose("draft") == 0
    policy.enter("code")
    assert policy.alpha("draft") == policy.prior and policy.choose("draft") > 0
    for _ in range(3):
        policy.update("draft", 4, 4)
    policy.enter("prose")  # back to prose: what was learned there applies again
    assert policy.alpha("draft") == prose
    policy.enter("code")
    assert policy.alpha("draft") > policy.prior


def test_without_regimes_the_draft_stays_benched_on_code():
    policy = AdaptiveK(COSTS, regimes=False)
    fail_openings(policy)
    policy.enter("code")
    assert policy.alpha("draft") < 0.5 and policy.choose("draft") == 0


def test_free_sources_are_learned_across_regimes():
    policy = AdaptiveK(COSTS)
    for _ in range(4):
        policy.update("ngram:3", 4, 4)
    learned = policy.alpha("ngram:3")
    policy.enter("code")
    assert policy.alpha("ngram:3") == learned > policy.free_prior


def test_the_first_probe_is_made_on_schedule_in_each_regime():
    policy = AdaptiveK(COSTS, probe_soon=2)
    fail_openings(policy)
    policy.saved = -50.0  # the ledger far in the red: later probes wait for it
    prose = [policy.choose("draft") for _ in range(4)]
    policy.update("draft", 1, 0)  # the probe failed
    assert prose.count(1) == 1
    assert [policy.choose("draft") for _ in range(8)].count(1) == 0  # the ledger holds it back
    policy.enter("code")
    fail_openings(policy)
    code = [policy.choose("draft") for _ in range(4)]
    assert code.count(1) == 1  # code's own first probe


class FenceTokenizer(ByteTokenizer):
    """Token `fence` decodes to a code fence."""

    def __init__(self, fence: int):
        super().__init__()
        self.fence = fence

    def decode(self, ids, skip_special_tokens=True):
        return "".join("```" if i == self.fence else chr(65 + i) for i in ids)


class RegimeRecorder(FixedK):
    """Plain decoding that records the regime each round was entered in."""

    def __init__(self):
        super().__init__(0)
        self.regimes = []

    def enter(self, regime):
        self.regimes.append(regime)


def test_the_engine_tells_the_policy_the_regime_of_each_round():
    model, prompt, sampling = random_llama(vocab=32, seed=1), [1, 2, 3], SamplingParams(temperature=1.0, seed=5, invariant=False)
    plain = Engine(model, ByteTokenizer())
    tokens = [t for step in plain.decode(prompt, sampling=sampling, max_tokens=24) for t in step.tokens]
    # a token first emitted after the first round decodes as the fence
    j = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    policy = RegimeRecorder()
    engine = Engine(model, FenceTokenizer(tokens[j]), policy=policy)
    stats = Stats(trace=[])
    steps = engine.decode(prompt, sampling=sampling, max_tokens=24, stats=stats)
    assert [t for step in steps for t in step.tokens] == tokens
    # round r (one token each) is entered with tokens[:r] decoded
    expected = ["code" if tokens[:r].count(tokens[j]) % 2 else "prose" for r in range(len(tokens))]
    assert policy.regimes == expected and "code" in expected and "prose" in expected[j + 1:]
    assert [record["regime"] for record in stats.trace] == expected  # what --trace shows
