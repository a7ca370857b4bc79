"""The rules' calibration: false-verdict rates at each rule's boundary and power away from it, on
studies simulated from committed runs' own noise (:mod:`harness_ext.analysis.simulate`).

A *false verdict* is a reading the truth contradicts: *holds* when the effect sits exactly at the
margin or on the wrong side of it, *does not hold* when it sits at the margin or beyond it. At the
boundary both are false, so both are counted. Each rate comes with its Clopper–Pearson 95 %
interval (``scipy.stats.binomtest``): the bench (``bench/calibration.py``) requires every false rate's
upper bound ≤ 6.5 % over ≥ 2,000 studies per scenario; the test suite runs a subset with fewer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats as sps

from harness_ext.analysis import simulate as sim

#: the largest Clopper–Pearson upper bound a false-verdict rate may have (5 % nominal)
MAX_FALSE_UPPER = 0.065


@dataclass(frozen=True)
class Scenario:
    """One simulated situation: the rule, what is true, and which readings are false there."""

    rule: str
    name: str
    fn: Callable[..., str]
    kwargs: dict[str, Any]
    false: tuple[str, ...] = ()  # readings the truth contradicts
    power: str | None = None  # the reading the truth calls for (power), if any
    noise: str = ""
    effect: float = float("nan")  # the effect in units of the margin (for power curves)
    design: dict[str, Any] = field(default_factory=dict)


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def run(
    scenarios: list[Scenario], sims: int, seed: int = 0, progress: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """One row per (scenario, rate): the share of each reading, each false rate with its interval,
    and the power where the truth calls for a reading."""
    rows = []
    for i, sc in enumerate(scenarios):
        counts = sim.readings(sc.fn, sims, seed + 7919 * i, **sc.kwargs)
        base = {
            "rule": sc.rule,
            "scenario": sc.name,
            "noise": sc.noise,
            "effect": sc.effect,
            "studies": sims,
            **{f"P({r})": counts[r] / sims for r in counts.index},
            **sc.design,
        }
        for r in sc.false:
            lo, hi = clopper_pearson(int(counts[r]), sims)
            rows.append(
                {
                    **base,
                    "rate": f"false '{r}'",
                    "value": counts[r] / sims,
                    "cp_low": lo,
                    "cp_high": hi,
                    "ok": hi <= MAX_FALSE_UPPER,
                }
            )
        if sc.power:
            lo, hi = clopper_pearson(int(counts[sc.power]), sims)
            rows.append(
                {
                    **base,
                    "rate": f"power '{sc.power}'",
                    "value": counts[sc.power] / sims,
                    "cp_low": lo,
                    "cp_high": hi,
                    "ok": None,
                }
            )
        if progress:
            progress(f"{sc.rule} {sc.name}: " + ", ".join(f"{r} {counts[r] / sims:.3f}" for r in counts.index))
    return pd.DataFrame(rows)


BOTH = ("holds", "does not hold")


def scenarios(
    quality: sim.QualityPool,
    speeds: dict[str, sim.SpeedPool],
    *,
    n: int | None = None,
    margin: float = 0.05,
    speed_margin: float = 0.10,
    share: float = 0.25,
    rounds: tuple[int, ...] = (3,),
    power: bool = True,
    n_resamples: int = 1000,
) -> list[Scenario]:
    """Every rule at its boundary (both false readings) and, with ``power``, the effects a power curve
    needs. ``n``: prompts per simulated study (default: the pool's own)."""
    n = n or quality.n
    q = {"pool": quality, "n": n}
    out: list[Scenario] = []
    qn = f"{quality.source} ({quality.n} prompts)"

    def add(rule, name, fn, kw, effect, truth, noise=qn, **design):
        false = BOTH if truth == "boundary" else (("holds",) if truth == "does not hold" else ("does not hold",))
        want = None if truth == "boundary" else truth
        if truth != "boundary" and not power:
            return
        out.append(Scenario(rule, name, fn, kw, false, want, noise, effect, {"prompts": n, **design}))

    # (a) quality part, alone
    for e, truth in ((1.0, "boundary"), (0.0, "holds"), (0.5, "holds"), (1.5, "does not hold"), (2.0, "does not hold")):
        add(
            "(a) quality",
            f"nf4 − fp4 = {e:g} × margin",
            sim.quality_a,
            {**q, "effect": e * margin, "margin": margin},
            e,
            truth,
        )
    # (a) in full: quality + speed + memory
    full = (  # (name, quality effect in margins, true nf4/fp4 ratio, effect for the curve, truth)
        ("quality at the margin, speed 1.0×", 1.0, 1.0, 1.0, "boundary"),
        (f"quality 0, speed at the margin ({1 + speed_margin:g}×)", 0.0, 1 + speed_margin, 1.0, "boundary"),
        ("quality 0, speed 1.0×", 0.0, 1.0, 0.0, "holds"),
    )
    for label, sp in speeds.items():
        for k in rounds:
            kw = {**q, "speed": sp, "k": k, "margin": margin, "speed_margin": speed_margin}
            for name, e, r, effect, truth in full:
                kwargs = {**kw, "effect": e * margin, "ratio": r}
                add(
                    "(a) in full", f"{name}, {k} rounds", sim.claim_a, kwargs, effect, truth, f"{qn}; {label}", rounds=k
                )
    # (b): the range of the gap over temperature
    for shape in ("linear", "inverted-U"):
        for e, truth in (
            (1.0, "boundary"),
            (0.0, "does not hold"),
            (0.5, "does not hold"),
            (1.5, "holds"),
            (2.0, "holds"),
            (3.0, "holds"),
        ):
            if e == 0.0 and shape != "linear":
                continue
            add(
                "(b)",
                f"{shape if e else 'no interaction'}, range {e:g} × margin",
                sim.claim_b,
                {**q, "shape": shape, "size": e * margin, "margin": margin, "n_resamples": n_resamples},
                e,
                truth,
            )
    add(
        "(b)",
        "flat offset 2 × margin (no interaction)",
        sim.claim_b,
        {**q, "shape": "flat", "size": 2 * margin, "margin": margin, "n_resamples": n_resamples},
        0.0,
        "does not hold",
    )
    # (b2), nf4 named
    for e, truth in ((1.0, "boundary"), (0.0, "does not hold"), (2.0, "holds"), (3.0, "holds")):
        add(
            "(b2)",
            f"nf4's advantage {e:g} × yardstick",
            sim.claim_b2,
            {**q, "advantage_over_margin": e, "share": share},
            e,
            truth,
        )
    # (c), per 4-bit scheme
    for scheme in (quality.nf4, quality.fp4):
        for e, truth in (
            (1.0, "boundary"),
            (0.0, "does not hold"),
            (0.5, "does not hold"),
            (2.0, "holds"),
            (3.0, "holds"),
        ):
            add(
                "(c)",
                f"{scheme}: excess {e:g} × yardstick",
                sim.claim_c,
                {**q, "scheme": scheme, "excess_over_margin": e, "share": share},
                e,
                truth,
            )
    # (c2)
    band = (  # (name, shape, size in yardsticks, effect for the curve, truth)
        ("excess only in the band, 1 × yardstick", "bump", 1.0, 1.0, "boundary"),
        ("excess rising linearly with T to 3 × yardstick at T=1", "linear", 3.0, 0.0, "does not hold"),
        ("excess flat at 2 × yardstick", "flat", 2.0, 0.0, "does not hold"),
        ("no excess", "bump", 0.0, 0.0, "does not hold"),
        *((f"excess only in the band, {e:g} × yardstick", "bump", e, e, "holds") for e in (2.0, 3.0, 4.0)),
    )
    for scheme in (quality.nf4, quality.fp4):
        for name, shape, size, effect, truth in band:
            kwargs = {**q, "scheme": scheme, "share": share, "shape": shape, "size_over_margin": size}
            add("(c2)", f"{scheme}: {name}", sim.claim_c2, kwargs, effect, truth)
    # (d): one margin for 'much slower' and 'the fastest'
    for label, sp in speeds.items():
        for k in rounds:
            kw = {"speed": sp, "k": k, "speed_margin": speed_margin}
            add(
                "(d)",
                f"ratios at the margin ({1 + speed_margin:g}×), {k} rounds",
                sim.claim_d,
                {**kw, "ratio": 1 + speed_margin},
                1 + speed_margin,
                "boundary",
                label,
                rounds=k,
            )
            for r, truth in (
                (1.0, "does not hold"),
                (1.05, "does not hold"),
                (1.2, "holds"),
                (1.3, "holds"),
                (1.5, "holds"),
                (2.0, "holds"),
            ):
                add("(d)", f"ratios {r:g}×, {k} rounds", sim.claim_d, {**kw, "ratio": r}, r, truth, label, rounds=k)
    return out
