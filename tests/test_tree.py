"""The token tree: siblings of the drafted tokens in the verification's padding rows."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import ByteTokenizer, quantized_copy, random_llama

import mlx_spec.tree as tree_module
from mlx_spec.decode import Engine
from mlx_spec.policy import AdaptiveK, Costs, FixedK
from mlx_spec.proposers import DraftModelProposer, NgramProposer, cache_length, rollback
from mlx_spec.tree import Tree, keep_node, plan_tree, supports_tree, tree_forward
from mlx_lm.models.cache import make_prompt_cache

PROMPT = "Once upon a time"


def padded_costs(size: int = 16, k_max: int = 15) -> Costs:
    """Costs under which every verification of k >= 2 is fed `size` rows (as on OpenBLAS)."""
    return Costs(draft_step=0.2, verify=[1.0] + [1.3] * k_max, verify_tokens=[1, 2] + [size] * (k_max - 1))


def test_every_depth_gets_its_best_runner_up_before_any_depth_gets_a_second():
    assert plan_tree(3, [4, 4, 4], 8).siblings == [(1, 0), (2, 0), (3, 0), (1, 1)]
    assert len(plan_tree(3, [4, 4, 4], 16).siblings) == 12
    assert plan_tree(2, [4, 1], 16).siblings == [(1, 0), (2, 0), (1, 1), (1, 2), (1, 3)]
    assert plan_tree(2, [4, 4], 3).siblings == []  # no free row: the chain alone


def test_siblings_go_where_the_draft_expects_its_chain_to_break():
    # sure of d1..d7, unsure of d8, sure of d9, d10 not read: rows go to depths 8 and 10
    confidences = [0.99] * 7 + [0.6, 0.9]
    assert plan_tree(10, [4] * 10, 16, confidences).siblings == [(8, 0), (10, 0), (8, 1), (10, 1), (8, 2)]
    # depth 1 is always reached: an unsure first token gets more rows than an unsure third
    assert plan_tree(3, [4] * 3, 8, [0.5, 0.9, 0.3]).siblings == [(1, 0), (3, 0), (1, 1), (3, 1)]


def test_a_chain_that_reads_its_tokens_records_the_drafts_confidence_in_each(stories):
    model, tok = stories
    proposer = DraftModelProposer(quantized_copy(model, bits=2), 512)
    context = tok.encode(PROMPT)
    proposer.prefill(context)
    from mlx_spec.sampling import SamplingParams

    proposal = proposer.propose(context, 6, SamplingParams(), None, stop_below=1e-9)
    assert len(proposal.confidences) == proposal.k - 1  # the chain's last token is not read
    assert all(0.0 < c <= 1.0 for c in proposal.confidences)
    assert len(proposal.siblings) == proposal.k
    assert proposal.truncated(3).confidences == proposal.confidences[:3]


def test_each_node_sees_the_cache_its_ancestors_and_itself():
    tree = Tree(2, [(1, 0), (2, 0)], 6)  # root, d1, d2, sibling of d1, sibling of d2, padding
    mask = np.array(tree.mask(cached=3))
    assert mask.shape == (6, 9)
    assert mask[:, :3].all()
    own = mask[:, 3:].astype(int)
    assert own.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],  # sibling of d1: the root and itself, not d1
        [1, 1, 0, 0, 1, 0],  # sibling of d2: root, d1 and itself, not d2
        [0, 0, 0, 0, 0, 1],  # padding
    ]
    assert tree.depths == [0, 1, 2, 1, 2, 0]


def models(stories):
    return {"stories260K": stories[0], "random": random_llama(seed=5)}


@pytest.mark.parametrize("name", ["stories260K", "random"])
def test_sibling_rows_equal_the_same_tokens_run_as_a_chain(stories, name):
    model = models(stories)[name]
    context, root, chain, siblings = [5, 9, 30, 41], 17, [60, 70], [80, 90]
    cache = make_prompt_cache(model)
    model(mx.array(context)[None], cache=cache)
    tree = Tree(2, [(1, 0), (2, 0)], 6)
    rows = tree_forward(model, mx.array([root, *chain, *siblings, 0]), tree, cache)
    expected = {
        0: context + [root],
        2: context + [root, *chain],
        3: context + [root, siblings[0]],
        4: context + [root, chain[0], siblings[1]],
    }
    for row, tokens in expected.items():
        want = model(mx.array(tokens)[None])[0, -1]
        assert mx.allclose(rows[row], want, atol=1e-4, rtol=1e-4), row
    assert cache_length(cache) == len(context) + 6


def test_a_kept_sibling_leaves_the_cache_of_its_path(stories):
    model = stories[0]
    context, root, chain, sibling = [5, 9, 30, 41], 17, [60, 70], 90
    cache = make_prompt_cache(model)
    model(mx.array(context)[None], cache=cache)
    tree_forward(model, mx.array([root, *chain, sibling]), Tree(2, [(2, 0)], 4), cache)
    base = len(context)  # the root's entry
    keep_node(cache, base + 3, base + 2)  # d1 accepted, the sibling of d2 was the correction
    rollback(cache, base + 3)
    path = context + [root, chain[0], sibling]
    after = model(mx.array([33])[None], cache=cache)[0, -1]
    want = model(mx.array(path + [33])[None])[0, -1]
    assert mx.allclose(after, want, atol=1e-4, rtol=1e-4)


def test_the_probe_refuses_a_model_whose_tree_rows_come_out_wrong(stories, monkeypatch):
    model = stories[0]
    assert supports_tree(model)
    # positions ignored (every token rotated as if it came right after the cache): wrong rows
    monkeypatch.setattr(tree_module.PositionedRope, "__call__", lambda self, x, offset=0: self.rope(x, offset=offset))
    assert not supports_tree(model)


def test_a_model_without_rope_layers_verifies_chains():
    class Opaque:
        layers = [object()]

        def __call__(self, inputs, cache=None):
            raise AssertionError("never called")

    assert not supports_tree(Opaque())


def engine(stories, draft, policy, tree=True, ngram=False):
    model, tok = stories
    proposers = [NgramProposer()] if ngram else []
    proposers.append(DraftModelProposer(draft, 512))
    return Engine(model, tok, proposers, policy=policy, tree=tree)


def tokens_of(engine, prompt, max_tokens=60):
    steps = list(engine.decode(prompt, max_tokens=max_tokens))
    return [t for s in steps for t in s.tokens], steps[-1].stats


@pytest.fixture(scope="module")
def weak_draft(stories):
    return quantized_copy(stories[0], bits=2)  # often wrong, its runner-up often right


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_greedy_output_with_siblings_equals_plain_decoding(stories, weak_draft, policy):
    model, tok = stories
    prompt = tok.encode(PROMPT)
    plain, _ = tokens_of(Engine(model, tok), prompt)
    make = {"fixed": lambda: FixedK(3, padded_costs()), "adaptive": lambda: AdaptiveK(padded_costs(), 15)}[policy]
    spec = engine(stories, weak_draft, make())
    assert spec.tree
    tokens, stats = tokens_of(spec, prompt)
    assert tokens == plain
    assert stats.sibling_hits > 0  # the tree did supply tokens
    assert cache_length(spec.cache) == len(prompt) + len(tokens) - 1


def test_siblings_save_rounds_over_the_chain_alone(stories, weak_draft):
    prompt = stories[1].encode(PROMPT)
    _, chain = tokens_of(engine(stories, weak_draft, FixedK(3, padded_costs()), tree=False), prompt)
    _, tree = tokens_of(engine(stories, weak_draft, FixedK(3, padded_costs())), prompt)
    assert chain.sibling_hits == 0
    assert tree.rounds < chain.rounds


class RankRecordingK(FixedK):
    """A fixed k that records what each round tells the policy about its siblings."""

    def __init__(self, *args):
        super().__init__(*args)
        self.told = []

    def update(self, source, k, n, siblings_tried=0, sibling_hit=None):
        self.told.append((k, n, siblings_tried, sibling_hit))
        super().update(source, k, n, siblings_tried, sibling_hit)


def test_the_policy_learns_which_rank_of_runner_up_was_the_correction(stories, weak_draft):
    policy = RankRecordingK(3, padded_costs())
    _, stats = tokens_of(engine(stories, weak_draft, policy), stories[1].encode(PROMPT))
    hits = [hit for _, _, _, hit in policy.told if hit is not None]
    assert len(hits) == stats.sibling_hits > 0
    # 16 rows hold all 4 runners-up of each of the 3 depths: a rejection tried every rank
    assert all(tried == 4 for k, n, tried, _ in policy.told if n < k)
    assert all(tried == 0 and hit is None for k, n, tried, hit in policy.told if n == k)
    assert set(hits) <= {0, 1, 2, 3} and max(hits) > 0  # the weak draft's further runners-up land too
    rates = policy.estimates.sibling_rates("draft")
    assert rates[0] != policy.estimates.sibling_prior  # learned from the rounds


def test_no_siblings_where_the_verification_has_no_free_row(stories, weak_draft):
    prompt = stories[1].encode(PROMPT)
    _, stats = tokens_of(engine(stories, weak_draft, FixedK(3, Costs(0.2, [1.0] * 4))), prompt)
    assert stats.sibling_hits == 0


def test_a_decode_continues_exactly_after_a_sibling_ends_a_turn(stories, weak_draft):
    """The caches after rounds that took a sibling hold exactly the committed tokens: a second
    turn that extends the first reuses them and still equals plain decoding."""
    model, tok = stories
    spec = engine(stories, weak_draft, FixedK(3, padded_costs()), ngram=True)
    first, stats = tokens_of(spec, tok.encode(PROMPT), max_tokens=30)
    assert stats.sibling_hits > 0
    follow = tok.encode(PROMPT) + first + tok.encode(" Then")
    second, _ = tokens_of(spec, follow, max_tokens=30)
    plain, _ = tokens_of(Engine(model, tok), follow, max_tokens=30)
    assert second == plain


def test_siblings_raise_the_expected_tokens_of_rounds_with_free_rows():
    policy = AdaptiveK(padded_costs(), 15)
    for _ in range(6):
        policy.update("draft", 3, 1)
    chain = [policy.expected("draft", k) for k in range(4)]
    policy.allow_siblings()
    with_tree = [policy.expected("draft", k) for k in range(4)]
    assert with_tree[:2] == chain[:2]  # k <= 1: verified unpadded, no sibling
    assert with_tree[2] > chain[2] and with_tree[3] > chain[3]
    assert policy.expected("ngram", 3) == AdaptiveK(padded_costs(), 15).expected("ngram", 3)
    before = policy.sibling_rate("draft")
    policy.update("draft", 3, 1, 1, 0)
    assert policy.sibling_rate("draft") > before
    policy.update("draft", 3, 1, 1, None)
    policy.update("draft", 3, 1, 1, None)
    assert policy.sibling_rate("draft") < before


def test_an_engine_can_be_told_to_verify_chains_only(stories, weak_draft):
    assert not engine(stories, weak_draft, FixedK(3, padded_costs()), tree=False).tree
    assert not Engine(*stories).tree  # no proposer, nothing to branch


def test_the_vocabulary_is_never_exceeded_by_runners_up():
    model = random_llama(vocab=3, dim=32, seed=2)
    spec = Engine(model, ByteTokenizer(), [DraftModelProposer(random_llama(vocab=3, dim=32, seed=4), 3)],
                  policy=FixedK(2, padded_costs(size=8)))
    tokens, _ = tokens_of(spec, [0, 1, 2, 1], max_tokens=20)
    plain, _ = tokens_of(Engine(model, ByteTokenizer()), [0, 1, 2, 1], max_tokens=20)
    assert tokens == plain
