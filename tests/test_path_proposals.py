"""A draft model checking an n-gram's guess in one forward ("draft+ngram" proposals): lossless
when greedy and when sampling, one host sync per round, caches exact."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import ByteTokenizer, CountingModel, quantized_copy, random_llama
from test_sampling_lossless import RUNS, bound, chi_square, exact_distribution

from mlx_spec.decode import Engine
from mlx_spec.pair import Pair
from mlx_spec.policy import FixedK
from mlx_spec.proposers import DraftModelProposer, NgramProposer, cache_length
from mlx_spec.sampling import SamplingParams

PROMPT = "Tom and Lily went to the park. Tom and Lily"


class PreferPath(FixedK):
    """Fixed k, always the draft-along-a-guess proposal when there is a guess."""

    def plan(self, source):
        return self.k, 1.0 if "+" in source else 0.0


def path_pair(stories, draft, k=6):
    model, tok = stories
    pair = Pair(model, tok, draft=draft, ngram=True, k=k)
    pair.engine.policy = PreferPath(k)
    return pair


def test_greedy_draft_checked_guesses_equal_plain(stories):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=60, chat=False).tokens
    pair = path_pair(stories, quantized_copy(model))
    result = pair.generate(PROMPT, max_tokens=60, chat=False)
    assert result.tokens == plain
    assert result.stats.rounds_by_source["draft+path"] > 0


def test_path_rounds_keep_one_sync_one_target_forward_and_exact_caches(stories):
    model, tok = stories
    target = CountingModel(model)
    pair = path_pair(stories, quantized_copy(model))
    pair.target = target
    pair.engine.target = target
    result = pair.generate(PROMPT, max_tokens=50, chat=False)
    stats = result.stats
    assert stats.host_syncs == stats.rounds == stats.target_forwards
    assert stats.rounds_by_source["draft+path"] > 0
    engine, draft = pair.engine, pair.engine.proposers[1]
    assert cache_length(engine.cache) == len(engine.context) - 1
    assert cache_length(draft.cache) == len(draft.seen)
    assert draft.seen == engine.context[: len(draft.seen)]
    # continuing from those caches still equals plain decoding of the whole text
    text_so_far = list(engine.context)
    more = pair.generate(text_so_far, max_tokens=20, chat=False)
    assert more.stats.prompt_tokens == 1  # both caches were reused
    assert more.tokens == Pair(model, tok).generate(text_so_far, max_tokens=20, chat=False).tokens


VOCAB = 8


@pytest.mark.parametrize("setting", [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9)])
def test_sampled_draft_checked_guesses_follow_the_target_distribution(setting):
    target = random_llama(vocab=VOCAB, dim=32, layers=2, seed=11, scale=0.8)
    draft = random_llama(vocab=VOCAB, dim=32, layers=1, seed=12, scale=0.8)
    engine = Engine(target, ByteTokenizer(), [NgramProposer(max_n=2, min_n=1), DraftModelProposer(draft, VOCAB)],
                    policy=PreferPath(3))
    exact = exact_distribution(target, SamplingParams(**setting))
    counts, path_rounds = {}, 0
    for seed in range(RUNS):
        tokens = []
        for step in engine.decode([1, 2, 1, 2, 1], sampling=SamplingParams(seed=seed, **setting), max_tokens=3):
            tokens += step.tokens
        path_rounds += step.stats.rounds_by_source["draft+path"]
        counts[tuple(tokens)] = counts.get(tuple(tokens), 0) + 1
    assert path_rounds > RUNS / 2
    stat, dof = chi_square(counts, exact)
    assert stat < bound(dof), f"chi-square {stat:.1f} with {dof} dof"
