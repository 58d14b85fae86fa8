"""Proposers: who guesses the next k tokens of a round.

One small interface (prefill, propose, observe) so that a tree or self-speculative proposer
can be added later. A draft model proposes lazily (no host sync: its steps are queued with
mx.async_eval and resolved by the round's one synchronisation); the n-gram proposer looks up
the context on the host and costs nearly nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

from mlx_spec.coupling import perturbed
from mlx_spec.errors import SpecError
from mlx_spec.sampling import SamplingParams, apply_processors, probabilities
from mlx_spec.tree import SIBLINGS

PREFILL_CHUNK = 512


@dataclass
class Proposal:
    """k proposed tokens; q their draft distributions (k, V_target), None for one-hot.
    `key` names the kind of proposal whose acceptance the policy tracks (default: source);
    `host` holds the tokens as a list when they were found on the host (n-gram); `forwards`
    the token count of each draft forward that made them (what they cost); `siblings` the
    draft's runner-up tokens at each position (lazy arrays, None for a draft-free proposal),
    which the verification may try beside the chain (`tree`), and `confidences` the draft's
    probability of its token at the positions it read on the host (where the tree's rows go)."""

    tokens: mx.array
    q: mx.array | None
    source: str
    key: str | None = None
    host: list[int] | None = None
    forwards: tuple[int, ...] = ()
    siblings: list[mx.array] | None = None
    confidences: list[float] | None = None  # the draft's probability of each token, when read
    tail: int = 0  # the last `tail` tokens are a free guess that extends the proposal (`extended`)

    def __post_init__(self):
        self.key = self.key or self.source

    @property
    def k(self) -> int:
        return self.tokens.shape[0]

    def truncated(self, k: int) -> "Proposal":
        if k >= self.k:
            return self
        q = self.q[:k] if self.q is not None else None
        host = self.host[:k] if self.host is not None else None
        siblings = self.siblings[:k] if self.siblings is not None else None
        confidences = self.confidences[:k] if self.confidences is not None else None
        tail = max(self.tail - (self.k - k), 0)
        return Proposal(self.tokens[:k], q, self.source, self.key, host, self.forwards, siblings, confidences, tail)

    def extended(self, tail: list[int], drafted: list[int]) -> "Proposal":
        """This proposal followed by `tail`, a free guess at how it goes on (an n-gram
        lookup; `drafted`: this proposal's tokens, read on the host). The guess is one-hot: a
        q row of 1 at its token (the target accepts it with probability p(token)), no
        runners-up, and it costs no draft forward."""
        tokens = mx.concatenate([self.tokens, mx.array(tail, dtype=mx.int32)])
        q = self.q
        if q is not None:
            rows = mx.zeros((len(tail), q.shape[-1]), dtype=q.dtype)
            q = mx.concatenate([q, mx.put_along_axis(rows, mx.array(tail)[:, None], mx.array(1, q.dtype), axis=-1)])
        siblings = None
        if self.siblings is not None:
            siblings = list(self.siblings) + [mx.zeros((0,), dtype=mx.int32)] * len(tail)
        return Proposal(tokens, q, self.source, self.key, drafted + tail, self.forwards, siblings,
                        self.confidences, self.tail + len(tail))


class Proposer(Protocol):
    name: str
    free: bool  # proposing costs (next to) nothing: it is asked every round, up to k_max tokens
    # tokens that end a reply (the engine sets them): nothing after one could be emitted, so a
    # proposer that reads its tokens proposes none past it
    ends: frozenset[int]

    def prefill(self, context: list[int]) -> None:
        """Get ready to propose after `context` (called before rounds start; may sync)."""

    def reset(self) -> None:
        """Forget everything (the next prefill starts from scratch)."""

    def propose(
        self, context: list[int], k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Proposal | None:
        """Up to k tokens that follow `context`, or None when there is nothing to propose."""

    def observe(self, proposal: Proposal | None, n_accepted: int, committed: list[int]) -> None:
        """A round ended: `committed` tokens were appended to the context; the first
        `n_accepted` of them were the proposal's own tokens."""


def through_end(tokens: list[int], ends: frozenset[int]) -> list[int]:
    """`tokens` up to and with the first one that ends the reply."""
    end = next((i for i, token in enumerate(tokens) if token in ends), None)
    return tokens if end is None else tokens[: end + 1]


def cache_length(cache: list) -> int:
    return cache[0].offset if cache else 0


def rollback(cache: list, keep: int) -> None:
    """Trim a prompt cache so it holds exactly the first `keep` tokens."""
    extra = cache_length(cache) - keep
    if extra > 0:
        trim_prompt_cache(cache, extra)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


def forward_chunked(model, cache: list, tokens: list[int], chunk: int = PREFILL_CHUNK) -> None:
    """Run tokens through a model only to fill its cache (prefill)."""
    for start in range(0, len(tokens), chunk):
        model(mx.array(tokens[start : start + chunk])[None], cache=cache)
        mx.eval([c.state for c in cache])


BATCH_SIZES = (1, 2, 3, 4, 6, 8, 16)  # a BLAS may be slower at some sizes than at the next one


def padded_batch(tokens: int) -> int:
    """Tokens to feed a forward of `tokens` (padding where a larger batch costs less: on
    OpenBLAS a 16-token draft forward is cheaper than a 12-token one)."""
    return next((size for size in BATCH_SIZES if size >= tokens), tokens)


def runners_up(logits: mx.array, choice: mx.array, ids: mx.array | None) -> mx.array:
    """The SIBLINGS most likely tokens of a row of draft logits (1, V') other than the column
    drawn (`choice`), best first, as token ids (lazy: computed only if the tree uses them)."""
    width = logits.shape[-1]
    m = min(SIBLINGS, width - 1)
    scores = mx.where(mx.arange(width) == choice.reshape(1, 1), -mx.inf, logits)[0]
    top = mx.argpartition(-scores, m - 1)[:m]
    top = top[mx.argsort(-scores[top])]
    return (top if ids is None else ids[top]).astype(mx.int32)


def confidence(logits: mx.array, q: mx.array | None, token: mx.array) -> mx.array:
    """The draft's probability of the token it drew: q[token] when sampling, the softmax of
    the logits row at its top when greedy (the token drawn). A sampled draw of a token the
    draft finds unlikely is a likely rejection (on the pair's sampled replies at 0.7, the
    target accepted such draws, 6.5% of a math reply's, about half the time, where the
    draft's top probability there said 0.65), so the chain's estimate of its own acceptance
    follows the draw, not the distribution it came from."""
    if q is not None:
        return mx.take_along_axis(q.reshape(1, -1), token.reshape(1, 1), axis=-1)[0, 0]
    return mx.exp(logits.max() - mx.logsumexp(logits))


@dataclass
class Chain:
    """A draft chain being built: its tokens (lazy), their q rows (sampling) and runners-up,
    and, when the chain reads each token on the host, the tokens, the draft's confidence in
    each, and `reach`, the draft's own estimate that the chain so far is accepted."""

    tokens: list[mx.array] = field(default_factory=list)
    qs: list[mx.array] = field(default_factory=list)
    runners: list[mx.array] = field(default_factory=list)
    host: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    reach: float = 1.0

    def add(self, token: mx.array, q: mx.array | None, runners: mx.array) -> None:
        self.tokens.append(token)
        self.runners.append(runners)
        if q is not None:
            self.qs.append(q)

    def read(self, token: int, confidence: float) -> float:
        """The newest token as read on the host; returns the chain's reach after it."""
        self.host.append(token)
        self.confidences.append(confidence)
        self.reach *= confidence
        return self.reach


class DraftModelProposer:
    """A small model of the same tokenizer drafts k tokens autoregressively."""

    name = "draft"
    free = False
    stops_early = True  # propose() takes stop_below: the chain may end before k
    ends: frozenset[int] = frozenset()

    def __init__(self, model, target_vocab: int, head=None):
        self.model = model
        self.cache = make_prompt_cache(model)
        if not can_trim_prompt_cache(self.cache):
            raise SpecError(
                "the draft model's cache cannot be rolled back (recurrent or sliding layers)",
                "choose a draft with plain attention layers, or use draft 'ngram'",
            )
        self.target_vocab = target_vocab
        self.head = head  # a SubsetHead: score only part of the vocabulary (None: all of it)
        self.seen: list[int] = []  # tokens held in the draft cache
        # guess(context, drafted, k): up to k tokens that followed context + drafted where that
        # text appeared before (an n-gram lookup), or []; None: the chain never jumps
        self.guess = None
        self.jumps = self.jumped = 0  # guess checks made, guessed tokens they confirmed
        self.forwards: list[int] = []  # token counts of the current proposal's forwards
        # what the last proposal fed the draft: (pending tokens, k)
        self._inflight: tuple[list[int], int] | None = None

    def prefill(self, context: list[int]) -> None:
        keep = min(common_prefix(self.seen, context), len(context) - 1, cache_length(self.cache))
        rollback(self.cache, keep)
        forward_chunked(self.model, self.cache, context[keep:-1])
        self.seen = list(context[:-1])
        if self.head is not None:
            self.head.add_context(context, self.target_vocab)

    def reset(self) -> None:
        self.seen, self._inflight = [], None
        rollback(self.cache, 0)
        if self.head is not None:
            self.head.reset()

    def _forward(self, tokens: mx.array, rows: int = 1) -> tuple[mx.array, mx.array | None]:
        """Draft logits of the last `rows` positions (rows, V') and the ids of their columns
        (None: ids 0..V-1)."""
        self.forwards.append(tokens.shape[0])
        head = self.head if self.head is not None and self.head.active else None
        if head is None:
            return self.model(tokens[None], cache=self.cache)[0, -rows:, :], None
        return head.logits(self.model.model(tokens[None], cache=self.cache)[0, -rows:, :]), head.ids

    def _draw(self, logits, ids, history, sampling: SamplingParams, rng, position: int):
        """One draft token, the one at `position`, from a row of logits -> (token (1,), q
        padded to the target's vocabulary or None when greedy, its runners-up, the draft's
        confidence in the token (`confidence`; lazy)). Sampling drafter-invariantly, the token
        is the draft's argmax under the noise the target will use at that position
        (coupling.py), its runners-up the next ones under it, and the confidence q[token] taken
        halfway to the softmax of the perturbed scores at the token: on the pair's sampled
        replies the softmax ranks the target's agreement better than q[token] (AUC 0.910
        against 0.885) but reads it too high (0.827 against 0.794; q[token] 0.758), and a
        chain stopping on it alone drafted too far (benchmarks/NOTES.md)."""
        raw = logits
        if ids is not None and sampling.processors:
            # history-dependent processors index logits by token id: give them the full row
            full = mx.full((1, self.target_vocab), -mx.inf, dtype=logits.dtype)
            logits, ids = mx.put_along_axis(full, ids[None], logits, axis=-1), None
        if ids is None:
            logits = apply_processors(sampling.processors, history, logits[:, : self.target_vocab])
        if sampling.greedy:
            choice = mx.argmax(logits, axis=-1)
            runners = runners_up(logits, choice, ids)
            token = (choice if ids is None else ids[choice]).astype(mx.int32)
            return token, None, runners, confidence(raw, None, token)
        q = probabilities(logits, sampling)
        if sampling.invariant:
            scores = perturbed(q, sampling.seed, [position], ids, self.target_vocab)
            choice = mx.argmax(scores, axis=-1)
            runners = runners_up(scores, choice, ids)
            sure = mx.exp(scores.max() - mx.logsumexp(scores))  # the perturbed softmax at its argmax
        else:
            key = mx.random.key(int(rng.integers(2**31)))
            choice = mx.random.categorical(mx.log(q), key=key)
            runners = runners_up(logits, choice, ids)
        if ids is not None:  # q over the subset, zero elsewhere
            full = mx.zeros((1, self.target_vocab), dtype=q.dtype)
            token, q = ids[choice].astype(mx.int32), mx.put_along_axis(full, ids[None], q, axis=-1)
        else:
            token, pad = choice.astype(mx.int32), self.target_vocab - q.shape[-1]
            if pad > 0:  # ids the draft does not have get probability 0
                q = mx.concatenate([q, mx.zeros((1, pad), q.dtype)], axis=-1)
        confident = confidence(raw, q, token)
        return token, q, runners, (confident + sure) / 2 if sampling.invariant else confident

    def propose(self, context, k, sampling, rng, stop_below: float = 0.0):
        """Up to k draft tokens, one draft step each. With `stop_below` > 0 the chain stops
        early where it is unlikely to be accepted: after a token, once the product of the
        draft's confidences so far (its probability of each token it drew) falls below
        `stop_below`. That reads each token on the host, so the chain can also jump: where the
        text so far (context + drafted tokens) repeats earlier text, `guess` names what followed
        there, and one draft forward over that guess checks it (`_jump`). A chain read on
        the host also ends after a token that ends the reply (`ends`). The stops and the
        jumps depend only on the draft, never on the target, so the round stays lossless."""
        pending = context[len(self.seen) :]
        self.forwards = []
        history = mx.array(context) if sampling.processors else None
        # jumps need the drafted tokens on the host (read anyway when the chain can stop)
        guess = self.guess if stop_below > 0 and self.guess is not None and history is None else None
        chain = Chain()
        feed = mx.array(pending)  # what the draft has not processed yet
        while True:
            room = k - len(chain.tokens) - 1  # guessed tokens the chain has room for
            path = guess(context, chain.host, room) if guess and room > 0 else []
            if path:
                token = self._jump(feed, path, sampling, rng, stop_below, chain, len(context) + len(chain.tokens))
                if token is None or len(chain.tokens) == k:
                    break
            else:
                logits, ids = self._forward(feed)
                token, q, runners, confident = self._draw(logits, ids, history, sampling, rng,
                                                          len(context) + len(chain.tokens))
                mx.async_eval(token)
                chain.add(token, q, runners)
                if len(chain.tokens) == k:
                    break
                if stop_below > 0:
                    mx.eval(token, confident)
                    value = token.item()
                    if chain.read(value, confident.item()) < stop_below or value in self.ends:
                        break
            if history is not None:
                history = mx.concatenate([history, token])
            feed = token
        self._inflight = (pending, len(chain.tokens))
        return Proposal(
            tokens=mx.concatenate(chain.tokens),
            q=mx.concatenate(chain.qs) if chain.qs else None,
            source=self.name,
            forwards=tuple(self.forwards),
            siblings=chain.runners,
            confidences=chain.confidences,
        )

    def _jump(self, feed, path: list[int], sampling, rng, stop_below, chain: "Chain", position: int):
        """Check a guessed continuation of the chain with ONE draft forward over feed + path
        (feed: the tokens the draft has not processed yet, the chain's newest last).

        Row j holds the draft's distribution after the chain + path[:j]; a token d_j is drawn
        from each. The chain takes d_0, d_1, ... while d_j equals path[j] (so the next row's
        condition is what the chain really holds) and ends its jump at the first d_j that
        differs: every token taken is a draw from the draft given the tokens before it, as in
        step-by-step drafting, for the cost of one forward. Adds the tokens taken to `chain`,
        trims the draft cache back to the chain but its newest token, and returns the newest
        token to feed next, or None when the confidence stop ended the chain. `position`: that
        of the token row 0 draws.
        """
        start = cache_length(self.cache) + feed.shape[0]  # the chain up to and with `feed`
        fed = len(path) + 1  # rows that draw a token: feed's last and each guessed one
        pad = padded_batch(fed) - fed  # rows past `fed` are ignored, their cache entries trimmed
        inputs = mx.concatenate([feed, mx.array(path + [0] * pad, dtype=mx.int32)])
        rows, ids = self._forward(inputs, rows=fed + pad)
        drawn = [self._draw(rows[j : j + 1], ids, None, sampling, rng, position + j) for j in range(fed)]
        confident = mx.stack([c for *_, c in drawn])
        mx.eval([d for d, *_ in drawn], confident)
        values, confidences = mx.concatenate([d for d, *_ in drawn]).tolist(), confident.tolist()
        self.jumps += 1
        stopped = False
        for j, (value, (d, q, runners, _)) in enumerate(zip(values, drawn)):
            chain.add(d, q, runners)
            if chain.read(value, confidences[j]) < stop_below or value in self.ends:
                stopped = True
                break
            if j == len(path) or value != path[j]:
                break
        self.jumped += j  # tokens of the guess the draft confirmed in one forward
        # the cache holds the chain but its newest token: feed and path[:j] (= d_0..d_{j-1})
        rollback(self.cache, start + j)
        return None if stopped else chain.tokens[-1]

    def observe(self, proposal, n_accepted, committed):
        if self.head is not None:
            self.head.observe(committed)
        if proposal is None or self._inflight is None:
            return  # committed tokens stay pending until the next proposal feeds them
        pending, k = self._inflight
        self._inflight = None
        # The draft processed pending + d_1..d_{k-1}. Keep what the round accepted, but always
        # leave the newest committed token unprocessed: its logits start the next proposal.
        kept = min(n_accepted, len(committed) - 1, k - 1)
        self.seen += pending + committed[:kept]
        rollback(self.cache, len(self.seen))


class NgramProposer:
    """Prompt lookup: find the longest recent suffix (max_n down to min_n tokens) earlier in
    the context, and propose what followed it there.

    It also learns the reply's renames: where the reply copies earlier text but puts one
    token X in place of the source's Y (and goes on as the source does for the two tokens
    after), that is counted, and once seen `renames` times the lookup reads the text with Y
    for X and proposes the source's continuation with X for Y. A variable renamed throughout
    a file is then guessed line after line instead of breaking at every use of it.

    And it follows the copy: where the text's last tokens continue what it copied last (a
    cursor into the context, moved on with every token that came as the lookup said), that
    occurrence is taken over the most recent one, so a line that appears twice in the source
    is continued from the place the reply is copying, not from the other place."""

    name = "ngram"
    free = True
    ends: frozenset[int] = frozenset()

    def __init__(self, max_n: int = 4, min_n: int = 2, renames: int = 2, follow: bool = True):
        if not 1 <= min_n <= max_n:
            raise SpecError(f"bad n-gram sizes min_n={min_n}, max_n={max_n}", "need 1 <= min_n <= max_n")
        self.max_n, self.min_n = max_n, min_n
        self.renames = renames  # times a rename must be seen before it is applied (0: never)
        self.follow = follow  # take the occurrence the copy goes on from (False: the latest)
        self.reset()

    def prefill(self, context: list[int]) -> None:
        if common_prefix(self.indexed, context) < len(self.indexed):
            self.reset()
        self.reply = len(context)  # renames are learned from the text after the prompt

    def reset(self) -> None:
        self.indexed: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> where its continuation starts
        self.reply = 0
        # per position p: where the longest n-gram ending at p had last occurred (its
        # continuation start) before p was indexed: the source p's token was copied from
        self.source: dict[int, int] = {}
        self.checked = 0  # positions looked at for renames
        self.seen: dict[tuple[int, int], int] = {}  # (source token, reply token) -> times
        self.renamed: dict[int, int] = {}  # source token -> the token the reply puts there
        self.unrenamed: dict[int, int] = {}
        self.cursor: int | None = None  # where the copy goes on: the next token's source

    def _extend(self, context: list[int]) -> None:
        # Key: an n-gram; value: where its continuation starts. Only n-grams with at least one
        # token after them are indexed, and later occurrences overwrite earlier ones, so the
        # lookup of the context's own suffix finds its most recent earlier occurrence.
        if len(context) < len(self.indexed):
            self.reset()
        done = max(len(self.indexed), 1)
        self.indexed = list(context)
        for start in range(done, len(context)):
            text = context[max(start - self.max_n, 0) : start]
            found, _ = self._lookup(text, renamed=False, limit=start)
            if found is not None:
                self.source[start] = found
            # read with the renames undone (the same lookup while none is learned)
            copied = self._lookup(text, limit=start)[0] if self.unrenamed else found
            if copied is not None and self.renamed.get(context[copied], context[copied]) == context[start]:
                self.cursor = copied + 1
            for n in range(self.min_n, min(self.max_n, start) + 1):
                self.index[tuple(context[start - n : start])] = start
        if self.renames:
            self._learn(context)

    def _learn(self, context: list[int]) -> None:
        """Count the renames at the positions that now have two tokens after them: the reply
        took a token other than its source's, then went on as the source did."""
        for p in range(max(self.checked, self.reply), len(context) - 2):
            s = self.source.get(p)
            if s is None or s + 2 >= p or context[s] == context[p]:
                continue
            if context[s + 1 : s + 3] == context[p + 1 : p + 3]:
                pair = (context[s], context[p])
                self.seen[pair] = self.seen.get(pair, 0) + 1
                if self.seen[pair] >= self.renames:
                    self.renamed[pair[0]], self.unrenamed[pair[1]] = pair[1], pair[0]
        self.checked = max(self.checked, len(context) - 2)

    def _lookup(self, text: list[int], renamed: bool = True, ahead: int = 0,
                limit: int | None = None) -> tuple[int | None, int]:
        """(where the continuation of text's longest indexed suffix starts, its length), read
        with the learned renames undone (`renamed`), or (None, 0). The suffix's occurrence
        that ends `ahead` tokens past the cursor (the copy going on through tokens drafted
        since) is taken over its most recent one; `limit`: the positions indexed so far."""
        if renamed and self.unrenamed:
            text = [self.unrenamed.get(t, t) for t in text]
        follow = None if self.cursor is None or not self.follow else self.cursor + ahead
        limit = len(self.indexed) if limit is None else limit
        for n in range(min(self.max_n, len(text)), self.min_n - 1, -1):
            key = tuple(text[-n:])
            start = self.index.get(key)
            if start is not None:
                if follow is not None and n <= follow < limit and tuple(self.indexed[follow - n : follow]) == key:
                    return follow, n
                return start, n
        return None, 0

    def _copy(self, context: list[int], start: int, k: int) -> list[int]:
        found = context[start : start + k]
        found = [self.renamed.get(t, t) for t in found] if self.renamed else found
        return through_end(found, self.ends)

    def match(self, context: list[int], k: int) -> tuple[list[int], int]:
        """(up to k tokens that followed the longest matching suffix, that suffix's length)."""
        self._extend(context)
        start, n = self._lookup(context[-self.max_n :])
        return (self._copy(context, start, k), n) if start is not None else ([], 0)

    def continuation(self, context: list[int], drafted: list[int], k: int) -> list[int]:
        """Up to k tokens that followed, earlier in `context`, the longest suffix of
        context + drafted: a guess at how a draft chain goes on. Only the committed context
        is indexed; drafted tokens, which a round may reject, are looked up, never indexed."""
        return self.continuation_match(context, drafted, k)[0]

    def continuation_match(self, context: list[int], drafted: list[int], k: int) -> tuple[list[int], int]:
        """(`continuation`, the length of the suffix it matched; 0 when none, and when the
        drafted tokens end the reply: nothing follows them)."""
        if k <= 0 or drafted and drafted[-1] in self.ends:
            return [], 0
        self._extend(context)
        start, n = self._lookup(context[-self.max_n :] + list(drafted), ahead=len(drafted))
        return (self._copy(context, start, k), n) if start is not None else ([], 0)

    def propose(self, context, k, sampling, rng):
        found, n = self.match(context, k) if k > 0 else ([], 0)
        if not found:
            return None
        # a longer matched suffix predicts better: the policy tracks each length on its own
        return Proposal(tokens=mx.array(found, dtype=mx.int32), q=None, source=self.name,
                        key=f"{self.name}:{n}", host=found)

    def observe(self, proposal, n_accepted, committed):
        pass  # the index catches up with the context at the next lookup
