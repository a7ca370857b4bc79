"""Calibration of the decision rules, simulated: with no effect a rule declares a false finding in at
most ~5 % of 200 simulated studies; with an effect of twice the margin it finds it in most.

The rules are the pure functions the claim modules call (arrays of per-prompt or per-round values in,
a reading out), so 200 studies take seconds. The interaction test uses 200 sign-flip resamples here
(2,000 in reports): enough to resolve p < 0.05. Rates are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness_ext.analysis.claims._common import band_reading, equivalence_parts, equivalence_reading, excess_reading
from harness_ext.analysis.claims.b import interaction_reading
from harness_ext.analysis.claims.d import speed_reading
from harness_ext.analysis.stats import holm, interaction_p

STUDIES = 200
PROMPTS = 60
MARGIN = 0.05
FALSE_MAX = 0.08  # ~5 % nominal; 200 studies give a binomial sd of 1.5 %
POWER_MIN = 0.8


def rate(readings: list[str], what: str) -> float:
    return sum(r == what for r in readings) / len(readings)


def report(name: str, value: float) -> None:
    print(f"calibration: {name}: {value:.3f}")


def _quality_a(effect: float, rng: np.random.Generator) -> list[str]:
    return [
        equivalence_reading([equivalence_parts(effect + rng.normal(0, 0.1, PROMPTS), MARGIN)]) for _ in range(STUDIES)
    ]


def test_a_equivalence_is_calibrated() -> None:
    rng = np.random.default_rng(1)
    none = _quality_a(0.0, rng)
    at_margin = _quality_a(MARGIN, rng)
    twice = _quality_a(2 * MARGIN, rng)
    report("(a) no effect -> false 'does not hold'", rate(none, "does not hold"))
    report("(a) effect = margin -> false 'holds'", rate(at_margin, "holds"))
    report("(a) effect = 2x margin -> 'does not hold'", rate(twice, "does not hold"))
    report("(a) no effect -> 'holds' (power of equivalence)", rate(none, "holds"))
    assert rate(none, "does not hold") <= FALSE_MAX
    assert rate(at_margin, "holds") <= FALSE_MAX
    assert rate(twice, "does not hold") >= POWER_MIN


def _gaps(offset: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    t = np.round(np.arange(16) * 0.1, 1)
    return offset + slope * t[None, :] + rng.normal(0, 0.1, (PROMPTS, 16)) + rng.normal(0, 0.1, (PROMPTS, 1))


def _b(offset: float, slope: float, rng: np.random.Generator, shift: float = 0.0) -> list[str]:
    out = []
    for _ in range(STUDIES):
        g = _gaps(offset, slope, rng) + shift
        p = interaction_p(g, n_resamples=200, seed=0)
        out.append(interaction_reading(g, MARGIN, p, p < 0.05))
    return out


def test_b_interaction_is_calibrated_and_a_flat_offset_never_supports_it() -> None:
    rng = np.random.default_rng(2)
    none = _b(0.0, 0.0, np.random.default_rng(2))
    flat = _b(0.0, 0.0, np.random.default_rng(2), shift=0.08)  # the same draws as `none`, offset by 0.08
    twice = _b(0.0, 2 * MARGIN / 1.5, rng)  # the gap's range over T = 0..1.5 is twice the margin
    report("(b) no interaction -> false 'holds'", rate(none, "holds"))
    report("(b) flat offset 0.08 -> 'holds'", rate(flat, "holds"))
    report("(b) range = 2x margin -> 'holds'", rate(twice, "holds"))
    assert rate(none, "holds") <= FALSE_MAX
    assert flat == none  # a constant offset changes no reading: it cannot support (b)
    assert rate(twice, "holds") >= POWER_MIN


def _c(excess: float, margin: float, rng: np.random.Generator) -> list[str]:
    return [excess_reading(excess + rng.normal(0, 0.1, PROMPTS), margin) for _ in range(STUDIES)]


def test_c_excess_is_calibrated() -> None:
    rng = np.random.default_rng(3)
    m = 0.25 * 0.16  # the default relative margin on a reference drop of 0.16
    none = _c(0.0, m, rng)
    at_margin = _c(m, m, rng)
    twice = _c(2 * m, m, rng)
    report("(c) no excess -> false 'holds'", rate(none, "holds"))
    report("(c) excess = margin -> false 'does not hold'", rate(at_margin, "does not hold"))
    report("(c) excess = 2x margin -> 'holds'", rate(twice, "holds"))
    assert rate(none, "holds") <= FALSE_MAX
    assert rate(at_margin, "does not hold") <= FALSE_MAX
    assert rate(twice, "holds") >= POWER_MIN


def test_c2_band_is_calibrated() -> None:
    rng = np.random.default_rng(4)
    m = 0.04

    def sim(in_band: float, outside: float) -> list[str]:
        return [
            band_reading(in_band + rng.normal(0, 0.1, PROMPTS), outside + rng.normal(0, 0.1, PROMPTS), m)
            for _ in range(STUDIES)
        ]

    none = sim(0.0, 0.0)
    everywhere = sim(2 * m, 2 * m)
    concentrated = sim(2 * m, 0.0)
    report("(c2) no excess -> false 'holds'", rate(none, "holds"))
    report("(c2) excess everywhere (not concentrated) -> false 'holds'", rate(everywhere, "holds"))
    report("(c2) in-band excess = 2x margin -> 'holds'", rate(concentrated, "holds"))
    assert rate(none, "holds") <= FALSE_MAX
    assert rate(everywhere, "holds") <= FALSE_MAX
    assert rate(concentrated, "holds") >= POWER_MIN


def _rounds(ratio: float, k: int, rng: np.random.Generator, sd: float = 0.05) -> np.ndarray:
    return math.log(ratio) + rng.normal(0, sd, k)


@pytest.mark.parametrize("k", [3, 5])
def test_d_speed_is_calibrated(k: int) -> None:
    rng = np.random.default_rng(5 + k)
    ml = math.log(1.10)
    none = [speed_reading([_rounds(1.0, k, rng)] * 1, [_rounds(1.0, k, rng)], margin_log=ml)[0] for _ in range(STUDIES)]
    twice = [
        speed_reading([_rounds(1.0 + 2 * 0.10 * 1.5, k, rng)], [_rounds(1 / 1.2, k, rng)], margin_log=ml)[0]
        for _ in range(STUDIES)
    ]
    report(f"(d) {k} rounds, all schemes equal -> false 'holds'", rate(none, "holds"))
    report(f"(d) {k} rounds, all schemes equal -> false 'does not hold'", rate(none, "does not hold"))
    report(f"(d) {k} rounds, int8 1.3x slower and fp16 1.2x faster -> 'holds'", rate(twice, "holds"))
    assert rate(none, "holds") <= FALSE_MAX and rate(none, "does not hold") <= FALSE_MAX
    assert rate(twice, "holds") >= POWER_MIN


def test_one_round_never_yields_a_speed_verdict() -> None:
    rng = np.random.default_rng(6)
    readings = [speed_reading([_rounds(3.0, 1, rng)], [_rounds(0.5, 1, rng)], margin_log=0.1) for _ in range(50)]
    assert all(r == "inconclusive" and why.startswith("not replicated") for r, why in readings)


def test_holm_controls_the_family_wise_error() -> None:
    rng = np.random.default_rng(7)
    any_false = [any(holm(list(rng.uniform(size=6)))) for _ in range(2000)]
    report("Holm over 6 null tests -> any rejection", float(np.mean(any_false)))
    assert np.mean(any_false) <= 0.065
