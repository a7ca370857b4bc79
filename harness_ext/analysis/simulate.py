"""Simulated studies built from a real run's own noise, to measure each rule's error rates and power.

Nothing here is invented noise. Quality: a study's per-prompt probe accuracies (prompts x schemes x
temperatures) are resampled *by prompt*, each prompt's row kept whole across schemes and
temperatures (so the pairing and the correlation over temperature are the data's own); the real
effect is removed from the resampled quantity by centring it on its population mean, and the
scenario's effect is added back. Speed: per-round log decode times with the scheme and round effects
removed (the residuals a paired ratio sees), rescaled for the degrees of freedom the fit used, are
drawn for each simulated (scheme, round) and added to the scenario's log times.

The rules called are the claims' own (:mod:`harness_ext.analysis.rules`), with the claims' inputs:
see :mod:`harness_ext.analysis.calibration` for the scenarios and the table they give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness_ext.analysis import rounds
from harness_ext.analysis.claims._common import BAND, LOW_T_MAX, four_bit_pair, matrix, temps
from harness_ext.analysis.rules import (
    MIN_PROMPTS,
    MIN_ROUNDS,
    EquivalencePart,
    Part,
    all_parts,
    equivalence,
    range_bounds,
)
from harness_ext.analysis.study import Study, primary_quality


# -- the data's own noise -------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityPool:
    """One model's per-prompt next-word accuracy: ``values[prompt, scheme, temperature]``."""

    values: np.ndarray
    schemes: list[str]
    temps: list[float]
    reference: str
    nf4: str
    fp4: str
    source: str

    @classmethod
    def of(cls, study: Study, model: str | None = None, source: str = "") -> QualityPool:
        q, _ = primary_quality(study)
        if q.empty:
            raise ValueError(f"{source or 'the study'} has no next-word accuracy to resample")
        model = model or study.models()[0]
        pair = four_bit_pair(study)
        ref = study.reference(model)
        if pair is None or ref is None:
            raise ValueError(f"{source or 'the study'} lacks an nf4/fp4 pair or a reference")
        schemes = [ref, *pair]
        mats = [matrix(q, model, s) for s in schemes]
        ts = temps(*mats)
        idx = mats[0].index
        for m in mats[1:]:
            idx = idx.intersection(m.index)
        values = np.stack([m.loc[idx, ts].to_numpy(dtype=float) for m in mats], axis=1)
        values = values[np.all(np.isfinite(values), axis=(1, 2))]
        return cls(values, schemes, ts, ref, pair[0], pair[1], source or model)

    @property
    def n(self) -> int:
        return self.values.shape[0]

    def scheme(self, name: str) -> np.ndarray:
        return self.values[:, self.schemes.index(name), :]

    def drop(self, name: str, ts: list[float]) -> np.ndarray:
        """Per prompt: accuracy at T=0 minus the mean over ``ts``."""
        m = self.scheme(name)
        cols = [self.temps.index(t) for t in ts]
        return m[:, self.temps.index(0.0)] - m[:, cols].mean(axis=1)

    @property
    def low(self) -> list[float]:
        return [t for t in self.temps if 0 < t <= LOW_T_MAX]


@dataclass(frozen=True)
class SpeedPool:
    """Per-round residuals of log decode time (scheme and round effects removed, df-rescaled)."""

    residuals: np.ndarray
    source: str

    @classmethod
    def of(cls, studies: list[Study], source: str) -> SpeedPool:
        res: list[np.ndarray] = []
        for study in studies:
            sp = rounds.speed_table(study)
            if sp.empty:
                continue
            sp = sp[~sp["contended"]]
            for _, g in sp.groupby(rounds.GROUP):
                wide = g.pivot_table(index="round", columns="scheme", values="decode_ms_per_token", aggfunc="first")
                x = np.log(wide.dropna(axis=0).to_numpy(dtype=float))
                r, s = x.shape
                if r < 2 or s < 2:
                    continue
                e = x - x.mean(axis=0, keepdims=True) - x.mean(axis=1, keepdims=True) + x.mean()
                res.append((e * math.sqrt(r * s / ((r - 1) * (s - 1)))).ravel())
        if not res:
            raise ValueError(f"{source}: no speed rounds to resample")
        return cls(np.concatenate(res), source)

    @property
    def sd(self) -> float:
        return float(self.residuals.std(ddof=0))

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.choice(self.residuals, size=shape, replace=True)


def _rows(pool: QualityPool, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, pool.n, size=n)


def _centre(x: np.ndarray) -> np.ndarray:
    """The population's own effect removed (its mean over prompts), keeping each prompt's deviation."""
    return x - x.mean(axis=0, keepdims=True)


# -- one simulated reading per rule ----------------------------------------------------------------
def quality_a(pool: QualityPool, rng, n: int, effect: float, margin: float) -> str:
    """(a)'s quality part alone: nf4 − fp4 (mean over T) with true mean ``effect``."""
    d = _centre((pool.scheme(pool.nf4) - pool.scheme(pool.fp4)).mean(axis=1)) + effect
    x = d[_rows(pool, rng, n)]
    return equivalence([EquivalencePart("quality", x, margin, MIN_PROMPTS)]).reading


def claim_a(
    pool: QualityPool,
    speed: SpeedPool,
    rng,
    n: int,
    k: int,
    effect: float,
    ratio: float,
    margin: float,
    speed_margin: float,
) -> str:
    """(a) in full: the quality part, one speed part over ``k`` rounds (true nf4/fp4 ``ratio``) and
    identical weight bytes, combined by the claim's rule."""
    d = _centre((pool.scheme(pool.nf4) - pool.scheme(pool.fp4)).mean(axis=1)) + effect
    x = d[_rows(pool, rng, n)]
    lr = math.log(ratio) + speed.draw(rng, (k,)) - speed.draw(rng, (k,))
    parts = [
        EquivalencePart("quality", x, margin, MIN_PROMPTS),
        EquivalencePart("speed", lr, math.log(1 + speed_margin), MIN_ROUNDS),
        EquivalencePart("memory", np.array([0.0]), speed_margin, 1, fixed=True),
    ]
    return equivalence(parts).reading


def profile(ts: list[float], shape: str, size: float, peak: float = 0.7) -> np.ndarray:
    """A gap profile over ``ts`` whose range over the grid is ``size``: flat, linear, or an inverted U
    peaking at ``peak``."""
    t = np.asarray(ts, dtype=float)
    if shape == "flat":
        return np.full(t.shape, size)
    if shape == "linear":
        f = (t - t.min()) / (t.max() - t.min())
    elif shape == "inverted-U":
        f = -((t - peak) ** 2)
        f = (f - f.min()) / (f.max() - f.min())
    else:
        raise ValueError(shape)
    return size * f


def claim_b(pool: QualityPool, rng, n: int, shape: str, size: float, margin: float, n_resamples: int = 1000) -> str:
    """(b): the prompts' gap profiles with their real interaction removed and ``shape`` of range ``size`` added."""
    g = _centre(pool.scheme(pool.nf4) - pool.scheme(pool.fp4)) + profile(pool.temps, shape, size)
    x = g[_rows(pool, rng, n)]
    return range_bounds(x, n_resamples=n_resamples, seed=int(rng.integers(2**31))).reading(margin)


def _yard(pool: QualityPool, share: float) -> tuple[np.ndarray, float]:
    dr = pool.drop(pool.reference, pool.low)
    return dr, share * float(dr.mean())


def claim_c(pool: QualityPool, rng, n: int, scheme: str, excess_over_margin: float, share: float) -> str:
    """(c) for one 4-bit scheme: the excess loss set to ``excess_over_margin`` x the yardstick (1 = the
    boundary between 'meaningfully more sensitive' and not)."""
    dr, m = _yard(pool, share)
    e = _centre(pool.drop(scheme, pool.low) - dr) + excess_over_margin * m
    i = _rows(pool, rng, n)
    return Part("c", e[i] - share * dr[i], MIN_PROMPTS).reading()


def claim_b2(pool: QualityPool, rng, n: int, advantage_over_margin: float, share: float) -> str:
    """(b2) with nf4 named: nf4's advantage (fp4's loss − nf4's) set to ``advantage_over_margin`` x the yardstick."""
    dr, m = _yard(pool, share)
    x = _centre(pool.drop(pool.fp4, pool.low) - pool.drop(pool.nf4, pool.low)) + advantage_over_margin * m
    i = _rows(pool, rng, n)
    return Part("b2", x[i] - share * dr[i], MIN_PROMPTS).reading()


def excess_profile(pool: QualityPool, scheme: str) -> np.ndarray:
    """Per prompt and low temperature: the scheme's loss from T=0 to T minus the reference's."""
    low = [pool.temps.index(t) for t in pool.low]
    s, r = pool.scheme(scheme), pool.scheme(pool.reference)
    z = pool.temps.index(0.0)
    return (s[:, [z]] - s[:, low]) - (r[:, [z]] - r[:, low])


def band_profile(ts: list[float], shape: str, size: float) -> np.ndarray:
    """An excess over the low temperatures: 'bump' (``size`` inside the band, 0 outside), 'linear'
    (rising from 0 to ``size`` over (0, 1]) or 'flat' (``size`` everywhere)."""
    t = np.asarray(ts, dtype=float)
    if shape == "bump":
        return np.where((t >= BAND[0]) & (t <= BAND[1]), size, 0.0)
    if shape == "linear":
        return size * t / t.max()
    if shape == "flat":
        return np.full(t.shape, size)
    raise ValueError(shape)


def claim_c2(pool: QualityPool, rng, n: int, scheme: str, shape: str, size_over_margin: float, share: float) -> str:
    """(c2) for one scheme: the excess profile replaced by ``shape`` of size ``size_over_margin`` x the yardstick."""
    dr, m = _yard(pool, share)
    e = _centre(excess_profile(pool, scheme)) + band_profile(pool.low, shape, size_over_margin * m)
    i = _rows(pool, rng, n)
    e, yard = e[i], share * dr[i]
    low = pool.low
    sel = {
        k: [j for j, t in enumerate(low) if f(t)]
        for k, f in (
            ("below", lambda t: t < BAND[0]),
            ("band", lambda t: BAND[0] <= t <= BAND[1]),
            ("above", lambda t: t > BAND[1]),
        )
    }
    mean = {k: e[:, v].mean(axis=1) for k, v in sel.items()}
    parts = [
        Part("in", mean["band"] - yard),
        Part("below", mean["band"] - mean["below"] - yard),
        Part("above", mean["band"] - mean["above"] - yard),
    ]
    return all_parts(parts).reading


def claim_d(speed: SpeedPool, rng, k: int, ratio: float, speed_margin: float, schemes: int = 5) -> str:
    """(d): ``schemes`` schemes timed over ``k`` rounds; the 'fastest' one is ``ratio`` x faster than
    every other and the 'much slower' one ``ratio`` x slower than every other but the fastest (1.1 =
    the boundary at the default margin)."""
    mu = np.zeros(schemes)
    mu[0], mu[1] = -math.log(ratio), math.log(ratio)  # 0: fastest (fp16), 1: much slower (int8)
    logt = mu[:, None] + speed.draw(rng, (schemes, k))
    ml = math.log(1 + speed_margin)
    parts = [Part(f"slow/{o}", logt[1] - logt[o] - ml, MIN_ROUNDS) for o in range(schemes) if o != 1]
    parts += [Part(f"fast/{o}", logt[o] - logt[0] - ml, MIN_ROUNDS) for o in range(schemes) if o != 0]
    return all_parts(parts).reading


def readings(fn, sims: int, seed: int, **kw) -> pd.Series:
    """Shares of each reading over ``sims`` simulated studies of ``fn``."""
    rng = np.random.default_rng(seed)
    out = pd.Series([fn(rng=rng, **kw) for _ in range(sims)])
    return out.value_counts().reindex(["holds", "does not hold", "inconclusive"], fill_value=0)


def power_distance(
    power_at, mde: float, target: float = 0.8, steps: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4)
) -> float:
    """The distance from the margin at which ``power_at(distance)`` (a simulated share of decisions)
    crosses ``target``, by linear interpolation over ``steps`` x ``mde``: what the analytic
    detectable distance ``mde`` predicts, measured."""
    xs = [s * mde for s in steps]
    ys = [power_at(x) for x in xs]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if y0 <= target <= y1 and y1 > y0:
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return math.nan
