"""The decode loop: one round at a time, with or without a proposer.

A round: propose k tokens -> target forward on [last, d_1..d_k] -> acceptance -> one host
synchronisation -> trim the caches to the accepted prefix -> emit n+1 tokens. Plain decoding
is this same loop with no proposer (k = 0). The verification (target forward, probabilities,
acceptance) is one lazy MLX graph evaluated by the round's single synchronisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, NamedTuple, Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

from mlx_spec.acceptance import accept, sample_from_weights
from mlx_spec.coupling import token_scores
from mlx_spec.errors import SpecError
from mlx_spec.policy import FixedK
from mlx_spec.proposers import Proposal, Proposer, cache_length, common_prefix, forward_chunked, rollback
from mlx_spec.sampling import SamplingParams, apply_processors, probabilities
from mlx_spec.stats import Stats
from mlx_spec.text import CodeFences, StopText, TextStream
from mlx_spec.tree import Tree, keep_node, plan_tree, supports_tree, tree_forward


class Offer(NamedTuple):
    """A way to propose this round: its expected rate, its k, how to make the proposal, and
    the free guess it is (None for a paid source)."""

    rate: float
    k: int
    make: Callable[[int], "Proposal | None"]
    guess: "Proposal | None" = None


@dataclass
class Step:
    """What one round emits: its tokens, which of them were drafted, the new text."""

    tokens: list[int]
    drafted: list[bool]
    text: str
    finish_reason: str | None  # "stop" (EOS or stop string), "length", or None
    stats: Stats


def shadow_outcome(tokens: list[int], committed: list[int]) -> tuple[int, int]:
    """(k, n) a shadow proposal would have scored against the round's committed tokens.

    The committed tokens are the target's own choices, so a proposed token matching them is
    one the round would have accepted: greedy, exactly; sampling, with probability p(x), the
    one-hot acceptance. Positions past the committed tokens are unknown and not counted.
    """
    return min(len(tokens), len(committed)), common_prefix(tokens, committed)


def host_sync(values: mx.array) -> list[int]:
    """The one place a round waits for the device."""
    return values.tolist()


class Engine:
    """The state that lives across rounds and turns: the target, its KV cache, the committed
    context, the proposers (tried in order each round) and the policy choosing k."""

    def __init__(self, target, tokenizer, proposers: Sequence[Proposer] = (), policy=None,
                 target_vocab: int | None = None, use_kernel: bool | None = None,
                 tree: bool = True):
        self.target, self.tokenizer = target, tokenizer
        self.cache = make_prompt_cache(target)
        self.proposers = list(proposers)
        if self.proposers and not can_trim_prompt_cache(self.cache):
            kinds = sorted({type(c).__name__ for c in self.cache if not c.is_trimmable()})
            raise SpecError(
                f"the target's KV cache cannot be rolled back ({', '.join(kinds)}), "
                "so rejected draft tokens could not be undone",
                "run it without a draft (--no-draft) for plain decoding",
            )
        self.policy = policy or FixedK(4 if self.proposers else 0)
        # siblings in the verification's padding rows (`tree`), where the target allows it
        self.tree = bool(tree and self.proposers) and supports_tree(target)
        if self.tree:
            self.policy.allow_siblings()
        self.target_vocab = target_vocab
        self.use_kernel = use_kernel
        # a free source that can guess how a proposal goes on (`_with_tail`)
        self.guesser = next((p for p in self.proposers if p.free and hasattr(p, "continuation_match")), None)
        self.context: list[int] = []  # committed tokens; the cache holds all but the last

    def reset(self) -> None:
        """Forget the conversation: the next prompt is prefilled from scratch and k is chosen
        from the prior again (acceptance learned on other text does not carry over)."""
        self.context = []
        rollback(self.cache, 0)
        for proposer in self.proposers:
            proposer.reset()
        self.policy.reset()

    def prefill(self, prompt: list[int], proposers: bool = True) -> int:
        """Bring the caches to `prompt`, reusing the longest prefix they already hold, and the
        proposers to it (only the free ones if `proposers` is False: `prefill_proposers`
        brings the paid ones later). Returns how many prompt tokens the target had to
        process anew."""
        if not prompt:
            raise SpecError("the prompt is empty", "give at least one token of prompt")
        keep = min(
            common_prefix(self.context, prompt),
            len(prompt) - 1,
            max(len(self.context) - 1, 0),
            cache_length(self.cache),
        )
        if keep < cache_length(self.cache) and not can_trim_prompt_cache(self.cache):
            self.cache, keep = make_prompt_cache(self.target), 0
        rollback(self.cache, keep)
        forward_chunked(self.target, self.cache, prompt[keep:-1])
        self.context = list(prompt)
        self.prefill_proposers(paid=proposers)
        return len(prompt) - keep

    def prefill_proposers(self, paid: bool = True) -> None:
        """Bring the proposers to the context (the draft reads what it has not seen); the
        paid ones (a draft model) only if `paid`."""
        for proposer in self.proposers:
            if paid or proposer.free:
                proposer.prefill(self.context)

    def _propose(self, sampling, rng, k_limit: int, paid: bool = True
                 ) -> tuple[Proposal | None, list[Proposal]]:
        """The round's proposal, and the free proposals that lost to it (from the free
        sources alone unless `paid`).

        Free sources (n-gram lookup) are asked first, for up to k_max tokens; each source
        offers itself (a draft chain jumps over a free guess on its own, proposers.py), and the
        policy ranks the offers by expected rate; the best one with k > 0 proposes. Free
        proposals that lost are scored after the round anyway (shadowed), so their acceptance
        keeps being learned while another source proposes; otherwise a source that fell
        behind once would never be tried again.
        """
        if k_limit <= 0:
            return None, []
        offers: list[Offer] = []
        guesses = []  # what the free sources found this round
        for proposer in self.proposers:
            if proposer.free:
                guess = proposer.propose(self.context, self.policy.k_max, sampling, rng)
                if guess is not None:
                    guesses.append(guess)
                    offers.append(self._offer(guess.key, k_limit, lambda k, g=guess: g.truncated(k), guess))
            elif paid:
                offers.append(self._draft_offer(proposer, k_limit, sampling, rng))
        offers.sort(key=lambda offer: -offer.rate)  # stable: equal rates keep the proposers' order
        for offer in offers:
            proposal = offer.make(offer.k) if offer.k > 0 else None
            if proposal is not None:
                return proposal, [g for g in guesses if g is not offer.guess]
        return None, guesses

    def _offer(self, key: str, k_limit: int, make, guess: Proposal | None = None) -> "Offer":
        k, rate = self.policy.plan(key)
        return Offer(rate, min(k, k_limit), make, guess)

    def _draft_offer(self, proposer: Proposer, k_limit: int, sampling, rng) -> "Offer":
        """A paid source drafting a chain; one that can stop itself is given the policy's
        longest chain and the confidence at which to stop (`policy.chain`)."""
        k, rate = self.policy.plan(proposer.name)
        stop = {}  # proposers that cannot stop themselves are called without stop_below
        if k > 0 and getattr(proposer, "stops_early", False):
            k, stop_below = self.policy.chain(proposer.name, k)
            stop = {"stop_below": stop_below} if stop_below > 0 else {}
        return Offer(rate, min(k, k_limit), lambda k: proposer.propose(self.context, k, sampling, rng, **stop))

    def _siblings_allowed(self, proposal: Proposal | None, sampling: SamplingParams) -> bool:
        """Whether this round's verification may hold the proposal's siblings: a tree-capable
        target, a proposal with runners-up, and no history-dependent processors (a sibling
        row's history would differ from the chain's)."""
        return self.tree and proposal is not None and bool(proposal.siblings) and not sampling.processors

    def _tree(self, proposal: Proposal | None, sampling: SamplingParams, size: int) -> Tree | None:
        """The round's token tree, or None to verify the chain alone: siblings go only into
        the verification's rows past the chain, where they are allowed."""
        if not self._siblings_allowed(proposal, sampling):
            return None
        tree = plan_tree(proposal.k, [s.shape[0] for s in proposal.siblings], size, proposal.confidences)
        return tree if tree.siblings else None

    def _size(self, proposal: Proposal | None, sampling: SamplingParams) -> int:
        """Tokens the round's verification feeds (a larger size than the cheapest only pays
        with siblings in its rows)."""
        if not self._siblings_allowed(proposal, sampling):
            return self.policy.verify_tokens(proposal.k if proposal else 0)
        return self.policy.verify_tokens(proposal.k, proposal.key, proposal.confidences)

    def _spare(self, proposal: Proposal, size: int, sampling: SamplingParams, k_limit: int) -> int:
        """Rows of a verification of `size` tokens left for a tail after the root, the proposal
        and one sibling per drafted position (within the token budget)."""
        reserve = proposal.k if self._siblings_allowed(proposal, sampling) else 0
        return min(size - 1 - proposal.k - reserve, k_limit - proposal.k)

    def _with_tail(self, proposal: Proposal | None, size: int, sampling: SamplingParams,
                   k_limit: int) -> tuple[Proposal | None, int]:
        """The proposal extended into the verification's spare rows by a free guess (the
        n-gram's continuation of context + proposal), where the policy asks for it (a fixed k:
        its k paid draft steps stay k, the rows past them are fed anyway), and the size to
        verify it in. One row per drafted position stays for its best sibling. The tail is
        proposed as any token is, so the round stays lossless; it pays when the whole proposal
        is accepted (the policy may keep the rows for the siblings where the n-gram's guesses
        of its kind fail: `tail_worth`). Where padding is not free, the policy may grow the
        size so that more of the tail fits (`tail_size`: only where the rows pay)."""
        worth = getattr(self.policy, "tail_worth", None)
        if proposal is None or self.guesser is None or worth is None or not worth():
            return proposal, size
        drafted = proposal.host if proposal.host is not None else proposal.tokens.tolist()
        tail, n = self.guesser.continuation_match(self.context, drafted, k_limit - proposal.k)
        key = f"{self.guesser.name}:{n}"
        if not tail or not worth(key):
            return proposal, size

        def room(s: int) -> int:  # tail tokens a verification of s tokens holds
            return max(min(self._spare(proposal, s, sampling, k_limit), len(tail)), 0)

        pick = getattr(self.policy, "tail_size", None)
        if pick is not None:
            size = pick(proposal.key, proposal.k, size, key, room)
        if room(size) == 0:
            return proposal, size
        return proposal.extended(tail[: room(size)], drafted), size

    def _verify(self, proposal: Proposal | None, sampling: SamplingParams, rng, size: int
                ) -> tuple[mx.array, Tree | None, int]:
        """Lazy graph: target forward on [last, drafts] (and siblings) padded to `size`
        tokens, acceptance -> [n, extra, drafts..., siblings..., the token after each
        sibling...]; the tree; the tokens fed."""
        drafts = proposal.tokens if proposal else mx.zeros((0,), dtype=mx.int32)
        k = drafts.shape[0]
        tree = self._tree(proposal, sampling, size)
        inputs = [mx.array(self.context[-1:], dtype=mx.int32), drafts]
        if tree is not None:
            inputs.append(mx.stack([proposal.siblings[d - 1][r] for d, r in tree.siblings]))
        pad = size - sum(x.shape[0] for x in inputs)
        if pad > 0:  # padding rows are ignored and their cache entries trimmed
            inputs.append(mx.zeros((pad,), dtype=mx.int32))
        inputs = mx.concatenate(inputs)
        if tree is None:
            rows = self.target(inputs[None], cache=self.cache)[0]
        else:
            rows = tree_forward(self.target, inputs, tree, self.cache)
        logits = rows[: k + 1].astype(mx.float32)
        if sampling.processors:
            # Row i must see the history plain decoding would have had: context + d_1..d_i.
            history = mx.array(self.context, dtype=mx.int32)
            rows = [
                apply_processors(sampling.processors, mx.concatenate([history, drafts[:i]]), logits[i : i + 1])
                for i in range(k + 1)
            ]
            logits = mx.concatenate(rows)
        if sampling.greedy:
            # the argmax of the logits: that of the log-probabilities (a row less one constant),
            # without a pass of `exp` over every row; plain decoding reads its row the same way
            n, extra = accept(logits, None, drafts, None, greedy=True, use_kernel=self.use_kernel)
        elif sampling.invariant:
            # row i's token is the perturbed argmax at position len(context) + i
            positions = range(len(self.context), len(self.context) + k + 1)
            scores = token_scores(logits, sampling, positions)
            n, extra = accept(scores, None, drafts, None, greedy=True, use_kernel=self.use_kernel)
        else:
            p = probabilities(logits, sampling)
            u = mx.array(rng.random(k + 1, dtype=np.float32))
            q = proposal.q if proposal else None
            n, extra = accept(p, q, drafts, u, greedy=False, use_kernel=self.use_kernel)
        values = [n[None], extra[None], drafts]
        if tree is not None:
            after = self._after_siblings(rows, tree, sampling, rng, len(self.context))
            values += [inputs[k + 1 : k + 1 + len(tree.siblings)], after]
        return mx.concatenate(values).astype(mx.int32), tree, inputs.shape[0]

    @staticmethod
    def _after_siblings(rows: mx.array, tree: Tree, sampling: SamplingParams, rng, start: int = 0) -> mx.array:
        """The target's next token after each sibling, drawn as plain decoding draws it (the
        round uses the one after the sibling that equals its extra token, if any). `start`:
        the position of the round's first token (a sibling at depth d stands at start + d - 1,
        the token after it at start + d)."""
        logits = rows[tree.k + 1 : tree.k + 1 + len(tree.siblings)].astype(mx.float32)
        if sampling.greedy:
            return mx.argmax(logits, axis=-1)
        if sampling.invariant:
            positions = [start + d for d, _ in tree.siblings]
            return mx.argmax(token_scores(logits, sampling, positions), axis=-1)
        p = probabilities(logits, sampling)
        u = mx.array(rng.random(p.shape[0], dtype=np.float32))
        return mx.stack([sample_from_weights(p[j], u[j]) for j in range(p.shape[0])])

    def decode(
        self,
        prompt: list[int],
        *,
        sampling: SamplingParams = SamplingParams(),
        max_tokens: int = 256,
        stop_strings: Sequence[str] = (),
        stats: Stats | None = None,
        quick_start: bool = False,
    ) -> Iterator[Step]:
        """Generate after `prompt`, one Step per round. Closing the generator cancels; the
        caches then hold exactly the tokens emitted so far. `quick_start`: the first round
        goes without the paid proposers (a draft model), which read the prompt only after it
        has been yielded, so the first token comes as soon as plain decoding's would (for a
        chat's reply; a free n-gram guess may still carry that round); the speculation it
        forgoes costs about one round's gain."""
        if max_tokens < 1:
            raise SpecError(f"max_tokens must be at least 1, got {max_tokens}", "e.g. --max-tokens 256")
        stats = stats or Stats()
        rng = np.random.default_rng(sampling.seed)
        if sampling.invariant and not sampling.greedy and sampling.seed is None:
            sampling = replace(sampling, seed=int(rng.integers(2**63)))  # the noise needs one
        eos = frozenset(self.tokenizer.eos_token_ids)
        for proposer in self.proposers:  # nothing after a reply's end is worth proposing
            proposer.ends = eos
        stop_text = StopText(stop_strings)

        tic = called = time.perf_counter()
        # paid proposers not yet brought to the context (free ones cost nothing to bring)
        waiting = quick_start and any(not proposer.free for proposer in self.proposers)
        stats.prompt_tokens = self.prefill(prompt, proposers=not waiting)
        text_stream = TextStream(self.tokenizer, prompt[-1:])
        fences = CodeFences()  # prose or code: the policy learns a paid source per regime
        stats.prompt_time = time.perf_counter() - tic
        mx.reset_peak_memory()
        generated, finish = 0, None
        start = time.perf_counter()
        while finish is None:
            if waiting and generated:  # the quick start's first round has been yielded
                tic = time.perf_counter()
                self.prefill_proposers()
                spent = time.perf_counter() - tic
                stats.prompt_time += spent
                start += spent  # prompt time, not generation time
                waiting = False
            regime = fences.regime
            self.policy.enter(regime)
            t0 = time.perf_counter()
            k_limit = max_tokens - generated - 1
            proposal, shadows = self._propose(sampling, rng, k_limit, paid=not waiting)
            proposal, size = self._with_tail(proposal, self._size(proposal, sampling), sampling, k_limit)
            t1 = time.perf_counter()
            graph, tree, size = self._verify(proposal, sampling, rng, size)
            values = host_sync(graph)
            t2 = time.perf_counter()
            stats.host_syncs += 1
            k = proposal.k if proposal else 0
            n, extra, drafts = values[0], values[1], values[2 : 2 + k]
            committed = drafts[:n] + [extra]
            node = None  # the sibling whose token is the extra one: its row gives one more
            if tree is not None and n < k:
                siblings = values[2 + k : 2 + k + len(tree.siblings)]
                node = tree.node(n + 1, extra, siblings)
                if node is not None:
                    committed.append(values[2 + k + len(tree.siblings) + node - (k + 1)])

            # Stop conditions inside the round: never emit past them.
            text = ""
            for j, token in enumerate(committed):
                generated += 1
                if token in eos:
                    finish = "stop"
                else:
                    piece = text_stream.add(token)
                    fences.feed(piece)
                    emitted, hit = stop_text.feed(piece)
                    text += emitted
                    finish = "stop" if hit else None
                if finish is None and generated >= max_tokens:
                    finish = "length"
                if finish is not None:
                    committed = committed[: j + 1]
                    break
            if finish is not None and not stop_text.hit:
                # EOS or max tokens: release what the detokenizer and stop filter held back
                emitted, _ = stop_text.feed(text_stream.finalize())
                text += emitted + stop_text.flush()

            # Roll back: the target cache keeps [last, accepted drafts (, the sibling)]; the
            # new last is the final committed token, not yet processed.
            from_tree = node is not None and len(committed) == n + 2  # the stop kept its token
            if from_tree:
                base = len(self.context) - 1  # the root's cache entry
                keep_node(self.cache, base + node, base + n + 1)
            self.context += committed
            rollback(self.cache, len(self.context) - 1)
            n_accepted = min(n, len(committed))
            for proposer in self.proposers:
                proposer.observe(proposal, n_accepted, committed)
            if proposal is not None:
                tried = sum(d == n + 1 for d, _ in tree.siblings) if tree is not None and n < k else 0
                hit = tree.siblings[node - (k + 1)][1] if node is not None else None
                self.policy.update(proposal.key, k, n, tried, hit)
            for shadow in shadows:
                self.policy.update(shadow.key, *shadow_outcome(shadow.host, committed))
            forwards = proposal.forwards if proposal else ()
            self.policy.settle(len(committed), size, forwards, t2 - t0)
            stats.draft_price = getattr(self.policy, "draft_price", None)
            stats.record_round(proposal.source if proposal else None, k, n_accepted, len(committed),
                               forwards, size, committed, (t1 - t0, t2 - t1), regime,
                               proposed=drafts, sibling_hit=from_tree)
            stats.sibling_hits += from_tree
            if proposal is not None and proposal.tail:
                stats.tail_proposed += proposal.tail
                stats.tail_accepted += max(n_accepted - (k - proposal.tail), 0)
            t3 = time.perf_counter()
            stats.draft_time += t1 - t0
            stats.verify_time += t2 - t1
            stats.other_time += t3 - t2
            stats.generation_time = t3 - start
            stats.peak_memory_gb = mx.get_peak_memory() / 1e9
            if stats.rounds == 1:
                stats.first_token_time = t3 - called
            yield Step(
                tokens=committed,
                drafted=[j < n_accepted or (j == n and node is not None) for j in range(len(committed))],
                text=text,
                finish_reason=finish,
                stats=stats,
            )
