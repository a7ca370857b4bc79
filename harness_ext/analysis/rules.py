"""The decision rules of the claims, as pure functions: per-unit values in (prompts for quality,
rounds for speed), a reading out. The claim modules call them on a run's tables; the calibration
(:mod:`harness_ext.analysis.simulate`, ``bench/calibration.py``) calls the same functions on data
resampled from committed runs, so what is calibrated is what decides.

One margin, both directions: every comparison is written as values ``y`` whose mean is above 0
where the claim's words are true *by at least the margin* and below 0 where they are not (the
margin is subtracted before the test). A part *holds* when a one-sided t-test puts the mean above
0 at 5 %, *fails* when one puts it below 0; otherwise it is undecided. docs/VERDICTS.md gives every
rule and its calibration.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from harness_ext.analysis.stats import ALPHA, holm, p_beyond, p_greater, p_less, tost

Reading = Literal["holds", "does not hold", "inconclusive", "not tested"]

MIN_PROMPTS = 10  # fewer prompts than this: a quality part cannot decide
MIN_ROUNDS = 3  # fewer uncontended rounds than this: a speed part cannot decide ("not replicated")


@dataclass(frozen=True)
class Part:
    """One comparison a claim needs: ``y`` per unit, positive in mean where the claim's words hold
    beyond the margin. ``min_units``: fewer finite values than this and the part cannot decide."""

    label: str
    y: np.ndarray
    min_units: int = MIN_PROMPTS

    @property
    def n(self) -> int:
        return int(np.isfinite(np.asarray(self.y, dtype=float)).sum())

    @property
    def decidable(self) -> bool:
        return self.n >= self.min_units

    @property
    def p_holds(self) -> float:
        """One-sided p that the mean is above 0 (the part holds)."""
        return p_greater(self.y, 0.0) if self.decidable else 1.0

    @property
    def p_fails(self) -> float:
        """One-sided p that the mean is below 0 (the part does not hold)."""
        return p_less(self.y, 0.0) if self.decidable else 1.0

    def reading(self, alpha: float = ALPHA) -> Reading:
        """This part's own reading, uncorrected (the claim's rule combines the parts)."""
        if not self.decidable:
            return "inconclusive"
        if self.p_holds < alpha:
            return "holds"
        return "does not hold" if self.p_fails < alpha else "inconclusive"


@dataclass(frozen=True)
class Decision:
    """A rule's reading and the index of the part that decided it: for *holds* the part closest to
    failing (largest p), for *does not hold* the rejected part with the smallest p, for
    *inconclusive* an undecidable part first, else the undecided part closest to deciding."""

    reading: Reading
    part: int | None = None
    why: str = ""


def all_parts(parts: Sequence[Part], alpha: float = ALPHA) -> Decision:
    """A claim that needs every part: holds if every part holds (an intersection-union test: each
    one-sided at ``alpha``, no correction needed); does not hold if Holm's step-down over the parts'
    opposite tests rejects one (any single failure refutes it, so the family-wise error is kept at
    ``alpha``); otherwise inconclusive. A part with too few units cannot hold, so the claim cannot
    either, but another part may still make it fail."""
    if not parts:
        return Decision("not tested", None, "nothing to compare")
    fails = holm([p.p_fails for p in parts], alpha)
    if any(fails):
        i = min((i for i, f in enumerate(fails) if f), key=lambda i: parts[i].p_fails)
        return Decision("does not hold", i, "refuted")
    short = [i for i, p in enumerate(parts) if not p.decidable]
    if short:
        return Decision("inconclusive", min(short, key=lambda i: parts[i].n), "too few units")
    if all(p.p_holds < alpha for p in parts):
        return Decision("holds", max(range(len(parts)), key=lambda i: parts[i].p_holds), "shown")
    undecided = [i for i, p in enumerate(parts) if p.p_holds >= alpha]
    return Decision("inconclusive", max(undecided, key=lambda i: parts[i].p_holds), "not shown")


def agree(readings: Sequence[Reading]) -> Reading:
    """Several schemes read by the same rule (each 4-bit scheme in (c)): every tested one the same
    reading -> that reading (an intersection-union test in either direction); otherwise inconclusive."""
    tested = [r for r in readings if r != "not tested"]
    if not tested:
        return "not tested"
    return tested[0] if all(r == tested[0] for r in tested) else "inconclusive"


# -- equivalence (claim a) ------------------------------------------------------------------------
@dataclass(frozen=True)
class EquivalencePart:
    """One part of an equivalence claim: ``x`` per unit (a difference, or a log-ratio) that must lie
    inside ±``margin``. ``fixed``: a deterministic part (weight bytes) read without a test."""

    label: str
    x: np.ndarray
    margin: float
    min_units: int = MIN_PROMPTS
    fixed: bool | None = None  # True: inside the margin by measurement; False: outside; None: tested

    @property
    def n(self) -> int:
        return int(np.isfinite(np.asarray(self.x, dtype=float)).sum())

    @property
    def decidable(self) -> bool:
        return self.fixed is not None or self.n >= self.min_units

    @property
    def p_equivalent(self) -> float:
        """Two one-sided tests: p that the mean lies inside ±margin."""
        if self.fixed is not None:
            return 0.0 if self.fixed else 1.0
        return tost(self.x, self.margin) if self.decidable else 1.0

    @property
    def p_differs(self) -> float:
        """p that the mean lies beyond ±margin (the smaller one-sided test, not doubled)."""
        if self.fixed is not None:
            return 1.0 if self.fixed else 0.0
        return p_beyond(self.x, self.margin) if self.decidable else 1.0

    def reading(self, alpha: float = ALPHA) -> str:
        """This part's own reading: equivalent, differs, undecided, or not measured / too few units."""
        if self.fixed is None and self.n == 0:
            return "not measured"
        if not self.decidable:
            return "too few units"
        if self.p_equivalent < alpha:
            return "equivalent"
        return "differs" if self.p_differs < alpha else "undecided"


def equivalence(parts: Sequence[EquivalencePart], alpha: float = ALPHA) -> Decision:
    """Alike in every respect: holds if every part was measured and is shown inside its margin
    (an intersection-union test, each part at ``alpha``); does not hold if a deterministic part lies
    outside its margin, or Holm's step-down over the tested parts' beyond-the-margin tests rejects
    one; otherwise inconclusive (a part not measured, too few units, or undecided). Deterministic
    parts (weight bytes) carry no sampling error, so they take no share of Holm's alpha."""
    if not parts:
        return Decision("not tested", None, "nothing measured")
    outside = [i for i, p in enumerate(parts) if p.fixed is False]
    if outside:
        return Decision("does not hold", outside[0], "differs")
    tested = [i for i, p in enumerate(parts) if p.fixed is None]
    differs = holm([parts[i].p_differs for i in tested], alpha)
    if any(differs):
        i = min((i for i, d in zip(tested, differs, strict=True) if d), key=lambda i: parts[i].p_differs)
        return Decision("does not hold", i, "differs")
    short = [i for i, p in enumerate(parts) if not p.decidable]
    if short:
        i = min(short, key=lambda i: parts[i].n)
        return Decision("inconclusive", i, "not measured" if parts[i].n == 0 else "too few units")
    if all(p.p_equivalent < alpha for p in parts):
        return Decision("holds", max(range(len(parts)), key=lambda i: parts[i].p_equivalent), "equivalent")
    undecided = [i for i, p in enumerate(parts) if p.p_equivalent >= alpha]
    return Decision("inconclusive", max(undecided, key=lambda i: parts[i].p_equivalent), "undecided")


# -- the range of a profile over temperatures (claim b) -------------------------------------------
@dataclass(frozen=True)
class RangeBounds:
    """How much a mean profile (prompts x temperatures) varies over the temperatures: its range
    (largest minus smallest mean), a 95 % lower bound from simultaneous intervals over every pair of
    temperatures, a 95 % upper bound from one-sided intervals per pair (valid for the range by
    intersection-union), and the p-value of no variation at all (studentized max over pairs)."""

    estimate: float
    lower: float
    upper: float
    p_any: float
    n: int

    def reading(self, margin: float) -> Reading:
        """Holds if the range is shown above the margin, does not hold if shown below it."""
        if self.n < MIN_PROMPTS:
            return "inconclusive"
        if self.lower > margin:
            return "holds"
        return "does not hold" if self.upper < margin else "inconclusive"


def range_bounds(profiles: np.ndarray, n_resamples: int = 2000, seed: int = 0, alpha: float = ALPHA) -> RangeBounds:
    """Bounds on the range of the mean profile over the columns (see :class:`RangeBounds`).

    Every pair of temperatures (j, l) gives a per-prompt difference whose mean is estimated with
    its own standard error, so a noisy temperature (greedy decoding's 0/1 column) weighs no more
    than its noise allows. Upper bound: max over pairs of |mean| + t * se (each pair one-sided at
    ``alpha``; the range is below the margin only if every pair is, so no correction is needed).
    Lower bound: max over pairs of |mean| - c * se, with c the (1 - alpha) quantile of the largest
    studentized pairwise deviation under random sign flips of the prompts' residual profiles (a
    Rademacher wild bootstrap: simultaneous over the pairs). A constant offset cancels in every
    pairwise difference, so it moves no bound. The sign flips are vectorised numpy: scipy's
    ``permutation_test`` flips the signs of scalars, not of a prompt's whole profile."""
    x = np.asarray(profiles, dtype=float)
    x = x[np.all(np.isfinite(x), axis=1)]
    n, k = x.shape if x.ndim == 2 else (0, 0)
    if n < 2 or k < 2:
        return RangeBounds(math.nan, math.nan, math.nan, 1.0, n)
    pairs = np.array(list(itertools.combinations(range(k), 2)))
    diffs = x[:, pairs[:, 0]] - x[:, pairs[:, 1]]
    mean = diffs.mean(axis=0)
    se = diffs.std(axis=0, ddof=1) / math.sqrt(n)
    se = np.where(se > 0, se, np.inf)  # a pair that never differs carries no evidence either way
    finite = np.isfinite(se)
    profile = x.mean(axis=0)
    estimate = float(profile.max() - profile.min())
    if not finite.any():
        return RangeBounds(estimate, estimate, estimate, 1.0, n)
    t = float(sps.t.ppf(1 - alpha, n - 1))
    upper = float(np.max(np.where(finite, np.abs(mean) + t * se, np.abs(mean))))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
    residual = x - profile
    flipped = signs @ residual / n  # the mean profile's deviation under each resample
    dev = np.abs(flipped[:, pairs[:, 0]] - flipped[:, pairs[:, 1]]) / se
    crit = float(np.quantile(dev.max(axis=1), 1 - alpha))
    lower = float(max(0.0, np.max(np.abs(mean) - crit * np.where(finite, se, 0.0))))
    # no variation at all: flip the prompts' centred profiles (exact under the null of no interaction)
    centred = x - x.mean(axis=1, keepdims=True)
    null = signs @ centred / n
    stat = np.abs(null[:, pairs[:, 0]] - null[:, pairs[:, 1]]) / se
    observed = float(np.max(np.abs(mean) / se))
    p_any = float((1 + np.sum(stat.max(axis=1) >= observed * (1 - 1e-12))) / (n_resamples + 1))
    return RangeBounds(estimate, lower, upper, p_any, n)
