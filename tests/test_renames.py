"""The n-gram learns the reply's renames: a token put in place of the source's, twice, is
applied to the guesses (looked up with the source's token, proposed with the reply's). And it
follows the copy: of a line the source holds twice, the place the reply copies from goes on."""

from mlx_spec.proposers import NgramProposer

OLD, NEW = 50, 60
# the source: a name used three times, each time with other text around it
SOURCE = [1, 2, OLD, 3, 4, 5, 6, OLD, 7, 8, 9, 11, OLD, 12, 13, 14]
# the reply so far copies the source with the name changed at its first two uses
REPLY = [1, 2, NEW, 3, 4, 5, 6, NEW, 7, 8, 9, 11]


def lookup(renames: int, reply=REPLY, drafted=(), k=4):
    ngram = NgramProposer(max_n=3, min_n=2, renames=renames)
    ngram.prefill(SOURCE)
    return ngram, ngram.continuation(SOURCE + list(reply), list(drafted), k)


def test_a_rename_seen_twice_is_applied_to_the_guess():
    ngram, guess = lookup(renames=2)
    assert ngram.renamed == {OLD: NEW}
    assert guess == [NEW, 12, 13, 14]
    _, plain = lookup(renames=0)
    assert plain == [OLD, 12, 13, 14]  # without renames the guess breaks at the name


def test_the_lookup_reads_the_new_name_as_the_old_one():
    _, guess = lookup(renames=2, drafted=[NEW, 12], k=2)
    assert guess == [13, 14]  # "11 NEW 12" found as "11 OLD 12"
    _, plain = lookup(renames=0, drafted=[NEW, 12], k=2)
    assert plain == []  # "NEW 12" never appeared


def test_one_use_is_not_yet_a_rename():
    ngram, guess = lookup(renames=2, reply=REPLY[:7] + [OLD, 7, 8, 9, 11])
    assert ngram.renamed == {} and ngram.seen == {(OLD, NEW): 1}
    assert guess == [OLD, 12, 13, 14]


def test_a_token_kept_is_no_rename_and_the_prompt_teaches_none():
    ngram, _ = lookup(renames=1, reply=SOURCE[:12])  # a verbatim copy
    assert ngram.renamed == {}
    # the same text as part of the prompt: renames are learned from the reply alone
    quiet = NgramProposer(max_n=3, min_n=2, renames=1)
    quiet.prefill(SOURCE + REPLY)
    assert quiet.continuation(SOURCE + REPLY, [], 4) == [OLD, 12, 13, 14] and quiet.renamed == {}


def test_a_new_conversation_forgets_the_renames():
    ngram, _ = lookup(renames=2)
    ngram.prefill([9, 9, 9])  # not a continuation of what it indexed
    assert ngram.renamed == {} and ngram.seen == {}


# a line that appears twice in the source, with other text after each
TWICE = [1, 2, 3, 4, 5, 6, 20, 21, 7, 8, 3, 4, 5, 6, 30, 31]


def test_the_guess_follows_the_place_the_reply_copies_from():
    ngram = NgramProposer(max_n=3, min_n=2)
    ngram.prefill(TWICE)
    # the reply copies the first occurrence: it goes on from there, not from the latest
    assert ngram.continuation(TWICE + [1, 2, 3, 4, 5, 6], [], 2) == [20, 21]
    # and through the tokens a chain drafted since
    assert ngram.continuation(TWICE + [1, 2, 3, 4], [5, 6], 2) == [20, 21]


def test_without_a_copy_to_follow_the_latest_occurrence_is_taken():
    ngram = NgramProposer(max_n=3, min_n=2)
    ngram.prefill(TWICE)
    assert ngram.continuation(TWICE + [9, 4, 5, 6], [], 2) == [30, 31]
    latest = NgramProposer(max_n=3, min_n=2, follow=False)
    latest.prefill(TWICE)
    assert latest.continuation(TWICE + [1, 2, 3, 4, 5, 6], [], 2) == [30, 31]
