"""What a design could have detected: per tested part of a claim, the smallest distance of the true
value from the part's margin that its one-sided test finds with 80 % power at 5 %, from the run's own
variance — and, before a study runs, the same for a spec's design from a pilot run's variance.

Every test of the claims is a one-sided t-test over units (prompts for quality, rounds for speed) of
a per-unit value ``y`` against its margin, so the detectable distance is
``(t_{0.95} + t_{0.80}) * sd(y) / sqrt(n)`` (:func:`harness_ext.analysis.stats.detectable`). A part
decides at 80 % power when its true value lies at least that far from the margin, on either side:
nearer than that, *inconclusive* is likely whatever the truth. ``tests/test_power.py`` checks the
formula against simulations of the same design on the data's own noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from harness_ext.analysis.stats import detectable

POWER = 0.8


@dataclass(frozen=True)
class Detectable:
    """One tested part's design: its per-unit sd and unit count, and the margin it is tested against.
    ``log``: the values are log-ratios, shown as factors."""

    model: str
    part: str
    unit: str  # "prompts" or "rounds"
    n: int
    sd: float
    margin: float
    log: bool = False

    @property
    def mde(self) -> float:
        """The detectable distance from the margin (80 % power, one-sided 5 %)."""
        return detectable(self.sd, self.n, power=POWER)

    def at(self, n: int) -> Detectable:
        """The same part with ``n`` units (the planner's question)."""
        return replace(self, n=n)

    def needed(self, target: float, limit: int = 1_000_000) -> int | None:
        """Units needed so that the detectable distance is at most ``target`` (None beyond ``limit``)."""
        if not (math.isfinite(self.sd) and target > 0):
            return None
        if self.sd == 0:
            return 2
        lo, hi = 2, 4
        while detectable(self.sd, hi) > target:
            lo, hi = hi, hi * 2
            if hi > limit:
                return None
        while lo < hi:  # the smallest n whose detectable distance is within the target
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if detectable(self.sd, mid) > target else (lo, mid)
        return lo

    @property
    def decides_at_zero(self) -> bool:
        """Whether a true value of zero effect (one margin away from the boundary) is decided at 80 %."""
        return math.isfinite(self.mde) and self.mde <= self.margin

    def text(self) -> str:
        if not math.isfinite(self.mde):
            return f"{self.part}: not estimable ({self.n} {self.unit})"
        if self.log:
            return (
                f"{self.part}: ×{math.exp(self.mde):.2f} from the margin ×{math.exp(self.margin):.2f} "
                f"({self.n} {self.unit})"
            )
        return f"{self.part}: {self.mde:.3f} from the margin {self.margin:.3f} ({self.n} {self.unit})"


def of(model: str, part: str, values: np.ndarray, unit: str, margin: float, *, log: bool = False) -> Detectable:
    """The design of one tested part from its per-unit values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    sd = float(v.std(ddof=1)) if v.size >= 2 else math.nan
    return Detectable(model, part, unit, int(v.size), sd, margin, log)


def summary(rows: list[Detectable]) -> str:
    """One sentence per claim: the part hardest to decide per model (the largest detectable distance
    relative to its margin), and whether the design could decide a true zero effect."""
    if not rows:
        return ""
    by_model: dict[str, list[Detectable]] = {}
    for r in rows:
        by_model.setdefault(r.model, []).append(r)
    out = []
    for model, rs in by_model.items():
        worst = max(rs, key=lambda r: r.mde / r.margin if r.margin and math.isfinite(r.mde) else math.inf)
        verdict = "a zero effect is decided" if worst.decides_at_zero else "a zero effect is not decided"
        out.append(f"{model}: {worst.text()} — {verdict} at 80 % power")
    return "; ".join(out)
