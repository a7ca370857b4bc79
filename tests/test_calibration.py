"""Calibration of the decision rules on the committed demo's own noise, a fast subset: the full table
(>= 2,000 studies per scenario, every false rate's Clopper–Pearson upper bound <= 6.5 %) is
``bench/calibration.py``'s, committed in reports/calibration/. Here each boundary scenario runs a few
hundred studies and must not be *significantly* above 5 % (its Clopper–Pearson lower bound <= 5 %),
which a rule with a true false rate of 10 % fails; the power checks use effects where the full table
shows power near 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness_ext.analysis import Study
from harness_ext.analysis import calibration as cal
from harness_ext.analysis import simulate as sim
from harness_ext.analysis.rules import MIN_ROUNDS, Part, all_parts, range_bounds
from harness_ext.analysis.stats import holm

REPO = Path(__file__).resolve().parent.parent
SIMS = 400


@pytest.fixture(scope="module")
def pools() -> tuple[sim.QualityPool, sim.SpeedPool]:
    demo = Study.load(REPO / "reports/demo/data")
    return sim.QualityPool.of(demo, source="demo"), sim.SpeedPool.of([demo], "CPU demo")


def _false_rates(scenario: cal.Scenario, sims: int = SIMS) -> dict[str, tuple[float, float]]:
    tab = cal.run([scenario], sims)
    return {r["rate"]: (r["value"], r["cp_low"]) for r in tab.to_dict("records") if r["rate"].startswith("false")}


def _boundaries(pools, **kw) -> list[cal.Scenario]:
    quality, speed = pools
    return [
        s
        for s in cal.scenarios(quality, {"CPU": speed}, power=False, n_resamples=200, **kw)
        if s.rule in ("(a) quality", "(b2)", "(c)", "(d)")
    ]


def test_every_boundary_is_not_significantly_above_five_percent(pools) -> None:
    scenarios = _boundaries(pools)
    assert {s.rule for s in scenarios} == {"(a) quality", "(b2)", "(c)", "(d)"}
    for s in scenarios:
        for rate, (value, cp_low) in _false_rates(s).items():
            print(f"calibration: {s.rule} {s.name}: {rate} = {value:.3f}")
            assert cp_low <= 0.05, (s.rule, s.name, rate, value)


def test_b_range_bounds_at_the_margin(pools) -> None:
    quality, _ = pools
    for shape in ("linear", "inverted-U"):
        s = cal.Scenario(
            "(b)",
            shape,
            sim.claim_b,
            {"pool": quality, "n": quality.n, "shape": shape, "size": 0.05, "margin": 0.05, "n_resamples": 200},
            cal.BOTH,
        )
        for rate, (value, cp_low) in _false_rates(s, 150).items():
            print(f"calibration: (b) {shape} at the margin: {rate} = {value:.3f}")
            assert cp_low <= 0.05


def test_c2_a_linear_excess_never_sits_in_the_band(pools) -> None:
    quality, _ = pools
    counts = sim.readings(
        sim.claim_c2,
        200,
        3,
        pool=quality,
        n=quality.n,
        scheme=quality.fp4,
        shape="linear",
        size_over_margin=3.0,
        share=0.25,
    )
    assert counts["holds"] == 0 and counts["does not hold"] >= 180


def test_power_where_the_effect_is_large(pools) -> None:
    quality, speed = pools
    c = sim.readings(
        sim.claim_c, 200, 4, pool=quality, n=quality.n, scheme=quality.nf4, excess_over_margin=5.0, share=0.25
    )
    assert c["holds"] >= 180
    d = sim.readings(sim.claim_d, 200, 5, speed=speed, k=8, ratio=2.0, speed_margin=0.1)
    assert d["holds"] >= 180


def test_a_flat_offset_moves_no_bound_of_the_range() -> None:
    rng = np.random.default_rng(2)
    g = 0.03 * np.linspace(0, 1, 16)[None, :] + rng.normal(0, 0.1, (80, 16))
    a, b = range_bounds(g, 300, seed=1), range_bounds(g + 0.08, 300, seed=1)
    assert (a.estimate, a.lower, a.upper, a.p_any) == pytest.approx((b.estimate, b.lower, b.upper, b.p_any))


def test_one_round_never_yields_a_speed_verdict() -> None:
    parts = [Part("x", np.array([math.log(3.0)]), MIN_ROUNDS), Part("y", np.array([math.log(2.0)]), MIN_ROUNDS)]
    d = all_parts(parts)
    assert d.reading == "inconclusive" and d.why == "too few units"


def test_holm_controls_the_family_wise_error() -> None:
    rng = np.random.default_rng(7)
    any_false = [any(holm(list(rng.uniform(size=6)))) for _ in range(4000)]
    assert np.mean(any_false) <= 0.06


def test_clopper_pearson_matches_the_exact_interval() -> None:
    lo, hi = cal.clopper_pearson(100, 2000)
    assert lo == pytest.approx(0.0409, abs=5e-4) and hi == pytest.approx(0.0605, abs=5e-4)
