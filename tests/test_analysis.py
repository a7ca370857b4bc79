"""Verdict rules on synthetic tables where the answer is known: every reading reachable for every claim."""

from __future__ import annotations

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


def make_study(
    quality: Callable[[str, float, int, np.random.Generator], float],
    *,
    n: int = 60,
    speed: dict[str, float] | None = None,
    rounds: int = 3,
    family: str | None = None,
    weights: dict[str, float] | None = None,
    models: tuple[str, ...] = ("m",),
) -> Study:
    """A study of ``models`` (reference fp16): probe p_gold per (scheme, T, prompt) from ``quality``;
    speed cells per round (decode ms/token ``speed[scheme]`` times 2 % lognormal noise per round)."""
    rng = np.random.default_rng(0)
    cells, samples = [], []
    for model in models:
        for s, (quant, bits, dq, dtype, cdt) in SCHEMES.items():
            meta = {
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
            cells.append({**meta, "cell_id": f"probe-{model}-{s}", "kind": "probe", "metric": "p_gold", "value": 0.5})
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
                for r in range(rounds):
                    med = speed[s] * float(np.exp(rng.normal(0, 0.02)))
                    for metric, v, vlo, vhi in (
                        ("decode_ms_per_token", med, 0.98 * med, 1.02 * med),
                        ("weight_bytes", (weights or {}).get(s, 1e9), None, None),
                        ("round", r, None, None),
                        ("contended", 0.0, None, None),
                    ):
                        cells.append(
                            {
                                **meta,
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
    run = {"references": {m: "fp16" for m in models}, "families": {m: family for m in models} if family else {}}
    return Study(pd.DataFrame(cells), pd.DataFrame(samples), pd.DataFrame(), run)


def base(t: float) -> float:
    return 0.6 - 0.2 * t  # accuracy falls with temperature


def claim(study: Study, key: str) -> analysis.Claim:
    return next(c for c in analysis.claims(study) if c.key == key)


EQUAL_SPEED = {"fp16": 10, "bf16": 10.2, "int8": 30, "nf4": 14, "fp4": 14.1}


def test_bootstrap_interval_covers_the_mean() -> None:
    v = np.random.default_rng(1).normal(0.3, 0.1, 200)
    mean, lo, hi = bootstrap_ci(v)
    assert lo < mean < hi and hi - lo < 0.04
    assert bootstrap_ci([0.2] * 5) == (0.2, 0.2, 0.2)


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
    assert c.scope == "m (1 model, cpu)"


def test_claim_a_memory_equal_by_construction_is_not_evidence() -> None:
    c = claim(make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), speed=EQUAL_SPEED), "a")
    memory = [e for e in c.evidence if "weight memory" in e["what"]]
    assert memory and "by construction" in memory[0]["verdict"]


def test_claim_a_needs_enough_prompts_and_rounds() -> None:
    study = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), n=5, speed=EQUAL_SPEED)
    assert claim(study, "a").verdict == "inconclusive"
    one_round = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), speed=EQUAL_SPEED, rounds=1)
    assert claim(one_round, "a").verdict == "inconclusive"


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


@pytest.mark.parametrize(
    ("family", "weaker", "expected"),
    [
        ("llama-2", "fp4", "holds"),
        ("llama-2", "nf4", "does not hold"),
        ("falcon", "fp4", "does not hold"),
        ("smollm2", "fp4", "not tested"),
    ],
)
def test_claim_b2_per_family(family, weaker, expected) -> None:
    def q(s, t, d, r):  # the weaker 4-bit format loses more when leaving greedy decoding
        return base(t) - (0.2 * min(t, 1.0) if s == weaker and t > 0 else 0) + r.normal(0, 0.01)

    c = claim(make_study(q, family=family), "b2")
    assert c.verdict == expected
    assert any(family in e["what"] for e in c.evidence)


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


def test_claim_c2_needs_two_temperatures_inside_and_outside_the_band() -> None:
    study = make_study(lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0.5 <= t <= 0.8 else 0))
    study.samples = study.samples[study.samples["temperature"].isin([0.0, 0.3, 0.7, 1.0, 1.5])]  # the old demo grid
    c = claim(study, "c2")
    assert c.verdict == "inconclusive" and "cannot locate the band" in c.reason


SEED_LIKE = {**EQUAL_SPEED, "bf16": 12}  # fp16 clearly fastest, int8 clearly slowest


@pytest.mark.parametrize(
    ("speed", "d", "d2"),
    [
        (SEED_LIKE, "holds", "does not hold"),
        ({**SEED_LIKE, "int8": 8}, "does not hold", "does not hold"),
        ({**SEED_LIKE, "bf16": 9, "fp16": 12}, "does not hold", "holds"),
        (
            {**EQUAL_SPEED, "bf16": 10},
            "inconclusive",
            "inconclusive",
        ),  # fp16 and bf16 within noise: neither is clearly fastest
    ],
    ids=["seed-like", "int8-fastest", "bf16-fastest", "16-bit-tie"],
)
def test_claim_d(speed, d, d2) -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=speed)
    c = claim(study, "d")
    assert c.verdict == d and "size unknown" in c.scope and "cpu" in c.scope
    assert claim(study, "d2").verdict == d2


def test_one_round_never_yields_a_speed_verdict() -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=SEED_LIKE, rounds=1)
    for key in ("d", "d2"):
        c = claim(study, key)
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
    assert c.verdict == "contradicted" and "2 of 2" not in c.reason and "0 of 2 models hold" in c.reason


def test_absent_subject_is_not_tested_never_contradicted() -> None:
    study = make_study(lambda s, t, d, r: base(t), speed=EQUAL_SPEED)
    study.cells = study.cells[~study.cells["scheme"].isin(["int8", "fp4", "fp16", "bf16"])]
    study.samples = study.samples[~study.samples["scheme"].isin(["int8", "fp4", "fp16", "bf16"])]
    verdicts = {c.key: c for c in analysis.claims(study)}
    assert verdicts["a"].verdict == "not tested" and "no nf4 and fp4" in verdicts["a"].reason
    assert verdicts["d"].verdict == "not tested" and verdicts["d2"].verdict == "not tested"


def test_estimate_predicates() -> None:
    e = Estimate(0.01, -0.02, 0.03, 50)
    assert e.within(0.05) and not e.outside(0.05) and not e.above(0)
    assert Estimate(0.2, 0.1, 0.3, 50).outside(0.05)


def test_a_speed_reading_names_the_comparison_that_decided_it() -> None:
    """An inconclusive or failed speed verdict says which comparison failed, with its interval."""
    import numpy as np

    from harness_ext.analysis.claims.d import speed_reading

    slow = ("int8/fp16 (eager, batch 1)", np.log([3.1, 3.3, 3.2]))
    tie = ("fp16/bf16 (eager, batch 1)", np.log([1.01, 0.99, 1.02]))
    verdict, why = speed_reading([slow], [tie], margin_log=np.log(1.1))
    assert verdict == "inconclusive"
    assert why.startswith("not separated over rounds: fp16/bf16 (eager, batch 1) 1.01×") and "int8" not in why
    verdict, why = speed_reading([slow], [("fp16/nf4 (eager, batch 1)", np.log([1.0, 1.1]))], margin_log=0.1)
    assert verdict == "inconclusive"
    assert why == "not replicated: fp16/nf4 (eager, batch 1) was timed in 2 uncontended rounds in common (≥ 3 needed)"
    verdict, why = speed_reading([slow], [("fp16/int4 (eager, batch 1)", np.log([1.5, 1.52, 1.49]))], margin_log=0.1)
    assert verdict == "does not hold" and "fp16/int4 (eager, batch 1) 1.50×" in why


def test_store_and_analysis_import_neither_torch_nor_the_backend_nor_the_runner(fresh_imports) -> None:
    """Reading a run directory and analysing its tables needs no model: a fresh interpreter that
    imports both has not imported torch (which takes seconds and a GPU stack to load), nor any
    module of the backend or the run packages (names checked to exist: a renamed package must not
    leave this test looking for nothing)."""
    import importlib.util

    rooms = ("harness_ext.backend", "harness_ext.run")
    assert all(importlib.util.find_spec(room) for room in rooms)
    assert heavy_modules(fresh_imports["modules"]["store_analysis"], ours=rooms) == set()
