"""Verdict rules on synthetic tables where the answer is known: every reading reachable for every claim,
and a regression test for each way a rule used to misread the claim's words."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from conftest import heavy_modules

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study, bootstrap_ci

SCHEMES = {  # name: (quant, bits, double_quant, dtype, compute_dtype)
    "fp16": ("none", 16, False, "float16", None),
    "bf16": ("none", 16, False, "bfloat16", None),
    "int8": ("int8", 8, False, "float16", None),
    "nf4": ("nf4", 4, False, "float16", "float16"),
    "fp4": ("fp4", 4, False, "float16", "float16"),
}
TEMPS = [round(0.1 * i, 1) for i in range(16)]  # the probe's dense default list


def _meta(model: str, s: str) -> dict:
    quant, bits, dq, dtype, cdt = SCHEMES[s]
    return {
        "model": model,
        "scheme": s,
        "quant": quant,
        "bits": bits,
        "double_quant": dq,
        "dtype": dtype,
        "compute_dtype": cdt,
        "status": "ok",
        "device": "cpu",
    }


def _speed_rows(model: str, s: str, per_round: list[float], weight: float) -> list[dict]:
    rows = []
    for r, med in enumerate(per_round):
        for metric, v, vlo, vhi in (
            ("decode_ms_per_token", med, 0.98 * med, 1.02 * med),
            ("weight_bytes", weight, None, None),
            ("round", r, None, None),
            ("contended", 0.0, None, None),
        ):
            rows.append(
                {
                    **_meta(model, s),
                    "cell_id": f"speed-{model}-{s}-{r}",
                    "kind": "speed",
                    "batch_size": 1.0,
                    "mode": "eager",
                    "invocation": "inv",
                    "metric": metric,
                    "value": v,
                    "lo": vlo,
                    "hi": vhi,
                }
            )
    return rows


def make_study(
    quality: Callable[[str, float, int, np.random.Generator], float] | None,
    *,
    n: int = 60,
    speed: dict[str, float | list[float]] | None = None,
    rounds: int = 3,
    family: str | None = None,
    weights: dict[str, float] | None = None,
    models: tuple[str, ...] = ("m",),
    schemes: tuple[str, ...] = tuple(SCHEMES),
    reference: str = "fp16",
) -> Study:
    """A study of ``models``: probe p_gold per (scheme, T, prompt) from ``quality`` (None: a speed-only
    study); speed rounds of decode ms/token: ``speed[scheme]`` times 2 % lognormal noise per round, or
    the given per-round values."""
    rng = np.random.default_rng(0)
    cells, samples = [], []
    for model in models:
        for s in schemes:
            if quality is not None:
                cells.append(
                    {
                        **_meta(model, s),
                        "cell_id": f"probe-{model}-{s}",
                        "kind": "probe",
                        "metric": "p_gold",
                        "value": 0.5,
                    }
                )
                for t in TEMPS:
                    for d in range(n):
                        samples.append(
                            {
                                "cell_id": f"probe-{model}-{s}",
                                "kind": "probe",
                                "model": model,
                                "scheme": s,
                                "task": "probe:nw",
                                "temperature": t,
                                "top_k": None,
                                "top_p": 1.0,
                                "max_new_tokens": None,
                                "repetition_penalty": 1.0,
                                "seed": None,
                                "doc_id": d,
                                "metric": "p_gold",
                                "value": float(np.clip(quality(s, t, d, rng), 0, 1)),
                            }
                        )
            if speed and s in speed:
                v = speed[s]
                per_round = (
                    list(v) if isinstance(v, list) else [v * float(np.exp(rng.normal(0, 0.02))) for _ in range(rounds)]
                )
                cells += _speed_rows(model, s, per_round, (weights or {}).get(s, 1e9))
    run = {"references": {m: reference for m in models}, "families": {m: family for m in models} if family else {}}
    return Study(pd.DataFrame(cells), pd.DataFrame(samples), pd.DataFrame(), run)


def base(t: float) -> float:
    return 0.6 - 0.2 * t  # accuracy falls with temperature


def claim(study: Study, key: str) -> analysis.Claim:
    return next(c for c in analysis.claims(study) if c.key == key)


EQUAL_SPEED = {"fp16": 10, "bf16": 10.2, "int8": 30, "nf4": 14, "fp4": 14.1}
SEED_LIKE = {**EQUAL_SPEED, "bf16": 12}  # fp16 clearly fastest, int8 clearly slowest


def test_bootstrap_interval_covers_the_mean() -> None:
    v = np.random.default_rng(1).normal(0.3, 0.1, 200)
    mean, lo, hi = bootstrap_ci(v)
    assert lo < mean < hi and hi - lo < 0.04
    assert bootstrap_ci([0.2] * 5) == (0.2, 0.2, 0.2)


# -- (a) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quality", "speed", "expected"),
    [
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), EQUAL_SPEED, "holds"),
        (lambda s, t, d, r: base(t) - (0.3 if s == "fp4" else 0) + r.normal(0, 0.01), EQUAL_SPEED, "does not hold"),
        # a true gap of 0.04 measured with wide noise: the test decides neither way
        (
            lambda s, t, d, r: 0.5 - (0.04 if s == "fp4" else 0) + r.normal(0, 0.3) * (d % 2 * 2 - 1),
            EQUAL_SPEED,
            "inconclusive",
        ),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), {**EQUAL_SPEED, "fp4": 25}, "does not hold"),
    ],
    ids=["alike", "quality-differs", "noisy", "speed-differs"],
)
def test_claim_a(quality, speed, expected) -> None:
    c = claim(make_study(quality, speed=speed), "a")
    assert c.verdict == expected
    assert c.scope == "m (1 model, cpu, nf4 vs fp4; speed: eager, batch 1)"


def test_claim_a_memory_equal_by_construction_counts_as_alike_without_a_test() -> None:
    c = claim(make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), speed=EQUAL_SPEED), "a")
    memory = [e for e in c.evidence if "weight memory" in e["what"]]
    assert memory and memory[0]["value"] == "1.000× (identical bytes)" and "deterministic" in memory[0]["verdict"]


def test_claim_a_needs_enough_prompts_and_rounds() -> None:
    study = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), n=5, speed=EQUAL_SPEED)
    assert claim(study, "a").verdict == "inconclusive"
    one_round = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), speed=EQUAL_SPEED, rounds=1)
    assert claim(one_round, "a").verdict == "inconclusive"


def test_claim_a_never_holds_with_a_part_unmeasured() -> None:
    """A speed-only study (no quality) cannot show nf4 and fp4 alike in quality: not 'holds'."""
    c = claim(make_study(None, speed=EQUAL_SPEED), "a")
    assert c.verdict == "inconclusive"
    assert (
        "accuracy nf4 − fp4 was not measured" in c.reason
        and "decode time nf4/fp4 (eager, batch 1): equivalent" in c.reason
    )


def test_claim_a_a_gap_beyond_the_margin_is_not_diluted_by_undecidable_speed_parts() -> None:
    """The demo's case: a quality gap entirely beyond ±0.05 (about +0.086 [+0.055, +0.117]) beside a noisy
    speed part reads 'does not hold', and the deciding figure is that gap, not a speed ratio."""

    def q(s, t, d, r):
        return 0.6 + (0.086 if s == "nf4" else 0) + r.normal(0, 0.3)

    noisy = {**EQUAL_SPEED, "nf4": [14.0, 19.0, 12.0], "fp4": [14.0, 13.0, 17.0]}
    c = claim(make_study(q, n=356, speed=noisy), "a")
    assert c.verdict == "does not hold"
    assert c.deciding.startswith("m: accuracy nf4 − fp4") and c.reason.startswith(
        "accuracy nf4 − fp4 differs beyond ±0.05"
    )


# -- (b), (b2) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (lambda s, t, d, r: base(t) - (0.25 * t if s == "fp4" else 0) + r.normal(0, 0.01), "holds"),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "does not hold"),
        # a constant offset is a difference in level (claim a), never an interaction
        (lambda s, t, d, r: base(t) - (0.08 if s == "fp4" else 0) + r.normal(0, 0.01), "does not hold"),
        (lambda s, t, d, r: base(t) - (0.04 * t if s == "fp4" else 0) + r.normal(0, 0.25), "inconclusive"),
    ],
    ids=["gap-grows", "same", "flat-offset", "noisy"],
)
def test_claim_b(quality, expected) -> None:
    assert claim(make_study(quality), "b").verdict == expected


def test_claim_b_is_studentized_so_a_noisy_temperature_cannot_hide_a_clear_interaction() -> None:
    """The gap rises by 0.09 between T=0.5 and T=1.0, measured tightly, while the lowest and highest
    temperatures are very noisy: the range is shown above the margin (an unstudentized sum of squares,
    dominated by the noisy columns, could not see it)."""

    def q(s, t, d, r):
        rise = 0.09 * min(max(t - 0.5, 0.0), 0.5) / 0.5
        noise = r.normal(0, 0.8) if t <= 0.3 or t >= 1.2 else r.normal(0, 0.01)
        return 0.5 + (rise + noise if s == "nf4" else 0)

    c = claim(make_study(q, n=120), "b")
    assert c.verdict == "holds", c.reason


def test_claim_b_one_margin_on_the_range_in_both_directions() -> None:
    """A range of 0.08 (between the margin 0.05 and twice it) with every centred deviation inside ±0.05 is
    shown above the margin: it cannot 'not hold' under one definition of the quantity."""

    def q(s, t, d, r):  # the gap steps from -0.04 to +0.04: deviations ±0.04, range 0.08
        return 0.5 + ((0.04 if t >= 0.8 else -0.04) + r.normal(0, 0.02) if s == "nf4" else 0)

    c = claim(make_study(q, n=120), "b")
    assert c.verdict == "holds"
    assert "range of the gap over T" in c.deciding


@pytest.mark.parametrize(
    ("family", "weaker", "expected"),
    [
        ("llama-2", "fp4", "holds"),
        ("llama-2", "nf4", "does not hold"),
        ("falcon", "fp4", "does not hold"),
        ("falcon", "nf4", "holds"),
        ("smollm2", "fp4", "not tested"),
    ],
)
def test_claim_b2_per_family(family, weaker, expected) -> None:
    def q(s, t, d, r):  # the weaker 4-bit format loses more when leaving greedy decoding
        return base(t) - (0.2 * min(t, 1.0) if s == weaker and t > 0 else 0) + r.normal(0, 0.01)

    c = claim(make_study(q, family=family), "b2")
    assert c.verdict == expected
    assert any(family in e["what"] for e in c.evidence)


def test_claim_b2_equally_resilient_formats_do_not_hold() -> None:
    """(b2) has an equivalence path: nf4 and fp4 losing the same when leaving greedy decoding, measured
    tightly, make 'nf4 is the more resilient' not hold on a Llama-2 model."""
    c = claim(make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.005), family="llama-2"), "b2")
    assert c.verdict == "does not hold"


# -- (c), (c2) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (
            lambda s, t, d, r: base(t) - (0.15 if s in ("nf4", "fp4") and 0 < t <= 1 else 0) + r.normal(0, 0.01),
            "holds",
        ),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "does not hold"),
        (lambda s, t, d, r: base(t) - (0.15 if s == "nf4" and 0 < t <= 1 else 0) + r.normal(0, 0.01), "inconclusive"),
    ],
    ids=["both-4bit-more-sensitive", "like-reference", "only-one"],
)
def test_claim_c(quality, expected) -> None:
    c = claim(make_study(quality), "c")
    assert c.verdict == expected
    assert any("relative" in e["what"] for e in c.evidence) and any("absolute" in e["what"] for e in c.evidence)


def test_claim_c_an_excess_below_the_yardstick_is_not_meaningfully_more_sensitive() -> None:
    """One definition in both directions: an excess clearly above 0 but clearly below 25 % of the
    reference's own loss does not make the 4-bit schemes 'more sensitive'."""
    ref_loss = 0.2 * 0.55  # base(t) falls by 0.11 on average over 0 < T <= 1
    small = 0.3 * 0.25 * ref_loss  # 30 % of the yardstick

    def q(s, t, d, r):
        return base(t) - (small if s in ("nf4", "fp4") and 0 < t <= 1 else 0) + r.normal(0, 0.002)

    c = claim(make_study(q, n=200), "c")
    assert c.verdict == "does not hold", c.reason


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (
            lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0.5 <= t <= 0.8 else 0) + r.normal(0, 0.01),
            "holds",
        ),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "does not hold"),
        (
            lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0 < t <= 1 else 0) + r.normal(0, 0.01),
            "does not hold",
        ),
    ],
    ids=["in-band", "none", "everywhere-not-concentrated"],
)
def test_claim_c2_band(quality, expected) -> None:
    assert claim(make_study(quality), "c2").verdict == expected


def test_claim_c2_an_excess_rising_linearly_with_temperature_does_not_sit_in_the_band() -> None:
    """excess = beta * T is larger in 0.5-0.8 than below it and than a pooled outside, but largest above the
    band: the extra sensitivity does not sit in the band."""

    def q(s, t, d, r):
        return base(t) - (0.2 * t if s in ("nf4", "fp4") and 0 < t <= 1 else 0) + r.normal(0, 0.01)

    c = claim(make_study(q), "c2")
    assert c.verdict == "does not hold"
    assert "minus that above it" in c.deciding


def test_claim_c2_needs_two_temperatures_inside_and_one_on_each_side_of_the_band() -> None:
    study = make_study(lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0.5 <= t <= 0.8 else 0))
    study.samples = study.samples[study.samples["temperature"].isin([0.0, 0.3, 0.7, 1.0, 1.5])]  # the old demo grid
    c = claim(study, "c2")
    assert c.verdict == "inconclusive" and "cannot locate the band" in c.reason


# -- (d), (d2) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("speed", "d", "d2"),
    [
        (SEED_LIKE, "holds", "does not hold"),
        ({**SEED_LIKE, "int8": 8}, "does not hold", "does not hold"),
        ({**SEED_LIKE, "bf16": 9, "fp16": 12}, "does not hold", "holds"),
        # fp16 and bf16 tie: neither is 'the fastest' (more than 10 % faster than every other scheme)
        ({**EQUAL_SPEED, "bf16": 10}, "does not hold", "does not hold"),
    ],
    ids=["seed-like", "int8-fastest", "bf16-fastest", "16-bit-tie"],
)
def test_claim_d(speed, d, d2) -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=speed)
    c = claim(study, "d")
    assert c.verdict == d and "size unknown" in c.scope and "cpu" in c.scope and "eager, batch 1" in c.scope
    assert claim(study, "d2").verdict == d2


def test_claim_d_no_scheme_stands_in_for_an_absent_fp16() -> None:
    """Without fp16, bf16 does not stand in for it: (d) is not tested, and says which scheme is missing."""
    speed = {k: v for k, v in SEED_LIKE.items() if k != "fp16"}
    study = make_study(
        lambda s, t, d_, r: base(t), speed=speed, schemes=("bf16", "int8", "nf4", "fp4"), reference="bf16"
    )
    c = claim(study, "d")
    assert c.verdict == "not tested" and "the claim names fp16 and the study has none" in c.reason


def test_claim_d_a_comparison_going_significantly_the_wrong_way_makes_it_not_hold() -> None:
    """The fresh demo's case: bf16/nf4 = 1.15x [1.03, 1.29] over 3 rounds — bf16 measured slower than nf4 —
    must make 'bf16 is the fastest' not hold, saying so in words."""
    nf4 = [40.0, 40.0, 40.0]
    bf16 = [40.0 * math.exp(x) for x in (0.10, 0.14, 0.18)]
    speed = {
        "fp16": [60.0, 62.0, 58.0],
        "bf16": bf16,
        "int8": [50.0, 47.0, 52.0],
        "nf4": nf4,
        "fp4": [55.0, 57.0, 56.0],
    }
    c2 = claim(make_study(lambda s, t, d_, r: base(t), speed=speed), "d2")
    assert c2.verdict == "does not hold"
    assert "bf16 was measured slower than nf4" in c2.reason


def test_claim_d_fastest_needs_the_margin() -> None:
    """A 2.3 % lead over every other scheme, however tight, is not 'the fastest' (margin 10 %)."""
    speed = {
        "fp16": [10.23] * 3,
        "bf16": [10.0, 10.0, 10.0],
        "int8": [30.0] * 3,
        "nf4": [10.24] * 3,
        "fp4": [10.25] * 3,
    }
    speed = {k: [x * (1 + 0.001 * i) for i, x in enumerate(v)] for k, v in speed.items()}
    assert claim(make_study(lambda s, t, d_, r: base(t), speed=speed), "d2").verdict == "does not hold"


def test_one_round_never_yields_a_speed_verdict() -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=SEED_LIKE, rounds=1)
    c = claim(study, "d")
    assert c.verdict == "inconclusive" and "not replicated" in c.reason


def test_contended_rounds_are_excluded() -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=SEED_LIKE, rounds=4)
    busy = (study.cells["metric"] == "contended") & study.cells["cell_id"].str.endswith("-0")
    study.cells.loc[busy, "value"] = 1.0
    study.cells.loc[
        (study.cells["metric"] == "decode_ms_per_token") & study.cells["cell_id"].eq("speed-m-fp16-0"), "value"
    ] = 500.0
    c = claim(study, "d")
    assert c.verdict == "holds"
    assert any("ran contended" in e["value"] for e in c.evidence)


# -- across models, quality per task, words --------------------------------------------------------
def test_two_models_agreeing_read_supported_or_contradicted_with_the_tally() -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=SEED_LIKE, models=("m", "n"))
    assert claim(study, "d").verdict == "holds"  # two models, but of unknown sizes: "every size" is not shown
    study.run["loads"] = [
        {"model": m, "scheme": "fp16", "scheme_fields": {"quant": "none"}, "num_parameters": n}
        for m, n in (("m", 135_000_000), ("n", 1_100_000_000))
    ]
    d = claim(study, "d")
    assert d.verdict == "supported" and "2 sizes" in d.scope
    c = claim(study, "c")
    assert c.verdict == "contradicted" and "0 of 2 models hold, 2 do not" in c.reason


def test_models_that_disagree_show_each_reading_at_a_glance() -> None:
    """Gemma's case: (a) does not hold on one model and is undecided on the other; the at-a-glance row
    shows each model's reading with its own figure, not one pooled 'inconclusive'."""
    from harness_ext.report import sections

    study = make_study(lambda s, t, d, r: 0.5 + r.normal(0, 0.01), speed=EQUAL_SPEED, models=("gemma", "smol"))
    gap = (study.samples["model"] == "gemma") & (study.samples["scheme"] == "nf4")
    study.samples.loc[gap, "value"] += 0.15
    c = claim(study, "a")
    assert c.verdict == "inconclusive" and c.per_model == {"gemma": "does not hold", "smol": "holds"}
    row = next(r for r in sections.glance([c]) if r["key"] == "a")
    assert [(m["model"], m["verdict"]) for m in row["per_model"]] == [("gemma", "does not hold"), ("smol", "holds")]
    assert row["per_model"][0]["deciding"].startswith("gemma: accuracy nf4 − fp4")


def test_quality_verdicts_read_one_next_word_task_never_mixing_tasks() -> None:
    """Without a probe, the quality claims read exact_match of the next-word task only: doc 0 of another
    task is never averaged with doc 0 of the next-word task."""
    rng = np.random.default_rng(0)
    rows = []
    for task, gap in (("quant_nextword", 0.0), ("gsm8k", 0.5)):
        for s in SCHEMES:
            for t in (0.0, 0.5, 1.0):
                for d in range(60):
                    v = float(rng.random() < (0.6 - (gap if s == "fp4" else 0)))
                    rows.append(
                        {
                            "cell_id": f"{task}-{s}-{t}",
                            "kind": "eval",
                            "model": "m",
                            "scheme": s,
                            "task": task,
                            "temperature": t,
                            "top_k": None,
                            "top_p": 1.0,
                            "max_new_tokens": 8,
                            "repetition_penalty": 1.0,
                            "seed": 0,
                            "doc_id": d,
                            "metric": "exact_match",
                            "value": v,
                        }
                    )
    cells = pd.DataFrame(
        [{**_meta("m", s), "cell_id": f"x-{s}", "kind": "eval", "metric": "exact_match", "value": 0.5} for s in SCHEMES]
    )
    run = {
        "references": {"m": "fp16"},
        "tasks": {"quant_nextword": {"kind": "quant_nextword"}, "gsm8k": {"kind": None}},
    }
    study = Study(cells, pd.DataFrame(rows), pd.DataFrame(), run)
    q, desc = analysis.primary_quality(study)
    assert set(q["task"]) == {"quant_nextword"} and "quant_nextword" in desc
    a = claim(study, "a")
    gap = next(e for e in a.evidence if "accuracy nf4 − fp4" in e["what"])
    assert abs(float(gap["value"].split(" ")[0])) < 0.15  # gsm8k's 0.5 gap did not leak in


def test_absent_subject_is_not_tested_never_contradicted() -> None:
    study = make_study(lambda s, t, d, r: base(t), speed=EQUAL_SPEED)
    study.cells = study.cells[~study.cells["scheme"].isin(["int8", "fp4", "fp16", "bf16"])]
    study.samples = study.samples[~study.samples["scheme"].isin(["int8", "fp4", "fp16", "bf16"])]
    verdicts = {c.key: c for c in analysis.claims(study)}
    assert verdicts["a"].verdict == "not tested" and "no nf4 and fp4" in verdicts["a"].reason
    assert verdicts["d"].verdict == "not tested" and verdicts["d2"].verdict == "not tested"


def test_every_reason_reads_as_words() -> None:
    """No reason opens with a bare rule word ('undecided: …'), and every decided verdict names a figure."""
    study = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), speed=SEED_LIKE)
    for c in analysis.claims(study):
        assert not c.reason.startswith(("undecided", "inconclusive", "Decided")), c.reason
        if c.verdict != "not tested":
            assert c.deciding, c.key


def test_estimate_predicates() -> None:
    e = Estimate(0.01, -0.02, 0.03, 50)
    assert e.within(0.05) and not e.outside(0.05) and not e.above(0)
    assert Estimate(0.2, 0.1, 0.3, 50).outside(0.05)


def test_margins_come_from_one_place() -> None:
    """The claims' default margins are the spec's ReportSpec defaults."""
    from harness_ext.spec.schema import ReportSpec

    o = analysis.Options()
    r = ReportSpec()
    assert (o.margin, o.speed_margin, o.sensitivity_margin) == (
        r.equivalence_margin,
        r.speed_margin,
        r.sensitivity_margin,
    )
    assert analysis.Options.of_report({"speed_margin": 0.2}).speed_margin == 0.2


def test_store_and_analysis_import_neither_torch_nor_the_backend_nor_the_runner(fresh_imports) -> None:
    """Reading a run directory and analysing its tables needs no model: a fresh interpreter that
    imports both has not imported torch (which takes seconds and a GPU stack to load), nor any
    module of the backend or the run packages (names checked to exist: a renamed package must not
    leave this test looking for nothing)."""
    import importlib.util

    rooms = ("harness_ext.backend", "harness_ext.run")
    assert all(importlib.util.find_spec(room) for room in rooms)
    assert heavy_modules(fresh_imports["modules"]["store_analysis"], ours=rooms) == set()
