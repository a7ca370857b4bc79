"""Verdict rules on synthetic tables where the answer is known: every verdict reachable for every claim."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study, bootstrap_ci

SCHEMES = {  # name: (quant, bits, double_quant, dtype, compute_dtype)
    "fp16": ("none", 16, False, "float16", None),
    "bf16": ("none", 16, False, "bfloat16", None),
    "int8": ("int8", 8, False, "float16", None),
    "nf4": ("nf4", 4, False, "float16", "float16"),
    "fp4": ("fp4", 4, False, "float16", "float16"),
}
TEMPS = [0.0, 0.3, 0.6, 0.7, 1.0, 1.5]


def make_study(
    quality: Callable[[str, float, int, np.random.Generator], float],
    *,
    n: int = 60,
    speed: dict[str, tuple[float, float, float]] | None = None,
    family: str | None = None,
    weights: dict[str, float] | None = None,
) -> Study:
    """A study of one model 'm' (reference fp16): probe p_gold per (scheme, T, prompt) from ``quality``;
    speed cells (median, p10, p90 of decode ms/token) from ``speed``."""
    rng = np.random.default_rng(0)
    cells, samples = [], []
    for s, (quant, bits, dq, dtype, cdt) in SCHEMES.items():
        meta = {
            "model": "m",
            "scheme": s,
            "quant": quant,
            "bits": bits,
            "double_quant": dq,
            "dtype": dtype,
            "compute_dtype": cdt,
            "status": "ok",
        }
        cells.append({**meta, "cell_id": f"probe-{s}", "kind": "probe", "metric": "p_gold", "value": 0.5})
        for t in TEMPS:
            for d in range(n):
                samples.append(
                    {
                        "cell_id": f"probe-{s}",
                        "kind": "probe",
                        "model": "m",
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
            med, lo, hi = speed[s]
            for metric, v, vlo, vhi in (
                ("decode_ms_per_token", med, lo, hi),
                ("weight_bytes", (weights or {}).get(s, 1e9), None, None),
            ):
                cells.append(
                    {
                        **meta,
                        "cell_id": f"speed-{s}",
                        "kind": "speed",
                        "batch_size": 1.0,
                        "metric": metric,
                        "value": v,
                        "lo": vlo,
                        "hi": vhi,
                    }
                )
    run = {"references": {"m": "fp16"}, "families": {"m": family} if family else {}}
    return Study(pd.DataFrame(cells), pd.DataFrame(samples), pd.DataFrame(), run)


def base(t: float) -> float:
    return 0.6 - 0.2 * t  # accuracy falls with temperature


def claim(study: Study, key: str) -> analysis.Claim:
    return next(c for c in analysis.claims(study) if c.key == key)


EQUAL_SPEED = {
    "fp16": (10, 9.5, 10.5),
    "bf16": (10.2, 9.8, 10.6),
    "int8": (30, 29, 31),
    "nf4": (14, 13.5, 14.5),
    "fp4": (14.1, 13.6, 14.6),
}


def test_bootstrap_interval_covers_the_mean() -> None:
    v = np.random.default_rng(1).normal(0.3, 0.1, 200)
    mean, lo, hi = bootstrap_ci(v)
    assert lo < mean < hi and hi - lo < 0.04
    assert bootstrap_ci([0.2] * 5) == (0.2, 0.2, 0.2)


@pytest.mark.parametrize(
    ("quality", "speed", "expected"),
    [
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), EQUAL_SPEED, "supported"),
        (lambda s, t, d, r: base(t) - (0.3 if s == "fp4" else 0) + r.normal(0, 0.01), EQUAL_SPEED, "contradicted"),
        # a true gap of 0.04 measured with wide noise: the CI straddles the margin
        (lambda s, t, d, r: 0.5 - (0.04 if s == "fp4" else 0) + r.normal(0, 0.3), EQUAL_SPEED, "inconclusive"),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), {**EQUAL_SPEED, "fp4": (25, 24, 26)}, "contradicted"),
    ],
    ids=["alike", "quality-differs", "noisy", "speed-differs"],
)
def test_claim_a(quality, speed, expected) -> None:
    assert claim(make_study(quality, speed=speed), "a").verdict == expected


def test_claim_a_needs_enough_prompts() -> None:
    study = make_study(lambda s, t, d, r: base(t) + r.normal(0, 0.01), n=5, speed=EQUAL_SPEED)
    assert claim(study, "a").verdict == "inconclusive"


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (lambda s, t, d, r: base(t) - (0.25 * t if s == "fp4" else 0) + r.normal(0, 0.01), "supported"),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "contradicted"),
        (lambda s, t, d, r: base(t) - (0.04 * t if s == "fp4" else 0) + r.normal(0, 0.25), "inconclusive"),
    ],
    ids=["gap-grows", "same", "noisy"],
)
def test_claim_b(quality, expected) -> None:
    assert claim(make_study(quality), "b").verdict == expected


@pytest.mark.parametrize(
    ("family", "weaker", "expected"),
    [
        ("llama-2", "fp4", "supported"),
        ("llama-2", "nf4", "contradicted"),
        ("falcon", "fp4", "contradicted"),
        ("smollm2", "fp4", "inconclusive"),
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
            "supported",
        ),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "contradicted"),
        (lambda s, t, d, r: base(t) - (0.15 if s == "nf4" and 0 < t <= 1 else 0) + r.normal(0, 0.01), "inconclusive"),
    ],
    ids=["both-4bit-more-sensitive", "like-reference", "only-one"],
)
def test_claim_c(quality, expected) -> None:
    assert claim(make_study(quality), "c").verdict == expected


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (
            lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0.5 <= t <= 0.8 else 0) + r.normal(0, 0.01),
            "supported",
        ),
        (lambda s, t, d, r: base(t) + r.normal(0, 0.01), "contradicted"),
        (
            lambda s, t, d, r: base(t) - (0.2 if s in ("nf4", "fp4") and 0 < t <= 1 else 0) + r.normal(0, 0.01),
            "inconclusive",
        ),
    ],
    ids=["in-band", "none", "everywhere-not-concentrated"],
)
def test_claim_c2_band(quality, expected) -> None:
    assert claim(make_study(quality), "c2").verdict == expected


SEED_LIKE = {**EQUAL_SPEED, "bf16": (12, 11.5, 12.5)}  # fp16 clearly fastest, int8 clearly slowest


@pytest.mark.parametrize(
    ("speed", "d", "d2"),
    [
        (SEED_LIKE, "supported", "contradicted"),
        ({**SEED_LIKE, "int8": (8, 7.5, 8.5)}, "contradicted", "contradicted"),
        ({**SEED_LIKE, "int8": (14.2, 11, 17)}, "inconclusive", "contradicted"),
        ({**SEED_LIKE, "bf16": (9, 8.8, 9.2), "fp16": (12, 11.5, 12.5)}, "contradicted", "supported"),
        (EQUAL_SPEED, "inconclusive", "inconclusive"),  # fp16 and bf16 overlap: neither is clearly fastest
    ],
    ids=["seed-like", "int8-fastest", "int8-overlaps", "bf16-fastest", "16-bit-tie"],
)
def test_claim_d(speed, d, d2) -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=speed)
    assert claim(study, "d").verdict == d
    assert claim(study, "d2").verdict == d2


def test_speed_is_compared_only_within_one_invocation() -> None:
    study = make_study(lambda s, t, d_, r: base(t), speed=SEED_LIKE)
    study.cells["invocation"] = "run-1"
    assert claim(study, "d").verdict == "supported"
    study.cells.loc[study.cells["scheme"] == "int8", "invocation"] = "run-2"  # int8 timed on another machine
    c = claim(study, "d")
    assert c.verdict == "inconclusive" and any("separate invocations" in e["value"] for e in c.evidence)


def test_missing_schemes_make_claims_inconclusive_with_a_reason() -> None:
    study = make_study(lambda s, t, d, r: base(t), speed=EQUAL_SPEED)
    study.cells = study.cells[~study.cells["scheme"].isin(["int8", "fp4"])]
    study.samples = study.samples[~study.samples["scheme"].isin(["int8", "fp4"])]
    verdicts = {c.key: c for c in analysis.claims(study)}
    assert verdicts["a"].verdict == "inconclusive" and "no nf4 and fp4" in verdicts["a"].reason
    assert verdicts["d"].verdict == "inconclusive" and "int8" in verdicts["d"].reason


def test_estimate_predicates() -> None:
    e = Estimate(0.01, -0.02, 0.03, 50)
    assert e.within(0.05) and not e.outside(0.05) and not e.above(0)
    assert Estimate(0.2, 0.1, 0.3, 50).outside(0.05)
