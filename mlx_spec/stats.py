"""Statistics of one generation: speed, acceptance (tau, by position), k, time split, memory.

First-class, not an afterthought: every front end (chat, generate, bench) reads this object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    prompt_tokens: int = 0  # tokens prefilled by the target this call (new suffix only)
    prompt_time: float = 0.0
    first_token_time: float = 0.0  # from the call to the first round's tokens (prefill included)
    generated_tokens: int = 0
    generation_time: float = 0.0
    rounds: int = 0
    target_forwards: int = 0  # verification passes (one per round)
    host_syncs: int = 0  # host synchronisations inside rounds
    drafted: int = 0  # proposed tokens, all rounds
    accepted: int = 0  # proposed tokens the target accepted
    sibling_hits: int = 0  # rounds whose extra token was a sibling: one more token from the tree
    tail_proposed: int = 0  # free guessed tokens that extended proposals (a fixed k's spare rows)
    tail_accepted: int = 0  # of them, accepted
    proposed_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    k_counts: Counter = field(default_factory=Counter)
    rounds_by_source: Counter = field(default_factory=Counter)
    # per source, as rounds_by_source: what its rounds drafted, the target accepted, emitted
    drafted_by_source: Counter = field(default_factory=Counter)
    accepted_by_source: Counter = field(default_factory=Counter)
    tokens_by_source: Counter = field(default_factory=Counter)
    draft_forwards: Counter = field(default_factory=Counter)  # tokens fed -> draft forwards
    verify_sizes: Counter = field(default_factory=Counter)  # tokens fed -> verifications
    draft_time: float = 0.0
    verify_time: float = 0.0
    other_time: float = 0.0
    peak_memory_gb: float = 0.0
    # the draft's price against the target's relative to the calibration's, as the rounds
    # measured it (policy.AdaptiveK.draft_price; None: the policy does not learn its costs)
    draft_price: float | None = None
    target_bytes: int = 0
    draft_bytes: int = 0
    trace: list[dict] | None = None  # a list: one record per round is appended (`record_round`)

    def record_round(self, source: str | None, k: int, n: int, emitted: int,
                     forwards: tuple[int, ...] = (), verified: int | None = None,
                     tokens: list[int] | None = None, seconds: tuple[float, float] | None = None,
                     regime: str | None = None, proposed: list[int] | None = None,
                     sibling_hit: bool = False) -> None:
        """One round: its proposal's source, k drafted, n accepted, tokens emitted, the
        token counts of the draft forwards that made the proposal, and the tokens the
        verification fed (padding and siblings included; None: k + 1). When tracing, the
        round's record also keeps the `tokens` it emitted, `seconds` (proposing, verifying),
        the `regime` of the text it continued (prose, or code inside a fenced block), the
        `proposed` tokens the round verified (its k, a free tail included: where they part
        from `tokens` is where the target disagreed) and whether a `sibling_hit`, a runner-up
        verified beside the chain, was the target's token there."""
        if self.trace is not None:
            self.trace.append({
                "source": source or "none", "k": k, "accepted": n, "emitted": emitted,
                "tokens": list(tokens or ()), "draft_forwards": list(forwards),
                "verified": k + 1 if verified is None else verified,
                "propose_s": seconds[0] if seconds else None, "verify_s": seconds[1] if seconds else None,
                "regime": regime, "proposed": list(proposed or ()), "sibling_hit": sibling_hit,
            })
        self.rounds += 1
        self.draft_forwards.update(forwards)
        self.verify_sizes[k + 1 if verified is None else verified] += 1
        self.target_forwards += 1
        self.generated_tokens += emitted
        self.k_counts[k] += 1
        source = source or "none"
        self.rounds_by_source[source] += 1
        self.drafted_by_source[source] += k
        self.accepted_by_source[source] += n
        self.tokens_by_source[source] += emitted
        self.drafted += k
        self.accepted += n
        grow = k - len(self.proposed_by_position)
        if grow > 0:
            self.proposed_by_position += [0] * grow
            self.accepted_by_position += [0] * grow
        for i in range(k):
            self.proposed_by_position[i] += 1
            self.accepted_by_position[i] += i < n

    @property
    def tau(self) -> float:
        """Mean tokens emitted per round (1.0 for plain decoding)."""
        return self.generated_tokens / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_by_position, self.proposed_by_position)]

    @property
    def mean_k(self) -> float:
        return self.drafted / self.rounds if self.rounds else 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_time if self.prompt_time > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time > 0 else 0.0

    @property
    def bandwidth_gbs(self) -> float:
        """Achieved bandwidth: target weight bytes x target forward passes per second."""
        if self.generation_time <= 0:
            return 0.0
        return self.target_bytes * self.target_forwards / self.generation_time / 1e9

    def by_source(self) -> dict[str, dict[str, float]]:
        """Each source's rounds, drafted and accepted tokens, tokens emitted, τ and acceptance
        rate: which proposer paid in this generation, and which only cost."""
        table = {}
        for source, rounds in sorted(self.rounds_by_source.items()):
            drafted, accepted = self.drafted_by_source[source], self.accepted_by_source[source]
            table[source] = {
                "rounds": rounds, "drafted": drafted, "accepted": accepted,
                "tokens": self.tokens_by_source[source], "tau": self.tokens_by_source[source] / rounds,
                "acceptance_rate": accepted / drafted if drafted else 0.0,
            }
        return table

    def time_split(self) -> dict[str, float]:
        total = self.draft_time + self.verify_time + self.other_time
        if total <= 0:
            return {"draft": 0.0, "verify": 0.0, "other": 0.0}
        return {
            "draft": self.draft_time / total,
            "verify": self.verify_time / total,
            "other": self.other_time / total,
        }

    def summary(self) -> str:
        """The one-line summary chat prints after each reply."""
        line = f"{self.generation_tps:.1f} tok/s, {self.generated_tokens} tokens"
        if self.drafted:
            line += f", tau {self.tau:.2f}, accepted {self.acceptance_rate:.0%}, k {self.mean_k:.1f}"
        return line

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_tps": self.prompt_tps,
            "first_token_time": self.first_token_time,
            "generated_tokens": self.generated_tokens,
            "generation_tps": self.generation_tps,
            "rounds": self.rounds,
            "tau": self.tau,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "acceptance_by_position": self.acceptance_by_position,
            "sibling_hits": self.sibling_hits,
            "tail_proposed": self.tail_proposed,
            "tail_accepted": self.tail_accepted,
            "mean_k": self.mean_k,
            "k_counts": {str(k): v for k, v in sorted(self.k_counts.items())},
            "rounds_by_source": dict(self.rounds_by_source),
            "by_source": self.by_source(),
            "draft_forwards": {str(t): v for t, v in sorted(self.draft_forwards.items())},
            "verify_sizes": {str(t): v for t, v in sorted(self.verify_sizes.items())},
            "target_forwards": self.target_forwards,
            "host_syncs": self.host_syncs,
            "time_split": self.time_split(),
            "peak_memory_gb": self.peak_memory_gb,
            "draft_price": self.draft_price,
            "bandwidth_gbs": self.bandwidth_gbs,
        }
