"""The statistics every claim shares, in one place: bootstrap intervals over prompts, two one-sided
tests (equivalence), one-sided tests against a margin, Holm's step-down correction, t-intervals over
speed rounds and the detectable distance of a design. scipy does the work where it has the method
(``scipy.stats.bootstrap``, the t distribution and test). The rules built on them, and the sign-flip
bounds on a temperature profile's range, are in :mod:`harness_ext.analysis.rules`.

See docs/VERDICTS.md for every rule that uses them and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05


# -- intervals -----------------------------------------------------------------------------------
def bootstrap_ci(
    values: np.ndarray | list[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its percentile bootstrap interval over the values (prompts),
    from ``scipy.stats.bootstrap`` with ``n_boot`` resamples drawn from ``seed`` (reproducible)."""
    v = _finite(values)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1 or np.all(v == v[0]):  # no spread to resample (scipy would warn of a degenerate sample)
        return (mean, mean, mean)
    res = sps.bootstrap(
        (v,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile", rng=np.random.default_rng(seed)
    )
    return (mean, float(res.confidence_interval.low), float(res.confidence_interval.high))


#: What an estimate's interval is: one label per statistic, shown beside every interval in a report.
BOOTSTRAP_OVER_PROMPTS = "95 % bootstrap interval over prompts"
OVER_PROMPTS = "95 % t-interval over prompts"
OVER_ROUNDS = "95 % t-interval over rounds (log-ratio)"


@dataclass(frozen=True)
class Estimate:
    """The one number-with-interval type from analysis to report: a value, its 95 % interval, the
    units it rests on (prompts or rounds) and which statistic the interval is (``statistic``, one of
    the labels above). A ratio over rounds (``ratio``) is the geometric mean of per-round ratios with
    the t-interval of their logs, shown as ``1.24× [0.86, 1.78] over 3 rounds``.

    What the store keeps (a record's ``MetricValue``: lm-eval's value and stderr, a probe metric's mean
    and stderr, a speed round's median with its p10–p90) is the record format, read into this type
    where a report shows an interval; a round's p10–p90 of repeats is a spread, never an interval."""

    value: float
    lo: float
    hi: float
    n: int
    statistic: str = BOOTSTRAP_OVER_PROMPTS
    ratio: bool = False

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Estimate:
        """The mean over prompts with its percentile bootstrap interval."""
        v = np.asarray(values, dtype=float)
        mean, lo, hi = bootstrap_ci(v)
        return cls(mean, lo, hi, int(np.isfinite(v).sum()))

    @classmethod
    def t(cls, values: np.ndarray | list[float], level: float = 0.95) -> Estimate:
        """The mean with its t-interval: the interval the claims' t-based tests are consistent with."""
        v = _finite(values)
        mean, lo, hi = t_interval(v, level)
        return cls(mean, lo, hi, int(v.size), OVER_PROMPTS)

    @classmethod
    def over_rounds(cls, log_ratios: np.ndarray | list[float]) -> Estimate:
        """A ratio of two schemes' decode times: the geometric mean over rounds of the per-round ratio,
        with the t-interval over rounds of its log (no interval with fewer than 2 rounds)."""
        v = _finite(log_ratios)
        mean, lo, hi = t_interval(v)
        return cls(math.exp(mean), math.exp(lo), math.exp(hi), int(v.size), OVER_ROUNDS, ratio=True)

    @property
    def rounds(self) -> int:
        return self.n

    def text(self, fmt: str = ".3f") -> str:
        if not math.isfinite(self.value):
            return "n/a"
        if self.ratio:
            if not math.isfinite(self.lo):
                return f"{self.value:.2f}× ({self.n} round: no interval)"
            return f"{self.value:.2f}× [{self.lo:.2f}, {self.hi:.2f}] over {self.n} rounds"
        return f"{fmt_number(self.value, fmt)} [{fmt_number(self.lo, fmt)}, {fmt_number(self.hi, fmt)}]"

    def above(self, x: float) -> bool:
        return self.lo > x

    def below(self, x: float) -> bool:
        return self.hi < x

    def within(self, m: float) -> bool:
        return -m <= self.lo and self.hi <= m

    def outside(self, m: float) -> bool:
        return self.lo > m or self.hi < -m


def fmt_number(v: float, spec: str = ".3f") -> str:
    """``v`` formatted; a value that rounds to zero never shows a minus sign (``-0.000`` reads as a
    negative number that is not there)."""
    text = f"{v:{spec}}"
    if text.startswith("-") and any(ch.isdigit() for ch in text) and not any(ch in "123456789" for ch in text):
        return ("+" if "+" in spec else "") + text[1:]
    return text


# -- tests -----------------------------------------------------------------------------------------
def _finite(values: np.ndarray | list[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def t_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean (scipy's t distribution); nan with < 2 values."""
    v = _finite(values)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size < 2:
        return (mean, math.nan, math.nan)
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    if se == 0:
        return (mean, mean, mean)
    q = float(sps.t.ppf(0.5 + level / 2, v.size - 1))
    return (mean, mean - q * se, mean + q * se)


def p_greater(values: np.ndarray | list[float], null: float = 0.0) -> float:
    """One-sided p-value that the mean exceeds ``null`` (one-sample t-test); 1 with < 2 values.
    A constant sample (zero spread) gives 0 if it lies above ``null``, else 1."""
    v = _finite(values)
    if v.size < 2:
        return 1.0
    if np.all(v == v[0]):
        return 0.0 if v[0] > null else 1.0
    return float(sps.ttest_1samp(v, null, alternative="greater").pvalue)


def p_less(values: np.ndarray | list[float], null: float = 0.0) -> float:
    """One-sided p-value that the mean lies below ``null``."""
    return p_greater(-_finite(values), -null)


def tost(values: np.ndarray | list[float], margin: float) -> float:
    """Two one-sided tests: p-value for 'the mean lies inside ±margin' (equivalence)."""
    return max(p_greater(values, -margin), p_less(values, margin))


def p_beyond(values: np.ndarray | list[float], margin: float) -> float:
    """p-value for 'the mean lies outside ±margin' (a difference beyond the margin): the smaller of
    the two one-sided tests, not doubled. At the boundary (mean = +margin) only the upper test can
    reject, so the size is alpha plus the lower test's chance at that point (negligible unless the
    margin is within a standard error of zero); the calibration measures it."""
    return min(p_greater(values, margin), p_less(values, -margin))


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down rejections: the family-wise error rate stays at ``alpha`` over the tests."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    reject = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        reject[i] = True
    return reject


def detectable(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true distance of a mean from its decision boundary that a one-sided t-test at
    ``alpha`` over ``n`` units (prompts or rounds) of standard deviation ``sd`` detects with
    probability ``power``: (t_{1-alpha} + t_{power}) * sd / sqrt(n), t with n - 1 degrees of freedom."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return float((sps.t.ppf(1 - alpha, df) + sps.t.ppf(power, df)) * sd / math.sqrt(n))


def log_ratio_rounds(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> np.ndarray:
    """Per round, log(a / b) of two schemes timed in the same round (paired)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(a / b)
    return r[np.isfinite(r)]
