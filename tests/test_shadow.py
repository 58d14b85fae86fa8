"""Free guesses that lose a round are scored against what the round committed."""

from __future__ import annotations

from mlx_spec.decode import shadow_outcome
from mlx_spec.proposers import NgramProposer


def test_a_guess_scores_its_leading_matches():
    assert shadow_outcome([5, 6, 7, 8], [5, 6, 9]) == (3, 2)


def test_positions_past_the_committed_tokens_are_not_counted():
    # all three committed tokens matched: nothing is known about the fourth guess
    assert shadow_outcome([5, 6, 7, 8], [5, 6, 7]) == (3, 3)


def test_a_wrong_first_guess_scores_zero():
    assert shadow_outcome([1, 2], [3]) == (1, 0)


def test_ngram_guesses_are_keyed_by_the_matched_length():
    ngram = NgramProposer(max_n=4, min_n=2)
    context = [1, 2, 3, 4, 9, 9, 1, 2, 3, 4]
    proposal = ngram.propose(context, 3, None, None)
    assert proposal.host == [9, 9, 1] and proposal.key == "ngram:4"
    short = ngram.propose([7, 8, 5, 6, 0, 5, 6], 2, None, None)
    assert short.host == [0, 5] and short.key == "ngram:2"
    assert short.truncated(1).host == [0] and short.truncated(1).key == "ngram:2"
