"""Choosing k, the number of tokens to propose in a round.

Expected tokens per round: 1 + sum_j prod_{i<=j} alpha_i, with alpha_i the acceptance of
draft position i ((1 - alpha^(k+1)) / (1 - alpha) when all are equal). Throughput is that over
the round's cost, k * t_draft + t_verify(k). The costs are measured
once per machine and pair (`calibrate`, cached on disk) and may be repriced by what the rounds
take (round_costs.py); alpha is tracked online per source.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from mlx_spec.errors import SpecError
from mlx_spec.round_costs import RoundCosts
from mlx_spec.tree import RANK_WORTH, SIBLINGS, plan_tree, rejection_chances


CEILING_ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6)  # acceptance rates at which reports give the ceiling
# A fixed k's n-gram tail takes rows the siblings would have had; with a bar above 0, only
# where the n-gram's guesses of its kind have been accepted at least that often. Off: on host E
# a bar of 0.3 gave a sampled story +14% and cost greedy rename-var 4.5% (benchmarks/NOTES.md).
TAIL_BAR = 0.0


@dataclass
class Costs:
    """Seconds per draft step and per target verification of k+1 tokens (index k)."""

    draft_step: float
    verify: list[float]
    verify_tokens: list[int] | None = None  # tokens to feed when verifying k (>= k+1)
    draft_batch: float | None = None  # one draft forward over k_max+1 tokens (a jump, a catch-up)
    ladder: dict[int, float] | None = None  # every measured target forward: tokens -> seconds
    # the output layer the draft's forwards were timed with: "subset" (draft_head.SubsetHead,
    # as the rounds run it) or None (the whole vocabulary)
    draft_head: str | None = None

    def __post_init__(self):
        if self.ladder:  # JSON keeps the token counts as strings
            self.ladder = {int(t): float(s) for t, s in self.ladder.items()}
        self._measured = sorted(self.ladder or ())  # the ladder's sizes, asked for every round

    def sizes(self, k: int) -> list[int]:
        """The forward sizes that can verify k drafts: every measured one of at least k+1
        tokens (rows past the chain hold siblings or padding), cheapest size first."""
        cheapest = padded_tokens(self, k)
        if not self.ladder:
            return [cheapest]
        return [cheapest] + [t for t in self._measured if t > k and t != cheapest]

    def forward(self, tokens: int, k: int | None = None) -> float:
        """Seconds of one target forward over `tokens` tokens (verify[k] when not measured)."""
        if self.ladder and tokens in self.ladder:
            return self.ladder[tokens]
        k = tokens - 1 if k is None else k
        return self.verify[min(k, len(self.verify) - 1)]

    def draft_forward(self, tokens: int) -> float:
        """Seconds of one draft forward over `tokens` tokens: between the measured 1-token step
        and the (k_max+1)-token batch, interpolated on log(tokens) (a BLAS costs little more
        per extra row at these sizes)."""
        if self.draft_batch is None:
            return self.draft_step * max(tokens, 1)
        if tokens <= 1:
            return self.draft_step
        top = len(self.verify)  # the batch was measured at k_max + 1 tokens
        share = min(math.log(tokens) / math.log(top), 1.0) if top > 1 else 1.0
        return self.draft_step + (self.draft_batch - self.draft_step) * share

    def round_cost(self, k: int, draft_step: float | None = None, size: int | None = None) -> float:
        """k draft steps and the verification (of `size` tokens; None: the cheapest)."""
        step = self.draft_step if draft_step is None else draft_step
        verify = self.verify[min(k, len(self.verify) - 1)] if size is None else self.forward(size, k)
        return k * step + verify

    def round_steps(self, verified: int, forwards=()) -> float:
        """One round's price in plain decoding steps: its verification of `verified` tokens
        and its draft forwards (their token counts). A round that emitted fewer tokens than
        its price cost more than plain decoding would have."""
        return (self.forward(verified) + sum(self.draft_forward(t) for t in forwards)) / self.verify[0]

    def modeled_speedup(self, stats) -> float | None:
        """Speed-up over plain decoding that a generation's counted work costs at these
        prices: its verifications (by tokens fed; by k in stats that predate that count)
        and draft forwards (by tokens fed) against one plain step per token. Free of a noisy
        host's drift, blind to what is not a forward (Python, sampling): a way to compare
        variants, not a measured speed."""
        if stats.verify_sizes:
            verify = sum(n * self.forward(t) for t, n in stats.verify_sizes.items())
        else:
            verify = sum(n * self.round_cost(k, 0.0) for k, n in stats.k_counts.items())
        drafts = sum(n * self.draft_forward(t) for t, n in stats.draft_forwards.items())
        seconds = verify + drafts
        return stats.generated_tokens * self.verify[0] / seconds if seconds > 0 else None

    def ceiling(self, alpha: float) -> tuple[float, int]:
        """(speed-up, k): the most a draft chain can gain over plain decoding on this machine
        when the target accepts each drafted token with probability `alpha`: the best k of
        expected tokens (1 + alpha + ... + alpha^k) over the round's cost, against one plain
        step per token. A bound of the machine, not of a text: no n-gram jumps or siblings.
        Chips whose draft costs a larger share of a target step, or whose verification grows
        faster with the tokens fed, have a lower ceiling at the same acceptance."""
        best = (1.0, 0)
        for k in range(len(self.verify)):
            tokens = sum(alpha ** j for j in range(k + 1))
            speedup = tokens * self.verify[0] / self.round_cost(k)
            if speedup > best[0] + 1e-12:
                best = (speedup, k)
        return best

    def shares(self, alphas=CEILING_ALPHAS) -> dict:
        """What decides a machine's speed-ups, for reports: the plain target step in seconds,
        the draft step and the verification of 3 and of 15 drafts in target steps (None where
        the calibration stopped short of that k), and the drafting ceiling (speed-up, k) at
        each acceptance rate in `alphas`."""
        step = self.verify[0]
        return {
            "target_step": step,
            "draft_step": self.draft_step / step,
            "verify": {k: self.verify[k] / step if k < len(self.verify) else None for k in (3, 15)},
            "ceiling": {alpha: self.ceiling(alpha) for alpha in alphas},
        }


class FixedK:
    """Always propose k tokens (fewer only when a free guess is shorter).

    With the machine's costs it still chooses, each round, which source proposes the k tokens
    (the draft, an n-gram guess), by the same expected rate as
    AdaptiveK, and verifies padded to the cheapest measured size. Without costs the sources
    keep their order and nothing is padded. The padding rows past the k tokens and one sibling
    per position go to a free guess at how the proposal goes on (`tail`: the n-gram's
    continuation, decode.Engine._with_tail): k paid draft steps a round, as mlx-lm's k, and
    the rows fed anyway try the text's repeats (`tail_worth` may keep them for the siblings
    where the n-gram's guesses have not been landing: `tail_bar`, off by default).
    """

    def __init__(self, k: int, costs: Costs | None = None, tail: bool = True, tail_bar: float = TAIL_BAR,
                 learn_costs: bool = False):
        if k < 0:
            raise SpecError(f"k must be >= 0, got {k}", "use --k 4, or --adaptive")
        self.k = self.k_max = k
        self.tail, self.tail_bar = tail, tail_bar
        self.costs = self.calibration = costs
        self.estimates = (AdaptiveK(costs, k_max=max(k, 1), learn_costs=learn_costs)
                          if costs is not None and k > 0 else None)

    @property
    def draft_price(self) -> float | None:
        return self.estimates.draft_price if self.estimates else None

    def choose(self, source: str) -> int:
        return self.k

    def plan(self, source: str) -> tuple[int, float]:
        """(k, expected tokens per second of `source` proposing k; 0.0 without costs)."""
        return self.k, self.estimates.rate(source, self.k) if self.estimates else 0.0

    def verify_tokens(self, k: int, source: str | None = None, confidences: list[float] | None = None) -> int:
        if self.estimates and source is not None:
            return self.estimates.verify_tokens(k, source, confidences)
        return padded_tokens(self.costs, k)

    def tail_worth(self, key: str | None = None) -> bool:
        """Whether an n-gram tail matched as `key` ("ngram:n"; None: of any length) is worth
        the rows it takes from the siblings: the first-token acceptance of the n-gram's
        guesses of that kind (scored every round, shadowed when they lose) at or above
        `tail_bar`. Without costs (nothing padded) any tail is."""
        if not self.tail:
            return False
        if self.estimates is None or self.tail_bar <= 0:
            return True
        keys = [key] if key else [k for k in self.estimates.counts if self.estimates._free(k)]
        return any(self.estimates.alpha(k) >= self.tail_bar for k in keys)

    def tail_size(self, source: str, k: int, size: int, tail_key: str, room) -> int:
        """The verification's size for k drafts from `source` that the n-gram would carry on
        (its guesses of kind `tail_key`): `size`, chosen for the chain and its siblings, or a
        larger measured size whose extra rows (`room(s)`: tail tokens a size holds) are
        expected to land more tokens than they cost. A tail token lands when the k drafts and
        the guesses before it are all accepted: the drafts' estimates times the n-gram's (the
        last position's estimate carried on past the positions tracked). Where the rows past
        the chain are padding anyway (OpenBLAS's Haswell kernels on host E: 16 rows cost what
        4 do) `size` already holds them; where a 16-row verification costs more than 4 to 8
        (its SkylakeX kernels on host F) the tail is bought only where it pays."""
        est = self.estimates
        if est is None or not self.costs.ladder:
            return size
        reach = math.prod(est.alphas(source)[:k])
        guesses = est.alphas(tail_key)

        def rate(s: int) -> float:
            gain, r = 0.0, reach
            for j in range(room(s)):
                r *= guesses[min(j, len(guesses) - 1)]
                gain += r
            # the siblings get the rows the tail leaves
            return (est.expected(source, k, s - room(s)) + gain) / self.costs.round_cost(k, size=s)

        return max([size] + [s for s in self.costs.sizes(k) if s > size], key=rate)

    def chain(self, source: str, k: int) -> tuple[int, float]:
        """(k, 0.0): a fixed k is drafted in full, never stopped early."""
        return k, 0.0

    def reset(self) -> None:
        if self.estimates:
            self.estimates.reset()

    def enter(self, regime: str) -> None:
        """The kind of text the next rounds decode (AdaptiveK.enter): it ranks the sources."""
        if self.estimates:
            self.estimates.enter(regime)

    def allow_siblings(self) -> None:
        if self.estimates:
            self.estimates.allow_siblings()

    def update(self, source: str, k: int, n: int, siblings_tried: int = 0, sibling_hit: int | None = None) -> None:
        if self.estimates:
            self.estimates.update(source, k, n, siblings_tried, sibling_hit)

    def settle(self, tokens: int, verified: int, forwards=(), seconds: float | None = None) -> None:
        """Nothing to pay for (a fixed k never probes); the round's seconds may reprice
        what the sources' rates and the tail's rows are weighed with (AdaptiveK.settle)."""
        if self.estimates:
            self.estimates.settle(tokens, verified, forwards, seconds)
            self.costs = self.estimates.costs


def padded_tokens(costs: Costs | None, k: int) -> int:
    """How many tokens to feed the target to verify k drafts (padding where cheaper)."""
    padded = costs.verify_tokens if costs else None
    return padded[k] if padded and k < len(padded) else k + 1


class AdaptiveK:
    """Pick, each round, the k that maximises expected tokens per second.

    Acceptance is tracked per source and per draft position: alpha_i is the decayed share of
    rounds that reached position i and accepted it (drafts get harder further out, so one
    alpha for all positions over-drafts). Expected tokens of a round with k drafts:
    1 + sum_j prod_{i<=j} alpha_i. The prior is optimistic (a pair is assumed to agree until
    it shows otherwise: one failed round halves it). Costs come from the calibration: only
    their ratios matter to the choice, and those are steadier than a noisy machine's absolute
    timings. When k = 0 wins, a round with k = 1 is tried (a probe) so that a source which
    improves gets another chance: `probe_soon` rounds after the source last landed a token,
    waiting twice as long after each failed round, up to `probe_every`. Two unlucky rounds
    at the start do not bench a good draft for the rest of the text, and a draft that keeps
    failing costs a probe only every `probe_every` rounds.
    """

    def __init__(self, costs: Costs, k_max: int = 8, prior: float = 0.9, decay: float = 0.85,
                 probe_every: int = 16, free_sources: tuple[str, ...] = ("ngram",),
                 free_prior: float = 0.5, probe_soon: int = 4, margin: float = 0.05,
                 chain_factor: int = 3, chain_floor: int = 4, sibling_prior: float = 0.5,
                 explore: float | None = 0.03, explore_grace: float = 1.0, regimes: bool = True,
                 learn_costs: bool = False):
        # a source key is "name" or "name:detail" (the n-gram's matched length); a paid
        # source's key gets "@code" inside a code block (`enter`)
        self.costs, self.k_max, self.decay, self.probe_every = costs, k_max, decay, probe_every
        # `costs` are what the policy plans with: the calibration, or with `learn_costs` the
        # calibration repriced by what the rounds took (round_costs.py); kept across resets,
        # since they are the machine's, not the text's
        self.calibration = costs
        # (only a draft model is priced: n-gram guesses cost nothing to propose)
        self.round_costs = RoundCosts(costs) if learn_costs and costs.draft_step > 0 else None
        self.free_sources = free_sources
        # A free source is scored every round even when it loses (shadowed), so it can start
        # pessimistic and earn its place; a paid one has to be tried to be learned.
        self.prior, self.free_prior = prior, free_prior
        self.counts: dict[str, list[list[float]]] = {}  # source -> per position [accepts, rejects]
        self.idle: dict[str, int] = {}  # rounds since the source last proposed or probed
        self.probe_soon = min(probe_soon, probe_every)
        self.wait: dict[str, int] = {}  # idle rounds before the next probe
        self.probing: set[str] = set()  # sources whose k = 1 is a probe
        # Drafting must beat plain decoding by this much: what the calibration does not see
        # (the draft catching up on tokens it skipped, Python per step) is paid by drafting.
        self.margin = margin
        self.chain_factor, self.chain_floor = chain_factor, chain_floor  # see `chain`
        # The verification may try the draft's runners-up in its padding rows (tree.py): then
        # a rejected position still yields a token when the target's pick was one of them.
        self.siblings = False
        self.sibling_prior = sibling_prior
        # source -> per runner-up rank [hits, misses], decayed: how often the rank's sibling
        # was the correction where it was tried at the rejected position
        self.sibling_counts: dict[str, list[list[float]]] = {}
        # The ledger probes are paid from (`settle`): plain decoding steps the rounds saved (a
        # round's tokens less its price) and the tokens they emitted. A probe must leave the
        # savings above -(explore x tokens + explore_grace) even if it fails (explore None:
        # probe on the schedule alone).
        self.explore, self.explore_grace = explore, explore_grace
        self.saved, self.emitted = 0.0, 0
        # Sources probed since the last reset (a conversation): a source's first probe is made
        # on schedule even when the ledger cannot pay for it (see `_affords_probe`).
        self.probed: set[str] = set()
        # The kind of text being decoded ("prose" or "code", `enter`): a paid source is learned
        # per kind, so a draft benched on a reply's prose opening is tried afresh on its code.
        self.regimes, self.regime = regimes, "prose"
        # What the estimates give until the next update (`_known`): plan weighs every k and
        # size a round, each from the same alphas, sibling rates and chain sums.
        self._memo: dict = {}

    def enter(self, regime: str) -> None:
        """The next rounds decode `regime` text ("prose", or "code" inside a fenced block).

        A paid source's estimates, probe schedule and first probe are kept per regime (the
        ledger is shared): where a reply turns to code, a draft benched on its prose opening
        starts from the prior again, and where it turns back, what was learned on its prose
        applies. Traced greedy on add-types (host E), the draft's first two chains were
        rejected at their first token (the reply's opening words chosen otherwise), the ledger
        then held it back for the 20 rounds of the first two functions, decoded token by
        token, and once probed it landed 62 tokens in 25 plain steps. Free sources, scored
        every round, adapt anyway."""
        self.regime = regime

    def _key(self, source: str) -> str:
        """The key `source` is learned under in the current regime."""
        if not self.regimes or self.regime == "prose" or "@" in source or self._free(source):
            return source
        return f"{source}@{self.regime}"

    def _known(self, what: str, key: str, compute):
        """`compute()`, remembered per (what, key) until the estimates change (`update`,
        `reset`, `allow_siblings`)."""
        try:
            return self._memo[what, key]
        except KeyError:
            value = self._memo[what, key] = compute()
            return value

    def reset(self) -> None:
        """Back to the prior: a new conversation may be a different kind of text."""
        self._memo.clear()
        self.counts.clear()
        self.sibling_counts.clear()
        self.idle.clear()
        self.wait.clear()
        self.probing.clear()
        self.probed.clear()
        self.saved, self.emitted = 0.0, 0

    def alphas(self, source: str) -> list[float]:
        """Per draft position, the estimated acceptance of `source`'s token there."""
        source = self._key(source)
        return list(self._known("alphas", source, lambda: self._alphas(source)))

    def _alphas(self, source: str) -> tuple[float, ...]:
        counts = self.counts.get(source) or [[0.0, 0.0]] * self.k_max
        # Each position's prior (worth two trials) is the estimate of the position before it,
        # so positions the policy has not tried yet inherit what it knows, not a fixed guess.
        result, prior = [], self.free_prior if self._free(source) else self.prior
        for s, f in counts:
            prior = (s + 2 * prior) / (s + f + 2)
            result.append(prior)
        return tuple(result)

    def _free(self, source: str) -> bool:
        return source.split(":")[0] in self.free_sources

    def alpha(self, source: str) -> float:
        """Acceptance of the first drafted position."""
        return self.alphas(source)[0]

    def allow_siblings(self) -> None:
        self.siblings = True
        self._memo.clear()

    def sibling_rates(self, source: str) -> list[float]:
        """Per runner-up rank (tree.RANK_WORTH's), how often the sibling of that rank was the
        correction at a rejected position where it was tried. The best runner-up's prior is
        `sibling_prior`; a further rank's is the best one's rate times its RANK_WORTH (each
        worth two trials): rank 2 to 4 are tried less often, and learn from fewer rounds."""
        source = self._key(source)
        return list(self._known("sibling rates", source, lambda: self._sibling_rates(source)))

    def _sibling_rates(self, source: str) -> tuple[float, ...]:
        counts = self.sibling_counts.get(source) or [[0.0, 0.0]] * len(RANK_WORTH)
        rates = []
        for rank, (hits, misses) in enumerate(counts):
            prior = self.sibling_prior if rank == 0 else rates[0] * RANK_WORTH[rank]
            rates.append((hits + 2 * prior) / (hits + misses + 2))
        return tuple(rates)

    def sibling_rate(self, source: str) -> float:
        """How often a rejected position's correction was the best runner-up tried there."""
        return self.sibling_rates(source)[0]

    def branches(self, source: str) -> bool:
        """Whether `source`'s rounds may hold siblings: allowed, and a paid source (a free
        one's guesses have no draft distribution to take runners-up from)."""
        return self.siblings and not self._free(source)

    def sibling_gains(self, source: str, k: int, confidences: list[float] | None = None) -> list[float]:
        """Expected tokens each row past the chain adds when `source` proposes k, in the order
        tree.plan_tree fills them. A sibling at depth i of rank r adds a token when the chain
        reaches i, is rejected there and the correction is that sibling: reach_i (1 - c_i)
        times the rank's rate, with c_i the draft's confidence in its token at depth i where
        the round's chain read it (`confidences`: a shaky chain's rows are worth more than a
        sure one's), the estimated acceptance alpha_i where not."""
        if k == 0 or not self.branches(source):
            return []
        if not confidences and k <= self.k_max:
            # From the estimates alone, for every k at once: a depth's weight depends only on
            # the depths before it, so k's rows are the k_max chain's, those deeper than k left out.
            key = self._key(source)
            rows = self._known("sibling rows", key,
                               lambda: self._sibling_rows(source, self.k_max, self.alphas(source)))
            return [g for d, g in rows if d <= k]
        confidences = list(confidences or ())[:k]
        sure = confidences + list(self.alphas(source)[len(confidences):k])
        return [gain for _, gain in self._sibling_rows(source, k, sure)]

    def _sibling_rows(self, source: str, k: int, sure) -> list[tuple[int, float]]:
        """(depth, expected tokens) of each row past a k chain whose tokens are `sure`."""
        rates, chances = self.sibling_rates(source), rejection_chances(k, sure)
        tree = plan_tree(k, [SIBLINGS] * k, k + 1 + k * SIBLINGS, sure)
        return [(d, chances[d - 1] * rates[r]) for d, r in tree.siblings]

    def expected(self, source: str, k: int, size: int | None = None, gains: list[float] | None = None) -> float:
        """1 + sum_j prod_{i<=j} alpha_i, plus what the siblings in the verification's rows
        past the chain add (`sibling_gains`; `gains` where already computed) when it feeds
        `size` tokens (None: the cheapest size)."""
        total = self.chain_tokens(source)[min(k, self.k_max)]
        size = padded_tokens(self.costs, k) if size is None else size
        gains = self.sibling_gains(source, k) if gains is None else gains
        return total + sum(gains[: max(size - (k + 1), 0)])

    def chain_tokens(self, source: str) -> tuple[float, ...]:
        """Per k (0 .. k_max), the tokens a chain of k from `source` is expected to land,
        its bonus token included: 1 + sum_j prod_{i<=j} alpha_i."""
        def totals() -> tuple[float, ...]:
            result, reach = [1.0], 1.0
            for a in self.alphas(source):
                reach *= a
                result.append(result[-1] + reach)
            return tuple(result)
        return self._known("chain tokens", self._key(source), totals)

    def _rate(self, source: str, k: int, size: int, gains: list[float] | None = None) -> float:
        """Expected tokens per second of `source` proposing k, verified in `size` tokens."""
        if self._free(source):
            cost = self.costs.round_cost(k, 0.0, size)
        else:
            cost = self.costs.round_cost(k, size=size)
        return self.expected(source, k, size, gains) / cost

    def _best_size(self, source: str, k: int, confidences: list[float] | None = None) -> tuple[int, float]:
        """(tokens to feed, expected rate): the cheapest verification, or a larger one whose
        extra rows hold siblings that are expected to pay for it (only paid sources, which
        have siblings, are offered a larger size; `sibling_gains` for `confidences`)."""
        sizes = self.costs.sizes(k)
        gains = self.sibling_gains(source, k, confidences)
        if not gains or max(sizes) <= k + 1:
            sizes = sizes[:1]
        return max(((size, self._rate(source, k, size, gains)) for size in sizes), key=lambda sr: sr[1])

    def rate(self, source: str, k: int) -> float:
        """Expected tokens per second of a round proposing k tokens from `source`."""
        return self._best_size(source, k)[1]

    def plan(self, source: str) -> tuple[int, float]:
        """The best k for `source` and its expected rate (a k = 0 winner is probed with
        k = 1 now and then)."""
        source = self._key(source)
        rates = [self.rate(source, k) for k in range(self.k_max + 1)]
        k_best = max(range(1, len(rates)), key=rates.__getitem__, default=0)
        # against plain decoding's rate (the margin pays for what the calibration cannot see)
        if k_best and rates[k_best] < (1 + self.margin) / self.costs.verify[0]:
            k_best = 0
        if k_best == 0 and not self._free(source):  # a free source is scored every round anyway
            self.idle[source] = self.idle.get(source, 0) + 1
            if self.idle[source] >= self.wait.get(source, self.probe_soon) and self._affords_probe(source):
                k_best, self.idle[source] = 1, 0
                self.probing.add(source)
                self.probed.add(source)
        return k_best, rates[k_best]

    def probe_price(self, source: str) -> float:
        """What a failed probe of `source` costs beyond the plain step it replaces, in plain
        steps: verifying 2 tokens instead of 1, and the draft's forward over the tokens it
        skipped while benched (about one per idle round)."""
        source = self._key(source)
        verify = self.costs.forward(padded_tokens(self.costs, 1), 1) - self.costs.verify[0]
        catch_up = 0.0 if self._free(source) else self.costs.draft_forward(self.idle.get(source, 0) + 1)
        return (verify + catch_up) / self.costs.verify[0]

    def _affords_probe(self, source: str) -> bool:
        """Whether the ledger can pay for a probe that fails: exploring a benched draft then
        costs at most `explore` of plain decoding's time and `explore_grace` steps (a text the
        draft cannot help with stays that close to plain decoding), and what drafting saved
        pays for more. A source's first probe since the last reset is made on schedule all the
        same: the opening round, drafted on the prior, is often rejected at its first token
        (the reply's first words chosen otherwise: the target began with "```python"),
        and charged to the ledger that one round would bench a draft that is right about the
        rest for 40 tokens and more (host E, greedy csv-sum: 50 of 66 rounds plain, while the
        draft's chains, once probed, had 75% accepted). One failed probe costs under one
        plain step."""
        return self._key(source) not in self.probed or self._within_budget(self.saved - self.probe_price(source))

    def _within_budget(self, saved: float) -> bool:
        """Whether a generation that saved `saved` plain steps (negative: lost) stays within
        the exploring budget: `explore` of its tokens and `explore_grace` steps (always, with
        `explore` None)."""
        return self.explore is None or saved >= -(self.explore * self.emitted + self.explore_grace)

    def settle(self, tokens: int, verified: int, forwards=(), seconds: float | None = None) -> None:
        """A round emitted `tokens` for a target forward over `verified` tokens and draft
        forwards over `forwards` tokens, in `seconds` (proposing and verifying): enter what it
        saved over plain decoding (negative where it cost more) in the ledger that pays for
        probes, and, when learning the costs, what it took."""
        self.saved += tokens - self.costs.round_steps(verified, forwards)
        self.emitted += tokens
        if self.round_costs is not None and seconds is not None:
            self.round_costs.observe(verified, forwards, seconds)
            self.costs = self.round_costs.costs

    @property
    def draft_price(self) -> float | None:
        """The draft's price against the target's relative to the calibration's, as the
        rounds measured it (None: not learning)."""
        return self.round_costs.draft_price if self.round_costs is not None else None

    def choose(self, source: str) -> int:
        return self.plan(source)[0]

    @property
    def stop_below(self) -> float:
        """A draft step pays while the chain so far is at least this likely to be accepted:
        a step costs draft_step, an accepted token saves about one plain decoding step."""
        plain = self.costs.verify[0]
        return min(self.costs.draft_step / plain, 1.0) if plain > 0 else 0.0

    def chain(self, source: str, k: int) -> tuple[int, float]:
        """How far a draft that can stop itself may run when `plan` gave it k > 0, and the
        confidence below which it stops: up to `chain_factor` times the planned k (at least
        `chain_floor`, at most k_max), stopping earlier where the draft's own confidence says
        the next step is not worth its cost. The estimates above pick whether to draft and
        roughly how far; the draft, which sees each token, picks where to stop within that
        (a fixed chain length drafts past the hard tokens, or stops short of easy runs). The
        cap is for a draft that is confidently wrong: where its recent chains failed, the
        planned k is short, and a chain the draft is sure of (a preamble worded its own way)
        no longer runs to k_max for nothing. A probe stays one token, and a generation that
        the ledger shows behind plain decoding by more than the exploring budget (`in_red`)
        drafts its planned k and no further, so one round can lose no more than its plan."""
        if k <= 0 or self._key(source) in self.probing:
            return k, 0.0
        if self.in_red():
            return k, self.stop_below
        return min(self.k_max, max(self.chain_floor, self.chain_factor * k)), self.stop_below

    def in_red(self) -> bool:
        """Whether this generation's rounds cost more than plain decoding would have by more
        than the exploring budget (`explore` of its tokens and `explore_grace` steps)."""
        return not self._within_budget(self.saved)

    def verify_tokens(self, k: int, source: str | None = None, confidences: list[float] | None = None) -> int:
        """Tokens to feed the target to verify k drafts from `source` (None: the cheapest),
        whose draft read its confidence in each token where given (`confidences`)."""
        if source is None:
            return padded_tokens(self.costs, k)
        return self._best_size(source, k, confidences)[0]

    def update(self, source: str, k: int, n: int, siblings_tried: int = 0, sibling_hit: int | None = None) -> None:
        """A round proposed k tokens from `source` and the target accepted n. Where n < k,
        the verification held the draft's `siblings_tried` best runners-up at the rejected
        position (ranks 0 .. siblings_tried - 1) and `sibling_hit` is the rank of the one that
        was the correction (None: none was)."""
        if k == 0:
            return
        self._memo.clear()
        source = self._key(source)
        if siblings_tried:
            counts = self.sibling_counts.setdefault(source, [[0.0, 0.0] for _ in RANK_WORTH])
            for rank, c in enumerate(counts[:siblings_tried]):
                c[0] = c[0] * self.decay + (rank == sibling_hit)
                c[1] = c[1] * self.decay + (rank != sibling_hit)
        if n > 0:
            self.wait[source] = self.probe_soon
        elif source in self.probing:  # a failed probe: wait twice as long for the next
            self.wait[source] = min(2 * self.wait.get(source, self.probe_soon), self.probe_every)
        self.probing.discard(source)
        counts = self.counts.setdefault(source, [[0.0, 0.0] for _ in range(self.k_max)])
        for i, c in enumerate(counts):
            c[0] *= self.decay
            c[1] *= self.decay
            if i < min(n, len(counts)):
                c[0] += 1
            elif i == n and n < k:
                c[1] += 1


def _forward_costs(models, context: int, repeats: int) -> list[dict[int, float]]:
    """Median seconds of one forward of T new tokens after `context` cached ones, per model
    (`models`: (model, token counts, forward) triples; forward(tokens, cache) -> logits, the
    model itself where None) and per T.

    Every model and size is measured once per pass, in interleaved passes after one pass that
    compiles, allocates and pages the weights in: a host whose speed drifts during the
    calibration then shifts every measurement alike, and the ratios the policy plans with
    (draft step to target step, one verification size to another) stay true.
    """
    caches = []
    for model, _, _ in models:
        cache = make_prompt_cache(model)
        mx.eval(model(mx.zeros((1, context), dtype=mx.int32), cache=cache))
        caches.append(cache)
    times = [{tokens: [] for tokens in sizes} for _, sizes, _ in models]
    for attempt in range(repeats + 1):
        for (model, sizes, forward), cache, measured in zip(models, caches, times):
            forward = forward or model
            for tokens in sizes:
                tic = time.perf_counter()
                mx.eval(forward(mx.ones((1, tokens), dtype=mx.int32), cache=cache))
                if attempt:
                    measured[tokens].append(time.perf_counter() - tic)
                for c in cache:
                    c.trim(tokens)
    return [{tokens: statistics.median(t) for tokens, t in measured.items()} for measured in times]


def calibrate(target, draft=None, k_max: int = 8, context: int = 128, repeats: int = 5, head=None) -> Costs:
    """Measure the target's forward cost for T = 1 .. 2(k_max+1) tokens (a ladder of sizes)
    and the draft's step, through `head` (a draft_head.SubsetHead) where the draft runs one:
    a draft step priced with the whole output layer reads dearer than the rounds pay (host H:
    the rounds put it at 0.77-0.88 of such a price).

    t_verify(k) is the cheapest forward of at least k+1 tokens: a BLAS may be faster at some
    larger T than at k+1 (seen with OpenBLAS on the CPU), and padding the verification with
    tokens whose outputs are ignored is free of side effects (causal attention; the cache is
    trimmed after the round). `verify_tokens[k]` records the T to feed.
    """
    # Token counts to measure: a sparse ladder up to 2(k_max+1) (the BLAS may favour a larger
    # size); a k whose k+1 is not on it is verified padded to the cheapest measured size above.
    ladder = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    sizes = sorted({t for t in ladder if t <= 2 * (k_max + 1)} | {k_max + 1})
    head = head if draft is not None else None
    forward = None if head is None else (lambda tokens, cache: head.logits(draft.model(tokens, cache=cache)))
    models = [(target, sizes, None)] + ([(draft, [1, k_max + 1], forward)] if draft is not None else [])
    measured, *drafted = _forward_costs(models, context, repeats)
    draft_step, draft_batch = 0.0, None
    if drafted:
        draft_step, draft_batch = drafted[0][1], drafted[0][k_max + 1]
    return _costs(measured, draft_step, draft_batch, k_max, head_kind(head))


def head_kind(head) -> str | None:
    """What a calibration records of the draft's output layer: "subset" or None (all of it)."""
    return None if head is None else "subset"


def _costs(ladder: dict[int, float], draft_step: float, draft_batch: float | None, k_max: int,
           draft_head: str | None = None) -> Costs:
    """Costs from measured target forwards (tokens -> seconds): each k verified at the
    cheapest measured size of at least k+1 tokens."""
    verify, verify_tokens = [], []
    for k in range(k_max + 1):
        best = min((t for t in ladder if t >= k + 1), key=lambda t: (ladder[t], t))
        verify.append(ladder[best])
        verify_tokens.append(best)
    return Costs(draft_step=draft_step, verify=verify, verify_tokens=verify_tokens, draft_batch=draft_batch,
                 ladder=dict(ladder), draft_head=draft_head)


# A fresh calibration whose plan-setting ratios (a draft step, a draft batch and each measured
# verification, in plain steps) differ from the cached ones by more than this is read once more,
# and the median of the three readings is kept (`cached_calibration`).
CALIBRATION_AGREE = 0.15


def _ratios(costs: Costs) -> dict[str, float]:
    plain = costs.ladder[1]
    ratios = {f"verify {t}": s / plain for t, s in costs.ladder.items()}
    ratios["draft step"] = costs.draft_step / plain
    if costs.draft_batch is not None:
        ratios["draft batch"] = costs.draft_batch / plain
    return ratios


def _comparable(a: Costs | None, b: Costs) -> bool:
    return bool(a and a.ladder and b.ladder and 1 in b.ladder and set(a.ladder) == set(b.ladder)
                and (a.draft_batch is None) == (b.draft_batch is None) and a.draft_head == b.draft_head
                and a.ladder[1] > 0 and b.ladder[1] > 0)


def _disagree(a: Costs, b: Costs, tolerance: float = CALIBRATION_AGREE) -> bool:
    ra, rb = _ratios(a), _ratios(b)
    return any(abs(rb[name] - ra[name]) > tolerance * ra[name] for name in ra if ra[name] > 0)


def _median_costs(readings: list[Costs], k_max: int) -> Costs:
    """Per ratio the median over the readings, scaled by the median plain step: a reading
    whose plain step or draft step was misread (a host that slowed one model for most of a
    minute) is outvoted by the two that agree."""
    plain = statistics.median(c.ladder[1] for c in readings)
    ratios = [_ratios(c) for c in readings]
    median = {name: statistics.median(r[name] for r in ratios) for name in ratios[0]}
    ladder = {t: plain * median[f"verify {t}"] for t in readings[0].ladder}
    batch = plain * median["draft batch"] if "draft batch" in median else None
    return _costs(ladder, plain * median["draft step"], batch, k_max, readings[0].draft_head)


def calibration_path() -> Path:
    home = os.environ.get("MLX_SPEC_HOME") or Path.home() / ".cache" / "mlx-spec"
    return Path(home) / "calibration.json"


def _machine_key() -> str:
    from mlx_spec.platform import machine

    m = machine()
    # the BLAS and its kernels set a CPU's costs as much as the chip does
    blas = f"|{m['blas']}" if m.get("blas") else ""
    return hashlib.sha1(f"{m['chip']}|{m['backend']}|{m['cpu_cores']}{blas}".encode()).hexdigest()[:12]


def calibration_key(target_name: str, draft_name: str | None, target_bytes: int) -> str:
    """The calibration's key: this machine, the pair's names and the target's size."""
    return "|".join([_machine_key(), target_name, draft_name or "-", str(target_bytes)])


def _calibration_table() -> dict:
    """calibration.json's entries by key ({} when it is missing, unreadable or not an object:
    a cache that cannot be read is measured again and overwritten)."""
    try:
        table = json.loads(calibration_path().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _seconds(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < math.inf


def _cached_costs(entry) -> Costs | None:
    """The Costs a calibration.json entry holds, or None where it has not that shape (edited
    by hand, cut short, from another version): such an entry is ignored and measured again."""
    if not isinstance(entry, dict):
        return None
    verify, tokens = entry.get("verify"), entry.get("verify_tokens")
    if not (_seconds(entry.get("draft_step")) and isinstance(verify, list) and verify
            and all(map(_seconds, verify)) and verify[0] > 0
            and (tokens is None or isinstance(tokens, list) and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tokens))
            and (entry.get("draft_batch") is None or _seconds(entry["draft_batch"]))
            and (entry.get("ladder") is None or isinstance(entry["ladder"], dict))
            and (entry.get("draft_head") is None or isinstance(entry["draft_head"], str))):
        return None
    try:
        return Costs(**entry)
    except (TypeError, ValueError):  # unknown fields, ladder entries that are not numbers
        return None


def calibrated_pairs() -> list[tuple[str, str, Costs]]:
    """(target, draft, costs) of every pair calibrated on this machine, as cached."""
    machine_key = _machine_key()
    pairs = []
    for key, entry in _calibration_table().items():
        parts = key.split("|")
        costs = _cached_costs(entry)
        if len(parts) == 4 and parts[0] == machine_key and costs is not None:
            pairs.append((parts[1], parts[2], costs))
    return pairs


def cached_calibration(key: str, target, draft=None, k_max: int = 8, fresh: bool = False, head=None) -> Costs:
    """Costs for this machine and pair (the draft timed through `head`, its subset output
    layer, where it has one), measured once and kept in calibration.json; `fresh`
    measures them again (a shared host drifts: on host E a cached draft step read 0.32 of a
    plain step when it had come to cost 0.35) and keeps the new ones. Where the new reading's
    ratios disagree with the cached ones by more than CALIBRATION_AGREE, a third reading
    settles it: the median of the three is kept (host G once read a draft step at 0.48 of a
    plain step, where its four other readings were 0.30 to 0.34)."""
    path = calibration_path()
    table = _calibration_table()
    costs = _cached_costs(table.get(key))
    # an entry from before the ladder was kept was also measured without interleaving
    # (and one whose draft was timed with another output layer than it now runs is measured again)
    if not fresh and costs and len(costs.verify) > k_max and costs.ladder and (
        draft is None or costs.draft_batch is not None and costs.draft_head == head_kind(head)
    ):
        return costs
    new = calibrate(target, draft, k_max=k_max, head=head)
    if fresh and _comparable(costs, new) and _disagree(costs, new):
        new = _median_costs([costs, new, calibrate(target, draft, k_max=k_max, head=head)], k_max)
    costs = new
    table[key] = asdict(costs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-calibration next time
    return costs
