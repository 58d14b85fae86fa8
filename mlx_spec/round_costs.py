"""What a round costs on this machine now, learned from the rounds as they run.

The calibration prices a draft step and each verification once, in a minute of interleaved
forwards. A host whose speed swings can misread a ratio by 40% (host G read a draft step at
0.48 of a plain step where four other readings said 0.30 to 0.34), and a long chat outlives
any reading. Every round is timed anyway, so its seconds are fitted as
a x (its draft forwards at the calibrated prices) + b x (its verification at the calibrated
price), by least squares that forget old rounds, with the calibration's ratio as the prior
(a = b). Only the draft's price relative to the target's, a / b, changes what the policy
chooses; the calibration holds until the rounds contradict it by more than `hold`, so a
steady host plans exactly as calibrated, and a host that slows as a whole changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlx_spec.policy import Costs


def scaled(costs: Costs, draft: float) -> Costs:
    """`costs` with every draft forward priced `draft` times as much (the target's prices are
    shared: nothing changes a Costs once made)."""
    batch = costs.draft_batch * draft if costs.draft_batch is not None else None
    return replace(costs, draft_step=costs.draft_step * draft, draft_batch=batch)


@dataclass
class RoundCosts:
    """The calibrated costs, and the scales (a, b) that the rounds timed so far put on its
    drafting and its verifying."""

    calibrated: Costs
    # The prior's weights, in squared plain steps (a round of 4 draft steps weighs about 1.5):
    # the calibration's ratio, held where the rounds cannot tell drafting from verifying, and
    # a weaker pull of the scales to the calibration's seconds.
    prior: float = 0.25
    anchor: float = 0.25
    forget: float = 0.98  # per round: the last 50 rounds or so (a reply of 128 tokens) decide
    clip: float = 1.5  # a round timed beyond clip x its prediction (or under 1/clip) counts as that
    # The draft is repriced once its relative price is off by more than this. On host H the
    # rounds put a steady draft at 0.77-0.88 of its calibrated price (the calibration times its
    # full output layer; the verification carries the acceptance step) and planning at that
    # price gained nothing (math modeled 1-3% lower); host G's misread lay 45% off.
    hold: float = 0.3
    bounds: tuple[float, float] = (1 / 3, 3.0)
    scales: tuple[float, float] = (1.0, 1.0)
    rounds: int = 0
    _moments: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # dd, dv, vv
    _targets: list[float] = field(default_factory=lambda: [0.0, 0.0])  # dy, vy

    def __post_init__(self):
        self.costs = self.calibrated

    @property
    def draft_price(self) -> float:
        """The draft's price relative to the target's, as the rounds measured it against the
        calibration (1.0: as calibrated; 1.4: drafting costs 40% more than planned)."""
        return self.scales[0] / self.scales[1]

    def observe(self, verified: int, forwards, seconds: float) -> None:
        """A round verified `verified` tokens after draft forwards over `forwards` tokens and
        took `seconds`, proposing included."""
        base = self.calibrated
        plain = base.verify[0]
        if not (plain > 0 and math.isfinite(seconds) and seconds > 0):
            return
        d = sum(base.draft_forward(t) for t in forwards) / plain
        v = base.forward(verified) / plain
        a, b = self.scales
        predicted = a * d + b * v
        if predicted <= 0:
            return
        # one round slowed by something else (a collection, another process) moves little
        y = min(max(seconds / plain, predicted / self.clip), predicted * self.clip)
        m, t, f = self._moments, self._targets, self.forget
        m[0], m[1], m[2] = f * m[0] + d * d, f * m[1] + d * v, f * m[2] + v * v
        t[0], t[1] = f * t[0] + d * y, f * t[1] + v * y
        self.rounds += 1
        # least squares plus prior (a - b)^2 + anchor (b - 1)^2: rounds that never draft say
        # nothing of the draft's price, and keep it where the calibration put it
        p, p0 = self.prior, self.anchor
        dd, dv, vv = m[0] + p, m[1] - p, m[2] + p + p0
        ty, tv = t[0], t[1] + p0
        det = dd * vv - dv * dv
        low, high = self.bounds
        a = min(max((ty * vv - dv * tv) / det, low), high)
        b = min(max((dd * tv - dv * ty) / det, low), high)
        self.scales = (a, b)
        price = self.draft_price
        if abs(math.log(price)) > math.log1p(self.hold):
            self.costs = scaled(base, price)
        elif self.costs is not base:  # back within the band: the calibration holds again
            self.costs = base
