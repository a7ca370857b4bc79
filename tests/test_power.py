"""What a design could detect: the report's detectable distances against simulations of the same
design on the data's own noise, and the planner's predictions against what a run then reports."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness_ext import analysis
from harness_ext.analysis import Study
from harness_ext.analysis import simulate as sim
from harness_ext.analysis.planner import Design, predict
from harness_ext.analysis.power import Detectable
from harness_ext.analysis.stats import detectable

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo() -> Study:
    return Study.load(REPO / "reports/demo/data")


def _stated(study: Study, key: str, part: str) -> Detectable:
    c = next(c for c in analysis.claims(study) if c.key == key)
    return next(d for d in c.power if d.part == part)


def test_the_stated_detectable_excess_matches_a_simulation_of_the_design(demo) -> None:
    """(c): the report's distance from the yardstick at 80 % power equals, within 10 %, the distance at
    which simulated studies of the same prompts (resampled whole) decide 'holds' 80 % of the time."""
    pool = sim.QualityPool.of(demo)
    stated = _stated(demo, "c", f"{pool.nf4}'s excess loss")
    margin = stated.margin

    def power_at(distance: float) -> float:
        counts = sim.readings(
            sim.claim_c,
            600,
            11,
            pool=pool,
            n=pool.n,
            scheme=pool.nf4,
            excess_over_margin=1 + distance / margin,
            share=0.25,
        )
        return counts["holds"] / 600

    measured = sim.power_distance(power_at, stated.mde)
    assert abs(measured - stated.mde) / stated.mde < 0.10, (measured, stated.mde)


def test_the_stated_detectable_quality_gap_matches_a_simulation(demo) -> None:
    pool = sim.QualityPool.of(demo)
    stated = _stated(demo, "a", f"accuracy {pool.nf4} − {pool.fp4}")

    def power_at(distance: float) -> float:  # a gap beyond the margin by `distance`: 'does not hold'
        counts = sim.readings(
            sim.quality_a, 600, 12, pool=pool, n=pool.n, effect=stated.margin + distance, margin=stated.margin
        )
        return counts["does not hold"] / 600

    measured = sim.power_distance(power_at, stated.mde)
    assert abs(measured - stated.mde) / stated.mde < 0.10, (measured, stated.mde)


@pytest.mark.parametrize("rounds", [3, 8])
def test_the_speed_formula_holds_at_few_rounds(rounds) -> None:
    """With k rounds of normal noise, a one-sided t-test detects a shift of detectable(sd, k) 80 % of the time."""
    rng = np.random.default_rng(3)
    sd = 0.1
    mde = detectable(sd, rounds)
    from scipy import stats

    hits = [
        stats.ttest_1samp(mde + rng.normal(0, sd, rounds), 0, alternative="greater").pvalue < 0.05 for _ in range(4000)
    ]
    assert abs(np.mean(hits) - 0.8) < 0.03


def test_the_planner_predicts_what_the_run_then_reports() -> None:
    """A pilot of 80 prompts predicts the detectable distances a run of 320 prompts of the same kind
    reports, within the sampling error of an sd estimated on 80 prompts."""
    from test_analysis import base, make_study

    def q(s, t, d, r):
        return base(t) - (0.05 if s == "fp4" and t > 0 else 0) + r.normal(0, 0.25)

    pilot = make_study(q, n=80)
    run = make_study(q, n=320)
    design = Design(prompts=320, rounds=3, temperatures=None, options=analysis.Options())
    predicted = predict(pilot, design)
    reported = {(c.key, d.part): d.mde for c in analysis.claims(run) for d in c.power}
    compared = 0
    for r in predicted.to_dict("records"):
        key = (r["claim"], r["part"])
        if r["unit"] == "prompts" and key in reported:
            assert abs(r["detectable"] - reported[key]) / reported[key] < 0.2, key
            compared += 1
    assert compared >= 5
    same = predict(pilot, Design(prompts=80, rounds=3, temperatures=None, options=analysis.Options()))
    pilot_rep = {(c.key, d.part): d.mde for c in analysis.claims(pilot) for d in c.power}
    for r in same.to_dict("records"):
        if (r["claim"], r["part"]) in pilot_rep:
            assert r["detectable"] == pytest.approx(pilot_rep[(r["claim"], r["part"])])


def test_a_pilot_of_the_demos_first_400_prompts_predicts_what_the_whole_demo_reports(demo) -> None:
    """The planner on real noise: the demo's first 400 probe prompts as the pilot, the demo's own design
    (1,756 prompts) as the plan; every prompt-based part's predicted distance is within 12 % of the one
    the whole run reports (an sd estimated on 400 prompts is off by ~3.5 %, a yardstick a little more)."""
    probe = demo.samples["kind"] == "probe"
    ids = sorted(demo.samples.loc[probe, "doc_id"].unique())
    first = demo.samples["doc_id"].isin(ids[:400])
    pilot = Study(demo.cells, demo.samples[~probe | first], demo.generations, demo.run)
    predicted = predict(pilot, Design(prompts=len(ids), rounds=3, temperatures=None, options=analysis.Options()))
    reported = {(c.key, d.part): d.mde for c in analysis.claims(demo) for d in c.power}
    rows = [r for r in predicted.to_dict("records") if r["unit"] == "prompts"]
    assert {r["claim"] for r in rows} == {"a", "b", "c", "c2"} and all(r["pilot n"] == 400 for r in rows)
    for r in rows:
        stated = reported[(r["claim"], r["part"])]
        assert abs(r["detectable"] - stated) / stated < 0.12, (r["claim"], r["part"], r["detectable"], stated)


def test_units_needed_for_a_target() -> None:
    d = Detectable("m", "x", "prompts", 100, 0.25, 0.02)
    n = d.needed(0.02)
    assert detectable(0.25, n) <= 0.02 < detectable(0.25, n - 1)
    assert Detectable("m", "x", "rounds", 3, math.nan, 0.1).needed(0.1) is None


def test_plan_command_prints_the_demo_design(capsys) -> None:
    from harness_ext.cli import main

    assert main(["plan", str(REPO / "specs/demo.yaml"), "--pilot", str(REPO / "reports/demo/data")]) == 0
    out = capsys.readouterr().out
    assert "design:" in out and "(c)" in out and "units for the margin" in out
